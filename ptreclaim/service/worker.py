"""A worker: claims jobs from the store and runs each in a child process.

The worker lays out the job folder ``<root>/runs/service/<job id>/`` (the
uploaded inputs and the artifacts of the jobs it refers to under
``inputs/``), starts :mod:`.runner` there, and while it runs renews the
job's lease every few seconds, copies its progress, the last lines of its
log and its new or changed files (the artifacts) into the store, and stops
it (SIGTERM, the command lines' clean stop; SIGKILL after a grace period)
when the job is cancelled, its wall-time budget is spent, or the worker
itself is asked to stop, in which case the job goes back to the queue.

A worker killed outright (SIGKILL, a lost machine) stops renewing the lease:
its child gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and stops the
way the command lines stop, and once the lease runs out another worker
claims the job and resumes it: trials continue in Optuna's storage, training
from its last checkpoint (the job folder must then be on a filesystem both
workers see; otherwise a training job starts over on the new machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..envs.configio import write_text_atomic
from .inputs import INPUTS
from .runner import DB_ENV, ERROR_FILE, JOB_FILE, LOG_FILE, PROGRESS_FILE
from .specs import policy_parts
from .store import Claim, Store

#: Files of the job folder that are the worker's bookkeeping, not artifacts.
BOOKKEEPING = {JOB_FILE, PROGRESS_FILE, ERROR_FILE}
#: Folders never copied into the store: pickled checkpoints, TensorBoard logs.
SKIP_DIRS = {"checkpoints", "tb", "__pycache__"}
#: What a job folder's ``inputs/`` contributes to the artifacts: the scenario
#: an uploaded trace became (the uploads themselves are already in the store).
INPUT_ARTIFACTS = {f"{INPUTS}/trace_scenario.yaml"}
#: The longest artifact name kept.
MAX_NAME = 512
LOG_TAIL_LINES = 20


def safe_name(name: str) -> bool:
    """Whether ``name`` is a relative path of plain parts (no ``..``, no
    absolute path, no backslash or control character): it stays inside the
    folder it is joined to."""
    if not name or len(name) > MAX_NAME or name.startswith("/") or "\\" in name:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def service_dir(root: Path) -> Path:
    """``<root>/runs/service``: job folders, the token, the default database."""
    return root / "runs" / "service"


@dataclass
class WorkerConfig:
    """How a worker runs."""

    url: str
    root: Path = field(default_factory=Path.cwd)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    heartbeat_seconds: float = 2.0
    sync_seconds: float = 10.0
    #: How long a stopped job may take to save its state (a training checkpoint).
    stop_grace_seconds: float = 90.0
    max_artifact_bytes: int = 32 * 1024 * 1024
    #: Threads that step a training job's envs (the experiment's ``env_threads``): 2 where
    #: this worker's job would leave a core idle.
    env_threads: int = 1


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (read from its last 16 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def scan_artifacts(job_dir: Path, cap: int) -> dict[str, tuple[int, int]]:
    """``name -> (size, mtime_ns)`` of the job folder's artifact files:
    regular files (no symlinks) outside the bookkeeping, checkpoints and
    TensorBoard logs, of at most ``cap`` bytes."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(job_dir):
        rel_dir = Path(dirpath).relative_to(job_dir)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fname in filenames:
            name = (rel_dir / fname).as_posix()
            if fname.startswith(".") or name in BOOKKEEPING or not safe_name(name):
                continue
            if name.startswith(f"{INPUTS}/") and name not in INPUT_ARTIFACTS:
                continue
            try:
                st = os.lstat(job_dir / name)
            except OSError:
                continue
            if not os.path.isfile(job_dir / name) or os.path.islink(job_dir / name) \
                    or st.st_size > cap:
                continue
            found[name] = (st.st_size, st.st_mtime_ns)
    return found


