"""Kill a worker with SIGKILL mid-job: another worker resumes the job.

Tuning continues in the Optuna study (the trial cut short is FAIL, the
others are kept, the budget is met); training continues from its checkpoint
(the log of the second attempt says where).  Workers are real
``scripts/worker.py`` processes with a 3 s lease.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

# tests/ is on sys.path (pytest's rootdir-relative import); importing the fixture
# registers it here.
from test_service import (
    DEADLINE,
    TINY_TUNE,
    Service,
    service,  # noqa: F401 (the fixture)
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.slow


def test_sigkill_a_tuning_worker_and_the_next_one_resumes(service: Service) -> None:  # noqa: F811
    import optuna

    with service.client() as c:
        job = c.submit({**TINY_TUNE, "trials": 6, "seeds": 3, "allow_few_seeds": False})
        first = service.start_worker("doomed")
        wait_for(lambda: c.job(job["id"])["progress"] >= 2 / 6, DEADLINE, "two trials")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert c.job(job["id"])["state"] == "running"  # its lease still runs
        service.start_worker("heir")
        done = wait_state(c, job["id"])
        log = c.artifact(job["id"], "log.txt").decode()
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2 and done["worker"] == "heir"
    assert "== attempt 2" in log
    study = optuna.load_study(study_name=f"job-{job['id']}", storage=service.store.url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6
    # The trial the kill cut short was stopped, not left RUNNING, and is not counted.
    assert optuna.trial.TrialState.RUNNING not in states


def test_sigkill_a_training_worker_and_the_next_one_continues_from_the_checkpoint(
        service: Service) -> None:  # noqa: F811
    spec = {"kind": "train", "timesteps": 1536, "input": {"source": "shipped",
                                                          "name": "redis_jemalloc"},
            "eval_suite": "redis_jemalloc",
            "overrides": ["n_envs=2", "eval.freq=0", "eval.final_episodes=1",
                          "env.max_steps=30", "eval.baselines=[none]", "eval.oracle=false",
                          # the reference model: slow enough that the kill lands mid-run
                          "env.backend=exact",
                          # no warm start: it would play 40,960 decisions on that model
                          "pretrain.teacher="]}
    with service.client() as c:
        job = c.submit(spec)
        first = service.start_worker("doomed")
        # A checkpoint is on disk once some steps show as saved.
        wait_for(lambda: c.job(job["id"])["progress"] > 0.1, DEADLINE, "a checkpoint")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        service.start_worker("heir")
        done = wait_state(c, job["id"])
        log = c.artifact(job["id"], "log.txt").decode()
        names = {a["name"] for a in c.artifacts(job["id"])}
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    resumed = [line for line in log.splitlines() if "resuming" in line]
    assert resumed, log
    step = int(resumed[0].split(" at step ")[1].split("/")[0])
    assert 0 < step < 1536
    assert any(n.endswith("/report.md") for n in names)
    state = next(n for n in names if n.endswith("/state.json"))
    with service.client() as c:
        final = json.loads(c.artifact(job["id"], state))
    # SB3 rounds up to whole rollouts: at least the budget, in one run folder.
    assert final["status"] == "finished" and final["num_timesteps"] >= 1536

