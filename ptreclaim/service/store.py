"""The job store: jobs, their progress, inputs and artifacts, in one database.

SQLite (the default, one file under ``runs/service/``) or PostgreSQL
(``postgresql://...``, shared by workers on several machines), through
SQLAlchemy.  Optuna's trials live in the same database (its own tables).

A job is claimed by one worker at a time with a *lease*: the worker renews it
with every heartbeat, and a job whose lease ran out (its worker died) can be
claimed again.  Claiming is a conditional ``UPDATE`` that re-checks the job is
claimable, so two workers never take the same job: on PostgreSQL the
candidate row is picked with ``SELECT ... FOR UPDATE SKIP LOCKED`` (workers do
not queue behind one another), on SQLite writes are serialised by the
database lock.  Every later write of a running job names the worker and the
attempt it claimed (a fencing token): a worker that lost its lease can no
longer change the job.

Times are seconds since the epoch from the clock of the process that writes
them; machines sharing a store must keep their clocks in sync (NTP).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

#: Job states; the last three are final.
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: Claims of one job before it is failed (each claim after the first follows a
#: worker that died or was stopped while running it).
MAX_ATTEMPTS = 5

metadata = sa.MetaData()

# The "service_" prefix keeps these apart from Optuna's tables in the same database.
jobs = sa.Table(
    "service_jobs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, default=""),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False, index=True),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("worker", sa.String(200)),
    sa.Column("lease_until", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("attempt_started", sa.Float),
    sa.Column("run_seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("phase", sa.String(200), nullable=False, default=""),
    sa.Column("eta_seconds", sa.Float),
    sa.Column("log_tail", sa.Text, nullable=False, default=""),
    sa.Column("error", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
)

blobs = sa.Table(
    "service_blobs", metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("service_jobs.id"), primary_key=True),
    # "input": an uploaded file; "artifact": a file the job wrote.
    sa.Column("role", sa.String(8), primary_key=True),
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)


def normalize_url(url: str) -> str:
    """``url`` with the psycopg (3) driver for a bare ``postgresql://`` (SQLAlchemy
    would take psycopg2, which is not installed)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and pages."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and a 30 s lock wait
    (the server, the workers and Optuna write to one file at once)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@dataclass(frozen=True)
