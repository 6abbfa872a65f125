"""Workload families, one module each; ``WORKLOADS`` maps family name -> class.

Every module in this package that defines a :class:`~.base.Workload` subclass
with a ``family`` name is registered, in sorted module order.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Workload

WORKLOADS: dict[str, type[Workload]] = {}


def _register() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Workload) and obj is not Workload
                    and obj.family and obj.__module__ == module.__name__):
                if obj.family in WORKLOADS:
                    raise RuntimeError(f"two workload classes claim family {obj.family!r}")
                WORKLOADS[obj.family] = obj


_register()

__all__ = ["WORKLOADS", "Workload"]
