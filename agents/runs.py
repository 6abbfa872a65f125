"""Run folders: one self-describing folder per training run (rl-zoo's idea).

``runs/<experiment>__<algo>__<seed>__<time>/`` holds everything needed to
read, repeat or resume a run: the resolved ``config.yaml`` with ``rules/`` (copies of
the rule files its experiment names: the warm start's teacher, the baselines), ``command.txt``
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
import fcntl
import importlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from .. import PINNED_NUMERICS, __version__
from ..envs.configio import load_json, load_yaml, write_text_atomic
from ..envs.sim.config import ConfigError, quote

#: The files that make a folder a run folder.
RUN_FILES = ("config.yaml", "state.json")
#: The model and its VecNormalize statistics, for the final and the best model.
MODEL_FILES = {"final": ("model.zip", "vecnormalize.pkl"),
               "best": ("best_model.zip", "best_vecnormalize.pkl")}
#: Separator of the name parts ``<experiment>__<algo>__<seed>__<time>``.
SEP = "__"
#: What ``state.json`` may say of a run: being trained, stopped by a signal,
#: trained (final evaluation pending), done, or failed (training diverged).
STATUSES = ("running", "interrupted", "trained", "finished", "failed")
#: Files that only a training run (one seed, or a multi-seed experiment) has.
TRAINING_MARKERS = ("state.json", "runs.json", "multi_state.json")


def is_training_folder(path: Path) -> bool:
    """Whether ``path`` holds a training run's own files: other commands never
    write into it, not even with ``--force``."""
    return path.is_dir() and any((path / name).is_file() for name in TRAINING_MARKERS)


class FolderClaim:
    """An exclusive claim on a folder for this process: an ``flock`` on the
    folder itself, so that it ends with the process however it ends, and no
    lock file is left behind.  Worker processes forked while it is held share
    it.  Claims are reentrant within a process (:func:`claim_folder`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.depth = 1

    def release(self) -> None:
        """Give the claim up (the last of nested claims does)."""
        self.depth -= 1
        if self.depth == 0:
            _CLAIMS.pop((os.getpid(), str(self.path)), None)
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)

    def __enter__(self) -> FolderClaim:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


_CLAIMS: dict[tuple[int, str], FolderClaim] = {}


def claim_folder(path: Path, busy: str) -> FolderClaim:
    """Claim the existing folder ``path`` for this process, or raise
    :class:`ConfigError` ``"<path>: <busy>"`` when another process holds it.
    Atomic: of two processes claiming at once, exactly one gets it."""
    key = (os.getpid(), os.path.realpath(path))
    held = _CLAIMS.get(key)
    if held is not None:
        held.depth += 1
        return held
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the folder ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Removed and made anew while we waited: the lock would guard nothing.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise BlockingIOError
    except OSError:
        os.close(fd)
        raise ConfigError(f"{path}: {busy}") from None
    claim = FolderClaim(Path(key[1]), fd)
    _CLAIMS[key] = claim
    return claim


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


def numerics() -> dict[str, Any]:
    """What held torch's CPU kernels to one instruction set (``ptreclaim.PINNED_NUMERICS``;
    None where unset), the CPU (:func:`cpu`) and, when torch is loaded, the capability its
    kernels use."""
    info: dict[str, Any] = {name: os.environ.get(name) for name in PINNED_NUMERICS}
    info["cpu"] = cpu()
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's vendor and model as ``cpuinfo`` names its first processor (``vendor_id /
    model name``), else what :func:`platform.processor` says (None if nothing).  A model
    depends on it beyond the pin: MKL's AVX2 branch is Intel's, and on other CPUs it
    runs its default dispatch (docs/train.md, "Reproducibility")."""
    fields: dict[str, str] = {}
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    named = " / ".join(v for v in (fields.get("vendor_id"), fields.get("model name")) if v)
    return named or platform.processor() or None


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
    info["numerics"] = numerics()
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

    def claim(self) -> FolderClaim:
        """Claim this run folder for the process that trains it (see
        :func:`claim_folder`); :class:`ConfigError` when another one does."""
        return claim_folder(self.path, "another process is training this run (or resuming "
                                       "it); wait for it to end")

    def read_state(self) -> dict[str, Any]:
        """``state.json``, checked: status (:data:`STATUSES`), steps done and in
        total, the last checkpoint (a file inside the folder), timings;
        :class:`ConfigError` naming the damage (one line) otherwise."""
        path = self / "state.json"
        try:
            data = load_json(path, "a run's state.json")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (state.json of a run folder; is it damaged?)") from None
        return check_state(data, str(path))

    def checkpoint(self, state: Mapping[str, Any]) -> Path | None:
        """The checkpoint ``state`` names, as a path inside this folder."""
        ck = state.get("checkpoint")
        return None if ck is None else self.path / ck

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


def _count_field(state: Mapping[str, Any], key: str, where: str) -> None:
    value = state.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise ConfigError(f"{where}: {key} is {quote(value)}, expected a count >= 0; the "
                          "state is damaged")


def check_state(data: Any, where: str) -> dict[str, Any]:
    """``data`` if it is a run state ``train.py`` can act on, else
    :class:`ConfigError` naming the damaged field (one line)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a run state (a JSON object with a status); is this a "
                          "run folder?")
    status = data.get("status")
    if status not in STATUSES:
        raise ConfigError(f"{where}: status {quote(status)} is not one of {', '.join(STATUSES)}"
                          "; the state is damaged")
    for key in ("num_timesteps", "total_timesteps", "seed"):
        _count_field(data, key, where)
    ck = data.get("checkpoint")
    if ck is not None:
        parts = PurePosixPath(ck).parts if isinstance(ck, str) else ("..",)
        if not parts or ".." in parts or PurePosixPath(ck).is_absolute():
            raise ConfigError(f"{where}: checkpoint {quote(ck)} is not a file inside the run "
                              "folder; the state is damaged")
    return data


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