class Worker:
    """Claims jobs and runs them, one at a time (see the module docstring)."""

    def __init__(self, cfg: WorkerConfig, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store = store or Store(cfg.url)
        self.stop = threading.Event()
        self.synced: dict[str, tuple[int, int]] = {}

    def request_stop(self, *_args: Any) -> None:
        """Stop after handing the current job back (a signal handler too)."""
        self.stop.set()

    def run(self, once: bool = False) -> int:
        """Claim and run jobs until stopped (or, with ``once``, until the
        queue is empty or one job has run); returns the number of jobs run."""
        ran = 0
        while not self.stop.is_set():
            try:
                claim = self.store.claim(self.cfg.name, self.cfg.lease_seconds)
            except SQLAlchemyError as exc:
                print(f"worker {self.cfg.name}: the job store is unreachable "
                      f"({type(exc).__name__}); retrying", file=sys.stderr, flush=True)
                claim = None
            if claim is None:
                if once:
                    break
                self.stop.wait(self.cfg.poll_seconds)
                continue
            self.run_job(claim)
            ran += 1
            if once:
                break
        return ran

    # ----------------------------------------------------------- one job

    def job_dir(self, job_id: str) -> Path:
        return service_dir(self.cfg.root) / job_id

    def _prepare(self, claim: Claim) -> Path:
        """Lay out the job folder: inputs, referenced jobs' artifacts, job.json."""
        job = claim.job
        folder = self.job_dir(job.id)
        (folder / INPUTS).mkdir(parents=True, exist_ok=True)
        for name, data in self.store.blobs(job.id, "input"):
            if safe_name(name):
                write_text_atomic(folder / INPUTS / name, data)
        refs: dict[str, str] = {}
        wanted = [policy_parts(p)[2] for p in job.spec.get("policies", [])
                  if policy_parts(p)[1] == "job"]
        if job.kind == "export":
            wanted.append(job.spec["run_job"])
        for ref in wanted:
            other = self.store.get(ref)
            if other is None:
                continue
            refs[ref] = other.kind
            base = folder / INPUTS / f"job-{ref}"
            for name, data in self.store.blobs(ref, "artifact"):
                if safe_name(name):
                    write_text_atomic(base / name, data)
        for stale in (ERROR_FILE, PROGRESS_FILE):
            with contextlib.suppress(FileNotFoundError):
                (folder / stale).unlink()
        spent = job.run_seconds
        wall = float(job.spec.get("wall_seconds") or 0.0)
        write_text_atomic(folder / JOB_FILE, json.dumps({
            "id": job.id, "kind": job.kind, "spec": job.spec, "attempt": claim.attempt,
            "worker": self.cfg.name, "worker_pid": os.getpid(),
            "env_threads": self.cfg.env_threads,
            "wall_left": max(1.0, wall - spent), "deadline": time.time() + max(1.0, wall - spent),
            "references": refs}, indent=1) + "\n")
        return folder

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        url = make_url(self.store.url)
        if url.password:
            # Through libpq's own variable, not in the URL: the tune command records
            # its command line (with --storage) in its output folder.
            env["PGPASSWORD"] = str(url.password)
            url = url.set(password=None)
        env[DB_ENV] = url.render_as_string(hide_password=False)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def sync(self, claim: Claim, folder: Path, everything: bool = False) -> None:
        """Copy new or changed artifact files into the store."""
        current = scan_artifacts(folder, self.cfg.max_artifact_bytes)
        changed = [n for n, stamp in current.items()
                   if everything or self.synced.get(n) != stamp]
        files: dict[str, bytes] = {}
        for name in changed:
            with contextlib.suppress(OSError):
                files[name] = (folder / name).read_bytes()
        if files and self.store.put_artifacts(claim, files):
            self.synced.update({n: current[n] for n in files})

    def run_job(self, claim: Claim) -> None:
        """Run one claimed job to its end (or until this worker loses it)."""
        job = claim.job
        self.synced = {}
        try:
            folder = self._prepare(claim)
        except (OSError, SQLAlchemyError) as exc:
            error = (f"worker {self.cfg.name} could not lay out the job folder "
                     f"({type(exc).__name__}: {exc}); check its disk and store")
            self._guarded(lambda: self.store.finish(claim, "failed", phase="failed",
                                                    error=error[:500]))
            return
        cfg = self.cfg
        with (folder / LOG_FILE).open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "ptreclaim.service.runner"], cwd=folder,
                env=self._child_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        reason = ""
        kill_at = float("inf")
        next_beat = next_sync = 0.0
        started = time.monotonic()
        wall_left = max(1.0, float(job.spec.get("wall_seconds") or 0.0) - job.run_seconds)
        while child.poll() is None:
            now = time.monotonic()
            if not reason:
                if self.stop.is_set():
                    reason = "stop"
                elif now - started > wall_left:
                    reason = "wall"
                if reason:
                    child.send_signal(signal.SIGTERM)
                    kill_at = now + cfg.stop_grace_seconds
            if now >= kill_at:
                child.kill()
            if now >= next_beat:
                next_beat = now + cfg.heartbeat_seconds
                cancel = self._beat(claim, folder)
                if cancel is None and reason != "lost":
                    # Another worker holds the job now: this copy must not write.
                    reason = "lost"
                    child.kill()
                elif cancel and not reason:
                    reason = "cancel"
                    child.send_signal(signal.SIGTERM)
                    kill_at = now + cfg.stop_grace_seconds
            if now >= next_sync and reason != "lost":
                next_sync = now + cfg.sync_seconds
                self._guarded(lambda: self.sync(claim, folder))
            time.sleep(0.2)
        if reason == "lost":
            return
        self._guarded(lambda: self.sync(claim, folder, everything=True))
        self._finish(claim, folder, child.returncode, reason, float(job.spec["wall_seconds"]))

    def _guarded(self, fn: Any) -> Any:
        try:
            return fn()
        except SQLAlchemyError as exc:
            print(f"worker {self.cfg.name}: job store error ({type(exc).__name__}); "
                  "will retry", file=sys.stderr, flush=True)
            return False

    @staticmethod
    def _progress(folder: Path) -> Mapping[str, Any]:
        """The job's last ``progress.json`` (the runner's Reporter), or {}."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((folder / PROGRESS_FILE).read_text())
            if isinstance(data, dict):
                return data
        return {}

    def _beat(self, claim: Claim, folder: Path) -> bool | None:
        progress = self._progress(folder)
        got = self._guarded(lambda: self.store.heartbeat(
            claim, self.cfg.lease_seconds, progress=progress.get("fraction"),
            phase=progress.get("phase"), eta_seconds=progress.get("eta_seconds"),
            log_tail=log_tail(folder / LOG_FILE)))
        # A store error is not a lost lease: keep going, the next beat retries.
        return False if got is False else got

    def _finish(self, claim: Claim, folder: Path, code: int, reason: str, wall: float) -> None:
        tail = log_tail(folder / LOG_FILE)
        if reason == "stop":
            self.store.finish(claim, "queued", phase="handed back: its worker stopped; "
                                                    "the next worker resumes it", log_tail=tail)
        elif reason == "cancel":
            self.store.finish(claim, "cancelled", phase="cancelled", log_tail=tail)
        elif reason == "wall" and claim.job.kind == "tune" and (folder / "best.yaml").is_file():
            # Tuning's result is its best trial so far: a spent budget ends it normally.
            self.store.finish(claim, "succeeded", log_tail=tail,
                              phase=f"stopped by the wall-time budget of {wall:g} s")
        elif reason == "wall":
            self.store.finish(claim, "failed", log_tail=tail, phase="stopped",
                              error=f"the wall-time budget of {wall:g} s is spent; what the "
                                    "job saved is in its artifacts (submit a new job with a "
                                    "larger wall_seconds to go on)")
        elif code == 0:
            # A job that ended short of done by its own choice (tuning that stopped
            # starting trials before the wall-time budget) keeps the share and phase its
            # runner reported as final.
            last = self._progress(folder)
            early = bool(last.get("final"))
            self.store.finish(claim, "succeeded",
                              progress=float(last.get("fraction") or 0) if early else 1.0,
                              phase=str(last.get("phase")) if early else "finished",
                              log_tail=tail)
        else:
            error = ""
            with contextlib.suppress(OSError):
                error = (folder / ERROR_FILE).read_text().strip()
            if not error:
                how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                       else f"exited with status {code}")
                error = f"the job process {how}; see log.txt among its artifacts"
            self.store.finish(claim, "failed", error=error.splitlines()[0][:500],
                              phase="failed", log_tail=tail)
