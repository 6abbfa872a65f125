"""The traces a replay can load: the shipped ones by name, any other by path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ...trace import Trace, TraceError, read_trace

_TRACE_CACHE: dict[str, Trace] = {}


def shipped_traces() -> list[str]:
    """Names of the traces shipped in ``ptreclaim.data/traces``."""
    try:
        root = resources.files("ptreclaim.data").joinpath("traces")
        return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".npz"))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []


def resolve_trace(name: str) -> Trace:
    """Load a trace by shipped name (``redis_jemalloc``) or by path (cached:
    traces are read-only once loaded)."""
    cached = _TRACE_CACHE.get(name)
    if cached is not None:
        return cached
    if name.endswith(".npz") or "/" in name:
        trace = read_trace(name)
    else:
        if name not in shipped_traces():
            known = ", ".join(shipped_traces()) or "none installed"
            raise TraceError(f"trace {name!r} is not a shipped trace (known: {known}); "
                             "give a shipped name or a path to a .npz trace")
        root = resources.files("ptreclaim.data").joinpath("traces").joinpath(f"{name}.npz")
        with resources.as_file(root) as path:
            trace = read_trace(Path(path))
    _TRACE_CACHE[name] = trace
    return trace