class Job:
    """One row of the job store."""

    id: str
    kind: str
    label: str
    state: str
    spec: dict[str, Any]
    created: float
    updated: float
    started: float | None
    finished: float | None
    worker: str | None
    lease_until: float | None
    attempts: int
    attempt_started: float | None
    run_seconds: float
    progress: float
    phase: str
    eta_seconds: float | None
    log_tail: str
    error: str | None
    cancel_requested: bool

    @classmethod
    def from_row(cls, row: Any) -> Job:
        """A job from a row mapping of :data:`jobs`."""
        data = dict(row)
        data["spec"] = json.loads(data["spec"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (no lease bookkeeping)."""
        return {"id": self.id, "kind": self.kind, "label": self.label, "state": self.state,
                "spec": self.spec, "created": self.created, "updated": self.updated,
                "started": self.started, "finished": self.finished, "worker": self.worker,
                "attempts": self.attempts, "progress": self.progress, "phase": self.phase,
                "eta_seconds": self.eta_seconds, "log_tail": self.log_tail,
                "error": self.error, "cancel_requested": self.cancel_requested}


@dataclass(frozen=True)
class BlobInfo:
    """An input or artifact file, without its bytes."""

    name: str
    size: int
    sha256: str
    updated: float


@dataclass(frozen=True)
class Claim:
    """A job claimed by a worker: the fencing token of every later write."""

    job: Job
    worker: str
    attempt: int


class Store:
    """The job store on one database (see the module docstring)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self.dialect = self.engine.dialect.name
        if create:
            self._create_schema()

    def _create_schema(self, attempts: int = 5) -> None:
        # Several processes (server, workers) may start at once on a new database:
        # the loser of a CREATE TABLE race sees an error and finds the tables there.
        for attempt in range(attempts):
            try:
                metadata.create_all(self.engine)
                return
            except sa.exc.DBAPIError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.3 * (attempt + 1))

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # ------------------------------------------------------------- submitting

    def submit(self, kind: str, label: str, spec: Mapping[str, Any],
               inputs: Mapping[str, bytes] | None = None) -> Job:
        """Queue a new job with its uploaded inputs, in one transaction."""
        now = time.time()
        job_id = uuid.uuid4().hex[:16]
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(
                id=job_id, kind=kind, label=label, state="queued",
                spec=json.dumps(spec, sort_keys=True), created=now, updated=now,
                attempts=0, run_seconds=0.0, progress=0.0, phase="queued", log_tail="",
                cancel_requested=False))
            for name, data in (inputs or {}).items():
                conn.execute(blobs.insert().values(_blob_values(job_id, "input", name, data,
                                                                now)))
        job = self.get(job_id)
        assert job is not None
        return job

    # ---------------------------------------------------------------- reading

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return None if row is None else Job.from_row(row)

    def list_jobs(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """Jobs, newest first, optionally only those in ``state``."""
        q = sa.select(jobs).order_by(jobs.c.created.desc(), jobs.c.id).limit(limit)
        if offset:
            q = q.offset(offset)
        if state is not None:
            q = q.where(jobs.c.state == state)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(q).mappings()]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        q = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
        with self.engine.connect() as conn:
            found = {s: int(n) for s, n in conn.execute(q)}
        return {s: found.get(s, 0) for s in STATES}

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -------------------------------------------------------------- cancelling

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now; ask the worker of a running one to stop it.
        A finished job is left as it is.  None when there is no such job."""
        now = time.time()
        with self.engine.begin() as conn:
            done = conn.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.state == "queued").values(
                state="cancelled", finished=now, updated=now, phase="cancelled before it ran",
                cancel_requested=True)).rowcount
            if not done:
                conn.execute(jobs.update().where(
                    jobs.c.id == job_id, jobs.c.state == "running").values(
                    cancel_requested=True, updated=now))
        return self.get(job_id)

    # ------------------------------------------------------------ the workers

    def claim(self, worker: str, lease_seconds: float) -> Claim | None:
        """Claim the oldest queued job, or a running one whose lease ran out
        (its worker died); None when there is none."""
        while True:
            now = time.time()
            claimable = sa.or_(jobs.c.state == "queued",
                               sa.and_(jobs.c.state == "running", jobs.c.lease_until < now))
            with self.engine.begin() as conn:
                pick = sa.select(jobs.c.id, jobs.c.attempts).where(claimable).order_by(
                    jobs.c.created, jobs.c.id).limit(1)
                if self.dialect == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                row = conn.execute(pick).first()
                if row is None:
                    return None
                job_id, attempts = row.id, int(row.attempts)
                if attempts >= MAX_ATTEMPTS:
                    conn.execute(jobs.update().where(jobs.c.id == job_id, claimable).values(
                        state="failed", finished=now, updated=now, lease_until=None,
                        error=f"{attempts} workers stopped or died while running this job; "
                              "giving up (see log.txt; resubmit it once the cause is fixed)"))
                    continue
                # Re-checked in the UPDATE itself: a concurrent claimer (SQLite has no
                # row locks) finds the row no longer claimable and claims nothing.
                won = conn.execute(jobs.update().where(jobs.c.id == job_id, claimable).values(
                    state="running", worker=worker, lease_until=now + lease_seconds,
                    attempts=attempts + 1, attempt_started=now, updated=now,
                    started=sa.func.coalesce(jobs.c.started, now), eta_seconds=None,
                    phase="starting" if attempts == 0 else f"resuming (attempt {attempts + 1})",
                    )).rowcount
            if won:
                job = self.get(job_id)
                assert job is not None
                return Claim(job, worker, attempts + 1)

    def _fenced(self, claim: Claim) -> Any:
        return sa.and_(jobs.c.id == claim.job.id, jobs.c.worker == claim.worker,
                       jobs.c.attempts == claim.attempt, jobs.c.state == "running")

    def heartbeat(self, claim: Claim, lease_seconds: float, *, progress: float | None = None,
                  phase: str | None = None, eta_seconds: float | None = None,
                  log_tail: str | None = None) -> bool | None:
        """Renew the lease and record progress.  Returns whether a cancel was
        requested, or None when the job is no longer this worker's."""
        now = time.time()
        values: dict[str, Any] = {"lease_until": now + lease_seconds, "updated": now,
                                  "eta_seconds": eta_seconds}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, progress))
        if phase is not None:
            values["phase"] = phase[:200]
        if log_tail is not None:
            values["log_tail"] = log_tail
        with self.engine.begin() as conn:
            if not conn.execute(jobs.update().where(self._fenced(claim)).values(
                    **values)).rowcount:
                return None
            flag = conn.execute(sa.select(jobs.c.cancel_requested).where(
                jobs.c.id == claim.job.id)).scalar_one()
        return bool(flag)

    def finish(self, claim: Claim, state: str, *, error: str | None = None,
               phase: str | None = None, progress: float | None = None,
               log_tail: str | None = None) -> bool:
        """End this attempt: a final state, or ``queued`` to hand the job to
        the next worker (this one is stopping).  False when the job was no
        longer this worker's."""
        assert state in (*FINAL_STATES, "queued")
        now = time.time()
        spent = now - (claim.job.attempt_started or now)
        values: dict[str, Any] = {"state": state, "updated": now, "lease_until": None,
                                  "eta_seconds": None, "error": error,
                                  "run_seconds": jobs.c.run_seconds + spent}
        if state in FINAL_STATES:
            values["finished"] = now
        if phase is not None:
            values["phase"] = phase[:200]
        if progress is not None:
            values["progress"] = progress
        if log_tail is not None:
            values["log_tail"] = log_tail
        with self.engine.begin() as conn:
            return bool(conn.execute(jobs.update().where(self._fenced(claim)).values(
                **values)).rowcount)

    # ----------------------------------------------------- inputs and artifacts

    def put_artifacts(self, claim: Claim, files: Mapping[str, bytes]) -> bool:
        """Store (replace) artifacts of a running job; False when the job is no
        longer this worker's (nothing is written then)."""
        now = time.time()
        with self.engine.begin() as conn:
            mine = conn.execute(sa.select(jobs.c.id).where(self._fenced(claim))).first()
            if mine is None:
                return False
            for name, data in files.items():
                conn.execute(blobs.delete().where(blobs.c.job_id == claim.job.id,
                                                  blobs.c.role == "artifact",
                                                  blobs.c.name == name))
                conn.execute(blobs.insert().values(_blob_values(claim.job.id, "artifact",
                                                                name, data, now)))
        return True

    def blob_infos(self, job_id: str, role: str) -> list[BlobInfo]:
        """The inputs or artifacts of a job, by name."""
        q = sa.select(blobs.c.name, blobs.c.size, blobs.c.sha256, blobs.c.updated).where(
            blobs.c.job_id == job_id, blobs.c.role == role).order_by(blobs.c.name)
        with self.engine.connect() as conn:
            return [BlobInfo(r.name, int(r.size), r.sha256, float(r.updated))
                    for r in conn.execute(q)]

    def blob(self, job_id: str, role: str, name: str) -> bytes | None:
        """The bytes of one input or artifact, or None."""
        q = sa.select(blobs.c.data).where(blobs.c.job_id == job_id, blobs.c.role == role,
                                          blobs.c.name == name)
        with self.engine.connect() as conn:
            data = conn.execute(q).scalar_one_or_none()
        return None if data is None else bytes(data)

    def blobs(self, job_id: str, role: str, names: Sequence[str] | None = None
              ) -> Iterator[tuple[str, bytes]]:
        """``(name, bytes)`` of a job's inputs or artifacts (all, or ``names``)."""
        for info in self.blob_infos(job_id, role):
            if names is None or info.name in names:
                data = self.blob(job_id, role, info.name)
                if data is not None:
                    yield info.name, data


def _blob_values(job_id: str, role: str, name: str, data: bytes, now: float) -> dict[str, Any]:
    return {"job_id": job_id, "role": role, "name": name, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "updated": now, "data": data}
