"""Run folders: one self-describing folder per training run (rl-zoo's idea).

``runs/<experiment>__<algo>__<seed>__<time>/`` holds everything needed to
read, repeat or resume a run: the resolved ``config.yaml``, ``command.txt``
(every invocation, appended), ``versions.json``, ``state.json`` (status,
steps, the last checkpoint), ``model.zip`` and ``best_model.zip`` with their
VecNormalize statistics, ``checkpoints/``, ``evaluations.npz``, TensorBoard
logs, ``report.md`` and plots.  A multi-seed experiment gets
``<experiment>__<algo>__multi__<time>/`` with ``experiment.yaml``,
``runs.json`` (seed -> run folder) and the aggregate report.

:class:`RunFolder` is the one place that knows these names; what the files
mean is the business of :mod:`ptreclaim.agents.training` (which writes them)
and :mod:`ptreclaim.agents.loading` (which reads models from them).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..envs.configio import load_yaml, write_text_atomic
from ..envs.sim.config import ConfigError

#: The files that make a folder a run folder.
RUN_FILES = ("config.yaml", "state.json")
#: The model and its VecNormalize statistics, for the final and the best model.
MODEL_FILES = {"final": ("model.zip", "vecnormalize.pkl"),
               "best": ("best_model.zip", "best_vecnormalize.pkl")}
#: Separator of the name parts ``<experiment>__<algo>__<seed>__<time>``.
SEP = "__"


def stamp() -> str:
    """The time part of a new folder name (local time, to the second)."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def unique_path(base: Path, first: int = 2) -> Path:
    """``base``, or the first of ``base-<first>``, ``base-<first + 1>`` ...
    that does not exist yet (the caller creates it)."""
    out, k = base, first
    while out.exists():
        out = base.with_name(f"{base.name}-{k}")
        k += 1
    return out


def parse_name(name: str) -> tuple[str, str, str, str] | None:
    """``(experiment, algo, seed, time)`` of a run folder name, or None when
    the name does not have the four parts."""
    parts = name.split(SEP)
    if len(parts) != 4:
        return None
    return parts[0], parts[1], parts[2], parts[3]


def versions(*packages: str) -> dict[str, Any]:
    """Versions of what shapes a result: Python, the platform, ptreclaim,
    each of ``packages`` (None when not installed) and the git commit of the
    source tree (with whether it had uncommitted changes)."""
    info: dict[str, Any] = {"python": platform.python_version(),
                            "platform": platform.platform(), "ptreclaim": __version__}
    for name in packages:
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", None)
        except ImportError:
            info[name] = None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], check=True,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


@dataclass(frozen=True)
class RunFolder:
    """A run folder (``path``); ``run / "model.zip"`` is a file in it."""

    path: Path

    @classmethod
    def create(cls, out: Path, name: str, algo: str, tag: str) -> RunFolder:
        """Create ``out/<name>__<algo>__<tag>__<time>``; never reuses a folder
        (a same-second collision gets a ``-2``, ``-3`` ... suffix)."""
        out.mkdir(parents=True, exist_ok=True)
        base = SEP.join((name, algo, tag, stamp()))
        for k in range(1, 1000):
            path = out / (base if k == 1 else f"{base}-{k}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise ConfigError(f"{out}: cannot create a new run folder named {base}*")

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> Path:
        return self.path.parent

    def model_files(self, which: str = "final") -> tuple[Path, Path]:
        """The model zip and its VecNormalize statistics (``final`` or ``best``)."""
        model, stats = MODEL_FILES[which]
        return self.path / model, self.path / stats

    @property
    def is_multi(self) -> bool:
        """A multi-seed experiment folder (``experiment.yaml``, no ``config.yaml``)."""
        return (self / "experiment.yaml").is_file() and not (self / "config.yaml").exists()

    def config_data(self) -> Any:
        """The parsed ``config.yaml``; :class:`ConfigError` when this is not a run folder."""
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: no such run folder")
        missing = [f for f in RUN_FILES if not (self / f).is_file()]
        if missing:
            raise ConfigError(f"{self.path}: not a run folder (no {', '.join(missing)}); "
                              "pass a folder that scripts/train.py created")
        return load_yaml(self / "config.yaml")

    def read_state(self) -> dict[str, Any]:
        """``state.json``: status (running, interrupted, trained, finished),
        steps done, the last checkpoint, timings."""
        try:
            data = json.loads((self / "state.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{self / 'state.json'}: unreadable; not a run folder") from None
        if not isinstance(data, dict) or "status" not in data:
            raise ConfigError(f"{self / 'state.json'}: not a run state")
        return data

    def write_state(self, **fields: Any) -> dict[str, Any]:
        """Update ``state.json`` with ``fields`` (atomically); returns the new state."""
        state: dict[str, Any] = {}
        with contextlib.suppress(ConfigError, FileNotFoundError):
            if (self / "state.json").exists():
                state = self.read_state()
        state.update(fields)
        state["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
        write_text_atomic(self / "state.json", json.dumps(state, indent=2) + "\n")
        return state

    def add_command(self, text: str) -> None:
        """Append an invocation to ``command.txt`` (a resume adds its own)."""
        with contextlib.suppress(OSError), (self / "command.txt").open("a") as f:
            f.write(text)

    def write_json(self, name: str, data: Mapping[str, Any] | list[Any]) -> None:
        """Write ``data`` as indented JSON to ``name`` in this folder (atomically)."""
        write_text_atomic(self / name, json.dumps(data, indent=2) + "\n")


def stats_for(model: Path) -> Path | None:
    """The VecNormalize statistics saved next to ``model`` (run-folder names),
    or None when the run did not normalise observations."""
    best_model, best_stats = MODEL_FILES["best"]
    stats = model.with_name(best_stats if model.name == best_model else MODEL_FILES["final"][1])
    if stats.is_file():
        return stats
    if model.name == best_model and model.with_name(MODEL_FILES["final"][1]).is_file():
        raise ConfigError(f"{model}: the run normalised observations but saved no "
                          f"{best_stats} for its best model, so its statistics are "
                          "unknown; evaluate the final model (drop --best)")
    return None


def model_label(folder: Path, model: Path) -> str:
    """A policy label for ``model`` in ``folder``: ``<experiment>__<algo>__<seed>``
    of a run folder, ``[best]`` for its best model, ``[<stem>]`` for others."""
    parts = parse_name(folder.name)
    base = SEP.join(parts[:3]) if parts else folder.name or model.stem
    if model.name == MODEL_FILES["best"][0]:
        base += "[best]"
    elif model.name != MODEL_FILES["final"][0]:
        base += f"[{model.stem}]"
    return base
