"""Where studies live: Optuna storage, samplers and pruners.

``--storage`` (default ``sqlite:///<out>/study.db``) is any SQLAlchemy URL
Optuna's :class:`~optuna.storages.RDBStorage` takes
(``postgresql://user:pass@host/db`` lets workers on several machines share a
study).  SQLite is opened with a 30 s lock timeout, and its schema and study
are created under a file lock, so that several worker processes on one
machine can share one file.  Heartbeats (every 10 s, 60 s grace) let a later
worker spot a trial whose process died: it is marked FAIL and its parameters
are enqueued again once.  Re-running the same command resumes the study;
settings that change the objective must match the study's.

Nothing in a study is unpickled freely.  Optuna's RDB storage keeps trial
parameters, values and attributes as JSON; the one pickle is CMA-ES's
optimizer state, which Optuna stores in each trial's system attributes and
``pickle.loads`` on resume.  A storage may be shared or copied from
elsewhere, so :func:`make_sampler` gives a CMA-ES sampler that restores that
state through :func:`~ptreclaim.agents.loading.loads_restricted`: it may
build CMA-ES optimizers and numpy arrays, nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...envs.sim.config import ConfigError
from ..loading import first_line, loads_restricted
from .objectives import Objective

if TYPE_CHECKING:
    import optuna

#: RDBStorage heartbeat: a RUNNING trial silent for GRACE seconds is stale.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
SQLITE_TIMEOUT = 30
#: Keys of the objective recorded in a study; a resumed study must match them.
OBJECTIVE_ATTR = "ptreclaim_objective"


def redact(url: str) -> str:
    """``url`` without its password (for files and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: say nothing of what it held
        return url.split("@")[-1] if "@" in url else url


def check_storage_url(url: str) -> None:
    """Refuse, before any work, a ``--storage`` SQLite URL a study cannot
    live in: an in-memory database (``sqlite://``, ``sqlite:///:memory:``),
    which Optuna's heartbeat thread cannot see and no rerun can resume, or a
    file whose folder does not exist or that is a folder.  :class:`ConfigError`
    (one line); other URLs are left to :func:`open_study`."""
    found = _sqlite_database(url)
    if found is None:  # not SQLite, or not an SQLAlchemy URL: open_study says so
        return
    db, password = found
    shown = redact(url) if password else url  # redact() escapes ':memory:'
    if db in ("", ":memory:"):
        raise ConfigError(f"--storage {shown}: an in-memory SQLite database holds no study "
                          "another worker or a rerun can see (and Optuna's heartbeats fail "
                          "on it); use a file: sqlite:///path/study.db")
    path = Path(db)
    if path.is_dir():
        raise ConfigError(f"--storage {shown}: {path} is a folder; name a file in it, e.g. "
                          f"sqlite:///{path / 'study.db'}")
    if not path.absolute().parent.is_dir():
        raise ConfigError(f"--storage {shown}: the folder of {path} does not exist; create "
                          "it first or choose another path")


def _sqlite_database(url: str) -> tuple[str, bool] | None:
    """The database an SQLite URL names, as SQLite opens it (``""`` or ``":memory:"``
    for an in-memory one; a ``file:`` URI, when the URL's ``uri`` query is true as
    SQLAlchemy reads it, as its path, or as ``":memory:"`` with ``mode=memory``), and
    whether the URL holds a password; None for any other URL."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.util import asbool

        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return None
        uri = asbool(parsed.query.get("uri", False))
    except Exception:  # not an SQLAlchemy URL, or a uri= that is no boolean
        return None
    db, password = parsed.database or "", bool(parsed.password)
    if uri and db.startswith("file:"):
        if str(parsed.query.get("mode", "")).lower() == "memory":
            return ":memory:", password
        # file:path, file:/path, file:///path or file://localhost/path (SQLite's URI forms).
        split = urllib.parse.urlsplit(db)
        if split.netloc not in ("", "localhost"):
            return None  # another host: SQLite refuses it, open_study says so
        db = urllib.parse.unquote(split.path)
    return db, password


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL's database; None for an in-memory one or another URL."""
    found = _sqlite_database(url)
    return Path(found[0]) if found is not None and found[0] not in ("", ":memory:") else None


#: The PostgreSQL advisory-lock key that serialises ptreclaim's Optuna schema and study
#: creation on one database (any 64-bit value no other tool uses; this is
#: int.from_bytes(b"ptreclm!")).
PG_SETUP_LOCK_KEY = 0x7074726563_6C6D21


@contextlib.contextmanager
def _setup_lock(url: str) -> Iterator[None]:
    """Serialise schema and study creation: two workers starting at once on a fresh
    database would otherwise both create Optuna's tables, and the loser fails
    (optuna/optuna#1092: on PostgreSQL "relation already exists" or a duplicate
    ``pg_type`` key).  A local SQLite file takes a file lock beside it; PostgreSQL a
    session advisory lock (``pg_advisory_lock``), held on its own connection and
    released when it closes, even if this process dies.  Other databases: no lock (the
    retries of :func:`_create_study` remain)."""
    if url.startswith("postgresql"):
        with _pg_setup_lock(url):
            yield
        return
    db = _sqlite_file(url)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with (db.parent / f".{db.name}.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_setup_lock(url: str) -> Iterator[None]:
    """:data:`PG_SETUP_LOCK_KEY` held for the block on a dedicated connection."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"),
                         {"k": PG_SETUP_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                             {"k": PG_SETUP_LOCK_KEY})
    finally:
        engine.dispose()


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDBStorage for ``url``, with heartbeats (a dead worker's
    trial becomes FAIL and is enqueued again once) and, for SQLite, a lock
    timeout so that concurrent workers wait instead of failing."""
    import inspect

    import optuna

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback
    engine: dict[str, Any] = ({"connect_args": {"timeout": SQLITE_TIMEOUT}}
                              if url.startswith("sqlite") else {"pool_pre_ping": True})
    names = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    cb_key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
              else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental" in some versions
        kwargs: dict[str, Any] = {cb_key: retry_cls(max_retry=1)}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                          heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS, **kwargs)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (default), CMA-ES (numeric parameters; categorical ones fall back
    to a seeded TPE) or random search, all seeded."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise ConfigError("--sampler cmaes needs the 'cmaes' package (pip install cmaes); "
                          "or use --sampler tpe") from None
    if not hasattr(optuna.samplers.CmaEsSampler, "_restore_optimizer"):
        # The method this guards moved: better no CMA-ES than an unchecked pickle.
        raise ConfigError(f"--sampler cmaes: not supported with Optuna {optuna.__version__} "
                          "(its CMA-ES state is a pickle ptreclaim cannot check there); use "
                          "--sampler tpe")
    return _checked_cma_class()(
        seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed),
        warn_independent_sampling=False)


