"""``scripts/capture_trace.py``: record page-table traces of live processes,
and check how well the model replays them.

The recorder, the checker and, for now, their argument parser live in
:mod:`ptreclaim.envs.host.capture`, which another change is editing at the time of
this layout; its ``build_parser`` and ``main`` move here once that change has
landed (``docs/layout.md``).
"""

from __future__ import annotations

from ..envs.host.capture import build_parser, main

__all__ = ["build_parser", "main"]
