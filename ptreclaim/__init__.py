"""ptreclaim: RL-tuned page-table reclaim policies, exported as plain thresholds.

Importing the package makes the Gymnasium env ids available
(``ptreclaim/PageTableReclaim-v1`` and one per shipped scenario) without
importing gymnasium itself: the pure simulator (``ptreclaim.envs.sim``) must
stay usable, and cheap to import, without it.  If gymnasium is already
imported the ids are registered now; otherwise they are registered the moment
gymnasium finishes importing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

__version__ = "0.1.0"


def register_envs() -> None:
    """Register the env ids with gymnasium (idempotent)."""
    from .envs.registration import register_all

    register_all()


class _RegisterAfterGymnasium(importlib.abc.MetaPathFinder):
    """One-shot import hook: registers the env ids right after gymnasium loads."""

    def find_spec(self, fullname: str, path: Any = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            register_envs()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "gymnasium" in sys.modules:
    register_envs()
elif importlib.util.find_spec("gymnasium") is not None:
    sys.meta_path.insert(0, _RegisterAfterGymnasium())