#: What a CMA-ES optimizer state may be built from (cmaes' optimizers over numpy arrays).
CMA_STATE_CLASSES = frozenset({
    ("cmaes._cma", "CMA"), ("cmaes._sepcma", "SepCMA"), ("cmaes._cmawm", "CMAwM"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
})


def _checked_cma_class() -> type[optuna.samplers.CmaEsSampler]:
    """The sampler class (made here: optuna is imported only when tuning)."""
    import optuna

    class CheckedCmaEsSampler(optuna.samplers.CmaEsSampler):
        """Optuna's CMA-ES sampler, restoring its pickled optimizer state
        from a trial through a restricted unpickler."""

        def _restore_optimizer(self, completed_trials: list[optuna.trial.FrozenTrial]) -> Any:
            for trial in reversed(completed_trials):
                attrs = {k: v for k, v in trial.system_attrs.items()
                         if k.startswith(self._attr_key_optimizer)}
                if attrs:
                    try:
                        data = bytes.fromhex(self._concat_optimizer_attrs(attrs))
                    except (KeyError, TypeError, ValueError):
                        raise ConfigError(f"trial {trial.number}: its CMA-ES state is "
                                          "damaged; remove the trial or the study") from None
                    return loads_restricted(data, CMA_STATE_CLASSES,
                                            f"trial {trial.number}'s CMA-ES state")
            return None

        def check(self, study: optuna.Study) -> None:
            """Restore the state a resumed study starts from now, before any
            trial: a foreign one is then one line, not a failed trial."""
            from optuna.trial import TrialState

            self._restore_optimizer(study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    return CheckedCmaEsSampler


def check_sampler(sampler: optuna.samplers.BaseSampler, study: optuna.Study) -> None:
    """Check what ``sampler`` will restore from ``study`` (the CMA-ES state;
    other samplers restore nothing): :class:`ConfigError` before any trial."""
    check = getattr(sampler, "check", None)
    if check is not None:
        check(study)



def make_pruner(kind: str, eval_freq: int, total: int) -> optuna.pruners.BasePruner:
    """Median (prunes from a third of the budget on, after 3 trials),
    Hyperband (resources in steps) or none."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=total // 3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_freq, max_resource=total,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(url: str, name: str, objective: Objective, default: Mapping[str, Any] | None
               ) -> optuna.Study:
    """Create or load (resume) the study; check that a loaded one tunes the
    same objective; enqueue the default parameters as the first trial of a
    new study (and again when an interrupt stopped that trial).  Storage
    problems become one-line :class:`ConfigError`."""

    shown = redact(url)
    try:
        with _setup_lock(url):
            study = _create_study(url, name)
            stored = study.user_attrs.get(OBJECTIVE_ATTR)
            mine = objective.to_data()
            if stored is None:
                study.set_user_attr(OBJECTIVE_ATTR, mine)
            elif stored != mine:
                diff = next(k for k in mine if stored.get(k) != mine[k])
                raise ConfigError(
                    f"study {name!r} in {shown} tunes another objective ({diff}: stored "
                    f"{_short(stored.get(diff))}, now {_short(mine[diff])}); rerun with the "
                    "study's settings or choose another --study-name")
            if default is not None and _default_missing(study):
                study.enqueue_trial(dict(default), user_attrs={"default": True})
    except ConfigError:
        raise
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"--storage {shown}: its database driver is not installed "
                          f"({first_line(exc)}); install it (e.g. psycopg2 for "
                          "postgresql://) or use sqlite:///path/study.db") from None
    except Exception as exc:  # SQLAlchemy/optuna raise many kinds for a bad URL
        raise ConfigError(f"--storage {shown}: cannot open the study ({type(exc).__name__}: "
                          f"{first_line(exc)}); check the URL, e.g. "
                          "sqlite:///runs/tune/study.db or postgresql://user@host/db") from None
    return study


def _default_missing(study: optuna.Study) -> bool:
    """No trial yet, or every trial of the defaults was stopped by an
    interrupt (a failure of the defaults themselves is not retried)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    defaults = [t for t in trials if t.user_attrs.get("default")]
    return not trials or (bool(defaults) and all(
        t.state == TrialState.FAIL and t.user_attrs.get("interrupted") for t in defaults))


def _create_study(url: str, name: str, attempts: int = 4) -> optuna.Study:
    """Create or load the study, retrying a few times on the database errors
    a concurrent creator causes (another process creating the same tables,
    a locked SQLite file), which the file lock cannot rule out for processes
    that do not take it (a user's ``optuna.load_study``, a dashboard)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=make_storage(url), study_name=name,
                                       direction="minimize", load_if_exists=True)
        except (IntegrityError, OperationalError, ProgrammingError):
            # ProgrammingError: PostgreSQL's "relation already exists" when a process that
            # takes no setup lock creates the tables at the same moment.
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."

