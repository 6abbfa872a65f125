"""The service on a real PostgreSQL server (no mock).

``$PTRECLAIM_TEST_PG_URL`` names a server whose user may create databases
(``.ci/run`` starts a throwaway cluster on a loopback port and sets it); each
test gets a database of its own.  Without it these tests skip, unless
``$PTRECLAIM_REQUIRE_PG`` is set (as in CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_service  # tests/ is on sys.path (pytest's rootdir-relative import)
from sqlalchemy.engine import make_url

from ptreclaim.service.store import Store

PG_URL = os.environ.get("PTRECLAIM_TEST_PG_URL", "")


@pytest.fixture
def pg_db() -> Iterator[str]:
    """The URL of a new, empty database (dropped afterwards)."""
    if not PG_URL:
        if os.environ.get("PTRECLAIM_REQUIRE_PG"):
            pytest.fail("PTRECLAIM_REQUIRE_PG is set but PTRECLAIM_TEST_PG_URL is not: "
                        ".ci/run starts PostgreSQL and sets both")
        pytest.skip("no PostgreSQL: set PTRECLAIM_TEST_PG_URL=postgresql://user@host:port/db "
                    "(.ci/run starts a throwaway server)")
    import psycopg

    admin = make_url(PG_URL)
    name = f"ptreclaim_test_{uuid.uuid4().hex[:12]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_claims_leases_and_fencing_on_postgresql(pg_db: str) -> None:
    store = Store(pg_db)
    assert store.dialect == "postgresql"
    try:
        test_service.check_claims(store)
    finally:
        store.close()


def test_a_tuning_job_on_postgresql_with_trials_in_its_optuna_storage(pg_db: str,
                                                                      tmp_path: Path) -> None:
    import optuna

    svc = test_service.start_service(tmp_path, pg_db)
    try:
        svc.start_worker("pg-w1")
        svc.start_worker("pg-w2")
        with svc.client() as c:
            assert c.health()["database"] == "postgresql"
            jobs = [c.submit({**test_service.TINY_TUNE, "label": f"pg {i}"}) for i in range(3)]
            done = [test_service.wait_state(c, j["id"]) for j in jobs]
        assert all(d["state"] == "succeeded" for d in done), [
            (d["label"], d["state"], d.get("error")) for d in done]
        # Both workers took jobs from the shared store, each job exactly once.
        assert {d["worker"] for d in done} <= {"pg-w1", "pg-w2"}
        assert all(d["attempts"] == 1 for d in done)
        study = optuna.load_study(study_name=f"job-{done[0]['id']}",
                                  storage=Store(pg_db).url)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == test_service.TINY_TUNE["trials"]
        with svc.client() as c:
            assert b"kind: soft_hard" in c.artifact(done[0]["id"], "best.yaml")
    finally:
        svc.stop()


def test_optuna_setup_on_postgresql_is_serialised_by_an_advisory_lock(pg_db: str) -> None:
    # While one worker holds the setup lock, another's study setup waits for it: two
    # workers creating Optuna's tables at once on a fresh database race
    # (optuna/optuna#1092), as the service's workers may.
    import threading

    from ptreclaim.agents.tune import storage

    entered = threading.Event()

    def other() -> None:
        with storage._setup_lock(pg_db):
            entered.set()

    with storage._setup_lock(pg_db):
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(1.5)  # blocked on pg_advisory_lock
    t.join(30)
    assert entered.is_set()
