"""The live host, read-only: ``/proc`` readers and page-table trace capture.

Where :mod:`ptreclaim.envs.sim` models a machine, this package reads a real
one: the advisor's samples of zones, PSI and processes (:mod:`.sample`),
page presence via ``PAGEMAP_SCAN`` (``procfs``) and trace recording
(``capture``).  Nothing here writes to ``/proc`` or ``/sys``.
"""
