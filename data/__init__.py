"""Data shipped with ptreclaim: captured page-table traces (``traces/*.npz``).

Installed as the package ``ptreclaim.data`` so that a regular install carries
the traces; read them with ``importlib.resources.files("ptreclaim.data")``
(see :func:`ptreclaim.envs.sim.workloads.trace.resolve_trace`).
"""
