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
import os
import platform
import sys
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

#: The instruction set torch's CPU kernels are held to, so that one seed trains one model
#: bit for bit on Intel x86-64 CPUs with AVX2 whether or not they have AVX-512 (not on
#: AMD's: MKL's AVX2 branch is Intel's, elsewhere it runs its own dispatch): ATen's
#: vectorised kernels (``ATEN_CPU_CAPABILITY``), MKL's BLAS (``MKL_CBWR``, Intel's
#: "conditional numerical reproducibility") and oneDNN (``ONEDNN_MAX_CPU_ISA``) otherwise
#: pick AVX-512 code where the CPU has it, which rounds differently (measured: the same
#: seed and commit trained different models with and without AVX-512; docs/train.md,
#: "Reproducibility").  Each is set only where the environment does not set it already.
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                   "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: The variables are x86's: elsewhere (ARM) torch would only warn about them.
_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def pin_numerics() -> None:
    """Hold torch to :data:`PINNED_NUMERICS` on x86-64, unless
    ``PTRECLAIM_NATIVE_NUMERICS=1``.

    Runs when the package is imported.  torch picks its kernels' code at its first
    computation, not at its import, so the pin holds unless torch computed something
    before ptreclaim was imported (``tests/test_numerics.py`` imports torch first and
    trains bit for bit what a process started with the variables trains; a run's
    ``versions.json`` records what torch used)."""
    if os.environ.get("PTRECLAIM_NATIVE_NUMERICS") == "1" or not _X86_64:
        return
    for name, value in PINNED_NUMERICS.items():
        os.environ.setdefault(name, value)


pin_numerics()


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
