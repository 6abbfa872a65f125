"""The service (issue 17) against a real uvicorn on loopback, with real workers.

The API runs in-process on 127.0.0.1 (an ephemeral port) on a SQLite job
store in a temporary folder; workers are real ``scripts/worker.py`` processes
that run real (tiny) jobs.  ``tests/test_service_pg.py`` runs the store and a
job on PostgreSQL, ``tests/test_service_browser.py`` the web pages in
Chromium.  The helpers here are shared with them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ptreclaim.service.app import create_app, load_or_create_token, openapi_text
from ptreclaim.service.client import Client, ServiceError
from ptreclaim.service.specs import Limits
from ptreclaim.service.store import Store
from ptreclaim.service.worker import safe_name

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "data" / "traces" / "redis_jemalloc.npz"
#: A tuning job of a few seconds: one short scenario, one seed.
TINY_TUNE: dict[str, Any] = {"kind": "tune", "target": "soft_hard", "trials": 2, "seeds": 1,
                             "allow_few_seeds": True,
                             "input": {"source": "shipped", "name": "redis_jemalloc"}}
#: A train job of a few seconds (64 steps, 2 envs, one final episode, no oracle).
TINY_TRAIN: dict[str, Any] = {
    "kind": "train", "timesteps": 64,
    "input": {"source": "shipped", "name": "redis_jemalloc"}, "eval_suite": "redis_jemalloc",
    "overrides": ["n_envs=2", "eval.freq=0", "eval.final_episodes=1", "env.max_steps=10",
                  "eval.baselines=[none]", "eval.oracle=false", "hyperparams.ppo.n_steps=32",
                  "hyperparams.ppo.batch_size=32"]}
#: The longest a tiny job may take here before a test gives up on it.
DEADLINE = 240.0


class LiveServer:
    """The app on a real uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, store: Store, token: str, limits: Limits | None = None) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(store, token, limits),
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class Service:
    """A running service: its URL, token, store, root folder and workers."""

    root: Path
    url: str
    db: str
    token: str
    store: Store
    server: LiveServer
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, token: bool = True) -> Client:
        return Client(self.server.url, self.token if token else None)

    def start_worker(self, name: str, lease: float = 3.0, *flags: str
                     ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PTRECLAIM_SERVICE_DB": self.db}
        log = (self.root / f"worker-{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "worker.py"), "--root", str(self.root),
             "--lease-seconds", str(lease), "--name", name, *flags], env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=120)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        self.server.stop()
        self.store.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true (liveness, not timing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")


def wait_state(client: Client, job_id: str, states: tuple[str, ...] = ("succeeded", "failed",
                                                                      "cancelled"),
               timeout: float = DEADLINE) -> dict[str, Any]:
    """The job once it is in one of ``states``."""
    return dict(wait_for(lambda: (lambda j: j if j["state"] in states else None)(
        client.job(job_id)), timeout, f"job {job_id} to reach {'/'.join(states)}"))


def start_service(root: Path, db: str, limits: Limits | None = None) -> Service:
    """The API on ``db`` with its token under ``root/runs/service``."""
    store = Store(db)
    token = load_or_create_token(root / "runs" / "service" / "token")
    server = LiveServer(store, token, limits)
    return Service(root, server.url, db, token, store, server)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """The service on a SQLite store in ``tmp_path``, no worker yet."""
    svc = start_service(tmp_path, f"sqlite:///{tmp_path / 'runs' / 'service' / 'service.db'}")
    try:
        yield svc
    finally:
        svc.stop()


# ------------------------------------------------------------------- the API

def test_health_and_openapi_match_the_committed_schema(service: Service) -> None:
    with service.client() as c:
        health = c.health()
        assert health["status"] == "ok" and health["database"] == "sqlite"
        assert set(health["jobs"]) == {"queued", "running", "succeeded", "failed", "cancelled"}
        served = c.http.get("/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == committed, ("docs/openapi.json is stale; regenerate it with: python "
                                 "scripts/serve.py --openapi docs/openapi.json")
    assert openapi_text(create_app(Store("sqlite://"), "")) == \
        (ROOT / "docs" / "openapi.json").read_text()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/artifacts", "/v1/jobs/{job_id}/artifacts/{name}",
                 "/healthz"):
        assert path in served["paths"]


def test_token_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "service" / "token"
    token = load_or_create_token(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token and len(token) >= 32
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        load_or_create_token(path)


def _post(c: Client, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    r = c.http.post("/v1/jobs", **kwargs)
    return r.status_code, r.json()


BAD_JSON = [
    ({"kind": "tune", "trials": 10_000}, 422, "cap of 200"),
    ({"kind": "tune", "trails": 3}, 422, "unknown field"),
    ({"kind": "tunes"}, 422, "tune, train, evaluate, export"),
    ({"kind": "tune", "target": "on_zap"}, 422, "not a tunable heuristic"),
    ({"kind": "tune", "seeds": 1}, 422, "allow_few_seeds"),
    ({"kind": "tune", "input": {"source": "shipped", "name": "../../etc/passwd"}}, 422,
     "should match pattern"),
    ({"kind": "tune", "input": {"source": "shipped", "name": "nope"}}, 422,
     "not a shipped suite or scenario"),
    ({"kind": "tune", "input": {"source": "trace"}}, 422, "none was sent"),
    ({"kind": "tune", "wall_seconds": 1e9}, 422, "max-wall-seconds"),
    ({"kind": "train", "timesteps": 10**8}, 422, "max-timesteps"),
    ({"kind": "train", "timesteps": 100, "overrides": ["train_suite=/etc"]}, 422,
     "set by the service"),
    ({"kind": "train", "timesteps": 100, "overrides": ["n_envs=many"]}, 422, "n_envs"),
    ({"kind": "train", "timesteps": 100, "overrides": ["env_threads=8"]}, 422,
     "by the worker that runs it (env_threads: worker.py --env-threads)"),
    ({"kind": "train", "timesteps": 100, "overrides": ["pretrain.teacher=/etc/passwd"]}, 422,
     "not taken by path"),
    ({"kind": "train", "timesteps": 100,
      "overrides": ["pretrain.teacher=heuristic:soft_hard:/etc/x.yaml"]}, 422,
     "not taken by path"),
    ({"kind": "train", "timesteps": 100, "overrides": ["pretrain={teacher: /etc/x.yaml}"]},
     422, "one by one"),
    ({"kind": "train", "timesteps": 100,
      "overrides": ["eval.baselines=[none, x=/etc/secret.yaml]"]}, 422, "not taken by path"),
    ({"kind": "train", "timesteps": 100, "overrides": ["eval={baselines: [x=/etc/x.yaml]}"]},
     422, "one by one"),
    ({"kind": "train", "timesteps": 100, "overrides": ["eval.unseen_suite=/etc/suite.yaml"]},
     422, "not a shipped suite or scenario"),
    ({"kind": "train", "timesteps": 100, "experiment": "nope"}, 422, "shipped experiment"),
    ({"kind": "evaluate", "policies": ["runs/some_run"]}, 422, "not taken by path"),
    ({"kind": "evaluate", "policies": ["heuristic:nope"]}, 422, "unknown heuristic"),
    ({"kind": "evaluate", "policies": ["job:0123456789abcdef"]}, 422, "no job"),
    ({"kind": "export", "run_job": "x"}, 422, "not a job id"),
    # Strict types: text or a bool where a number belongs is refused, not converted.
    ({"kind": "tune", "trials": "3"}, 422, 'trials: expected an integer (e.g. 3), not "3"'),
    ({"kind": "tune", "trials": True}, 422, "trials: expected an integer (e.g. 3), not true"),
    ({"kind": "tune", "seeds": 1, "allow_few_seeds": 1}, 422,
     "allow_few_seeds: expected true or false, not 1"),
    ({"kind": "train", "timesteps": 64, "seeds": ["0"]}, 422, "seeds.0: expected an integer"),
    ({"kind": "tune", "input": {"source": "trace", "speed": "2"}}, 422,
     "speed: expected a number"),
    ({"kind": "tune", "wall_seconds": 1e-300}, 422, "wall_seconds: Input should be greater "
                                                    "than or equal to 1"),
    ({"kind": "tune", "label": "a\x00b"}, 422, "label: control character '\\x00'"),
    ({"kind": "tune", "label": "two\nlines"}, 422, "label: control character"),
    # What scripts/evaluate.py would refuse when the job runs is refused at submit.
    ({"kind": "evaluate", "policies": ["heuristic:soft_hard"], "baseline": "nope"}, 422,
     "baseline: 'nope' is neither an evaluated policy nor a heuristic"),
    ({"kind": "evaluate", "policies": ["heuristic:soft_hard", "heuristic:soft_hard"]}, 422,
     "two policies are labelled 'soft_hard'"),
    ({"kind": "evaluate", "policies": ["oracle=heuristic:soft_hard"]}, 422,
     "the label 'oracle' is reserved"),
    ({"kind": "evaluate", "policies": ["none=heuristic:soft_hard"]}, 422,
     "the label 'none' is reserved"),
    ({"kind": "evaluate", "policies": ["heuristic:soft_hard"], "episodes": 201}, 422,
     "episodes: 201 exceeds this server's cap of 200 (serve.py --max-episodes)"),
    ({"kind": "export", "run_job": "0123456789abcdef", "eval_episodes": 201}, 422,
     "eval_episodes: 201 exceeds this server's cap of 200 (serve.py --max-episodes)"),
    ({"kind": "export", "run_job": "0123456789abcdef", "seed": 2**40}, 422,
     "seed: Input should be less than or equal to"),
]


@pytest.mark.parametrize(("spec", "status", "words"), BAD_JSON)
def test_bad_json_specs_get_one_line(service: Service, spec: dict[str, Any], status: int,
                                     words: str) -> None:
    with service.client() as c:
        code, body = _post(c, json=spec)
    assert code == status, body
    assert set(body) == {"error"} and words in body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]


def test_bad_uploads_and_requests(service: Service, tmp_path: Path) -> None:
    yaml_bomb = "a: &a [x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    trace_ref = ("workloads:\n  - family: trace\n    params: {trace: /etc/secret.npz}\n")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": {"spec": json.dumps({"kind": "tune", "input": {"source": "trace"}})},
          "files": {"trace": ("t.npz", b"not a zip")}}, 422, "trace.npz"),
        ({"data": {"spec": json.dumps({"kind": "tune", "input": {"source": "trace"}})},
          "files": {"trace": ("model.zip", b"PK..")}}, 415, "pickles"),
        ({"data": {"spec": json.dumps({"kind": "tune", "input": {"source": "scenario"}})},
          "files": {"scenario": ("s.yaml", trace_ref.encode())}}, 422, "not a shipped trace"),
        ({"data": {"spec": json.dumps({"kind": "tune", "input": {"source": "scenario"}})},
          "files": {"scenario": ("s.yaml", b"workloads: [\n")}}, 422, "YAML"),
        ({"data": {"spec": json.dumps({"kind": "tune", "input": {"source": "scenario"}})},
          "files": {"scenario": ("s.yaml", yaml_bomb.encode() * 2000)}}, 413, "cap"),
        ({"data": {"spec": json.dumps(TINY_TUNE)},
          "files": {"scenario": ("s.yaml", b"x: 1\n")}}, 422, "not used by this job"),
        ({"data": {"spec": json.dumps(TINY_TUNE)},
          "files": {"weights": ("w.bin", b"x")}}, 422, "unknown upload field"),
        ({"data": {"spec": json.dumps({"kind": "train", "timesteps": 100,
                                       "experiment": "upload"})},
          "files": {"experiment": ("e.yaml", b"pretrain: {teacher: /etc/secret.yaml}\n")}},
         422, "not taken by path"),
        ({"data": {"spec": json.dumps({"kind": "train", "timesteps": 100,
                                       "experiment": "upload"})},
          "files": {"experiment": ("e.yaml", b"eval: {baselines: [none, x=/etc/s.yaml]}\n")}},
         422, "not taken by path"),
        ({"data": {"nospec": "1"}, "files": {"scenario": ("s.yaml", b"x")}}, 422,
         "unknown form field"),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 422,
         "Invalid JSON"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content type"),
    ]
    with service.client() as c:
        for kwargs, status, words in cases:
            code, body = _post(c, **kwargs)
            assert code == status and words in body["error"], (kwargs, body)
            assert "\n" not in body["error"]
        assert c.http.get("/v1/jobs?state=nope").status_code == 422
        r = c.http.get("/v1/jobs?offset=99999999999999999999999")
        assert r.status_code == 422 and r.json()["error"].startswith("offset: "), r.text
        r = c.http.get("/v1/jobs/0123456789abcdef")
        assert r.status_code == 404 and "no job" in r.json()["error"]
    with service.client(token=False) as c:
        code, body = _post(c, json=TINY_TUNE)
        assert code == 401 and "Bearer" in body["error"]
        c.http.headers["Authorization"] = "Bearer wrong"
        assert _post(c, json=TINY_TUNE)[0] == 401
        assert c.http.post("/v1/jobs/0123456789abcdef/cancel").status_code == 401
    assert service.store.counts()["queued"] == 0


def test_evaluate_labels_that_pass_at_submit_pass_policy_specs(service: Service) -> None:
    """Policies with labels apart and a baseline among them are taken (201); the labels the
    submit checks saw are those the runner gives scripts/evaluate.py."""
    from ptreclaim.service.runner import policy_arg

    ok = {"kind": "evaluate", "policies": ["heuristic:soft_hard", "mine=heuristic:soft_hard",
                                           "none=heuristic:none"], "baseline": "mine"}
    # A label with the characters policy labels may hold ("job-01234567" is a job's).
    dotted = {"kind": "evaluate", "policies": ["heuristic:soft_hard",
                                               "v1.b-2=heuristic:on_zap"], "baseline": "v1.b-2"}
    with service.client() as c:
        for spec in (ok, dotted):
            code, body = _post(c, json=spec)
            assert code == 201, body
    assert policy_arg("heuristic:on_zap", {}) == "heuristic:on_zap"
    assert policy_arg("x=heuristic:on_zap", {}) == "x=heuristic:on_zap"


def test_yml_uploads_are_kept_under_the_names_the_runner_reads(service: Service) -> None:
    """An upload named ``.yml`` (scenario, experiment) is kept under the one name the
    checks and the runner read (``scenario.yaml``, ``experiment.yaml``), through the API
    and the web form alike; thresholds files keep their suffix."""
    from ptreclaim.service.inputs import input_path, stored_name
    from ptreclaim.service.runner import suite_arg
    from ptreclaim.service.specs import ScenarioInput

    assert stored_name("scenario", "s.yml") == stored_name("scenario", "s.YAML") == \
        "scenario.yaml"
    assert stored_name("experiment", "e.yml") == "experiment.yaml"
    assert stored_name("thresholds", "t.json") == "thresholds.json"
    assert stored_name("thresholds", "t.yml") == "thresholds.yml"
    assert suite_arg(ScenarioInput()) == input_path("scenario") == "inputs/scenario.yaml"
    scenario = (ROOT / "configs" / "scenarios" / "redis_jemalloc.yaml").read_bytes()
    experiment = b"name: uploaded\nalgo: ppo\n"
    posts = [
        ({"kind": "tune", "trials": 2, "seeds": 1, "allow_few_seeds": True,
          "input": {"source": "scenario"}}, {"scenario": ("s.yml", scenario)}),
        ({"kind": "train", "timesteps": 64, "input": {"source": "scenario"}},
         {"scenario": ("s.yml", scenario)}),
        ({"kind": "train", "timesteps": 64, "experiment": "upload",
          "input": {"source": "shipped", "name": "redis_jemalloc"}},
         {"experiment": ("e.yml", experiment)}),
        ({"kind": "evaluate", "episodes": 1, "policies": ["heuristic:soft_hard"],
          "input": {"source": "scenario"}}, {"scenario": ("s.yml", scenario)}),
    ]
    with service.client() as c:
        for spec, files in posts:
            code, body = _post(c, data={"spec": json.dumps(spec)}, files=files)
            assert code == 201, (spec, body)
            names = {b.name for b in service.store.blob_infos(body["id"], "input")}
            assert names == {stored_name(f, n) for f, (n, _) in files.items()}, names
            assert names <= {input_path("scenario")[len("inputs/"):],
                             input_path("experiment")[len("inputs/"):]}
        # The web form: its text fields are converted to numbers (not strictly: text).
        r = c.http.post("/submit", data={
            "kind": "tune", "trials": "2", "seeds": "1", "allow_few_seeds": "1",
            "wall_seconds": "60", "sampler": "tpe", "target": "soft_hard",
            "source": "scenario", "token": service.token},
            files={"scenario": ("s.yml", scenario)}, follow_redirects=False)
        assert r.status_code == 303, r.text
        job_id = r.headers["location"].rsplit("/", 1)[1]
        job = c.job(job_id)
        assert job["spec"]["trials"] == 2 and job["spec"]["wall_seconds"] == 60.0
        assert [b.name for b in service.store.blob_infos(job_id, "input")] == ["scenario.yaml"]
        r = c.http.post("/submit", data={"kind": "tune", "trials": "two",
                                         "token": service.token})
        assert r.status_code == 422 and "trials: expected an integer" in r.text


def test_an_export_job_s_flags_reach_export_thresholds() -> None:
    """Every field of an export job becomes the flag of export_thresholds.py it names, and
    the command line parses there (``unseen: false`` is ``--no-unseen``)."""
    from ptreclaim.cli.export import build_parser
    from ptreclaim.service.runner import export_argv
    from ptreclaim.service.specs import parse_spec

    run_job = "0123456789abcdef"
    default = build_parser().parse_args(export_argv(parse_spec(
        {"kind": "export", "run_job": run_job}), Path("run")))
    assert not default.no_unseen and not default.best and default.tree_depth == 0
    assert default.iterations == 4 and default.eval_episodes is None
    given = build_parser().parse_args(export_argv(parse_spec(
        {"kind": "export", "run_job": run_job, "unseen": False, "best": True, "tree_depth": 3,
         "iterations": 2, "episodes": 3, "eval_episodes": 4}), Path("run")))
    assert given.no_unseen and given.best and given.tree_depth == 3
    assert (given.iterations, given.episodes, given.eval_episodes) == (2, 3, 4)
    assert given.run == "run" and given.out == "." and given.quiet and given.jobs == 1


def test_artifact_names_cannot_escape() -> None:
    for bad in ("../token", "a/../../b", "/etc/passwd", "a\\b", "", ".", "a//b", "x\x00y"):
        assert not safe_name(bad), bad
    for good in ("best.yaml", "runs/default__ppo__0__x/report.md", "export_eval/scores.png"):
        assert safe_name(good)


# ------------------------------------------------------------------- the jobs

def test_tune_a_shipped_scenario_and_an_uploaded_trace(service: Service, tmp_path: Path
                                                       ) -> None:
    service.start_worker("w1")
    with service.client() as c:
        shipped = c.submit(TINY_TUNE)
        traced = c.submit({**TINY_TUNE, "input": {"source": "trace", "copies": 2, "ticks": 200}},
                          {"trace": TRACE})
        assert shipped["state"] == "queued" and traced["spec"]["input"]["source"] == "trace"
        for job in (shipped, traced):
            done = wait_state(c, job["id"])
            assert done["state"] == "succeeded", done
            assert done["progress"] == 1.0 and done["attempts"] == 1
            names = {a["name"] for a in c.artifacts(job["id"])}
            assert {"best.yaml", "best.json", "trials.csv", "history.png", "report.md",
                    "log.txt"} <= names
            best = c.artifact(job["id"], "best.yaml").decode()
            assert "kind: soft_hard" in best
        assert "inputs/trace_scenario.yaml" in {a["name"] for a in c.artifacts(traced["id"])}
        scen = c.artifact(traced["id"], "inputs/trace_scenario.yaml").decode()
        assert "trace: inputs/trace.npz" in scen and scen.count("family: trace") == 2
        r = c.http.get(f"/v1/jobs/{shipped['id']}/artifacts/..%2F..%2Ftoken")
        assert r.status_code in (400, 404) and service.token not in r.text
        assert c.http.get(f"/v1/jobs/{shipped['id']}/artifacts/history.png").headers[
            "content-type"] == "image/png"
        # The tuned thresholds of the job evaluate next to the heuristics.
        ev = c.submit({"kind": "evaluate", "episodes": 1,
                       "policies": ["heuristic:soft_hard", f"tuned=job:{shipped['id']}"],
                       "input": {"source": "shipped", "name": "redis_jemalloc"}})
        done = wait_state(c, ev["id"])
        assert done["state"] == "succeeded", done
        results = json.loads(c.artifact(ev["id"], "summary.json"))
        assert "tuned" in json.dumps(results)


def test_a_worker_s_env_threads_step_its_training_jobs(service: Service) -> None:
    """``worker.py --env-threads 2``: the worker's train jobs step their batched envs on
    two threads (the run's config records it); a request cannot set it, and a job whose
    envs step through SB3's ``DummyVecEnv`` still runs on that worker (the setting is
    unused there, not an error)."""
    service.start_worker("w2", 3.0, "--env-threads", "2")
    train = {**TINY_TRAIN, "overrides": [*TINY_TRAIN["overrides"], "pretrain.teacher="]}
    with service.client() as c:
        job = c.submit(train)
        done = wait_state(c, job["id"])
        assert done["state"] == "succeeded", done
        config = next(a["name"] for a in c.artifacts(job["id"])
                      if a["name"].endswith("/config.yaml"))
        assert "env_threads: 2\n" in c.artifact(job["id"], config).decode()
        dummy = c.submit({**train, "overrides": [*train["overrides"], "vec_env=dummy"]})
        done = wait_state(c, dummy["id"])
        assert done["state"] == "succeeded", done
        assert "env_threads 2 unused: vec_env is dummy" in c.artifact(dummy["id"],
                                                                      "log.txt").decode()


@pytest.mark.parametrize("script", ["worker.py", "serve.py"])
def test_env_threads_out_of_range_is_one_line(script: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--root", str(tmp_path),
                        "--env-threads", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"{script}: error: --env-threads: 0 is out of range; allowed [1, 64]"]


def test_cancel_queued_and_running_jobs(service: Service) -> None:
    with service.client() as c:
        queued = c.submit(TINY_TUNE)
        assert c.cancel(queued["id"])["state"] == "cancelled"
        with pytest.raises(ServiceError, match="409"):
            c.cancel(queued["id"])
        long = c.submit({**TINY_TUNE, "trials": 200})
        service.start_worker("w1")
        wait_state(c, long["id"], ("running",))
        wait_for(lambda: c.job(long["id"])["progress"] > 0, DEADLINE, "a trial")
        assert c.cancel(long["id"])["cancel_requested"]
        done = wait_state(c, long["id"])
        assert done["state"] == "cancelled" and done["progress"] < 1
        # What the job saved before it stopped is kept.
        assert "trials.csv" in {a["name"] for a in c.artifacts(long["id"])}


def test_wall_time_budget_stops_a_job(service: Service) -> None:
    service.start_worker("w1")
    with service.client() as c:
        # 200 trials of 25 episodes each cannot finish in 20 s even on the compiled core.
        job = c.submit({**TINY_TUNE, "trials": 200, "episodes": 25, "wall_seconds": 20})
        done = wait_state(c, job["id"])
    # Tuning stops starting trials near the budget and keeps what it has.
    assert done["state"] == "succeeded", done
    assert "wall-time budget" in done["phase"] and done["progress"] < 1


def test_twenty_concurrent_clients_all_submit(service: Service) -> None:
    def one(i: int) -> str:
        with service.client() as c:
            return str(c.submit({**TINY_TUNE, "label": f"client {i}"})["id"])

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(one, range(20)))
    assert len(set(ids)) == 20
    with service.client() as c:
        listed = c.jobs("queued", limit=100)
    assert {j["id"] for j in listed} == set(ids)


def test_a_server_restart_loses_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs' / 'service' / 'service.db'}"
    svc = start_service(tmp_path, db)
    svc.start_worker("w1")
    with svc.client() as c:
        done = wait_state(c, c.submit(TINY_TUNE)["id"])
        queued = c.submit({**TINY_TUNE, "label": "after"})
    artifacts = svc.store.blob_infos(done["id"], "artifact")
    svc.stop()
    again = start_service(tmp_path, db)
    try:
        with again.client() as c:
            assert c.job(done["id"])["state"] == "succeeded"
            assert c.job(queued["id"])["state"] in ("queued", "running", "succeeded")
            assert [a["name"] for a in c.artifacts(done["id"])] == [a.name for a in artifacts]
            assert c.artifact(done["id"], "best.yaml")
            assert again.token == svc.token
    finally:
        again.stop()


def test_the_store_gives_a_job_to_one_worker_at_a_time(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    check_claims(store)


def check_claims(store: Store) -> None:
    """Claiming, leases and fencing on any store (SQLite here, PostgreSQL in
    test_service_pg.py)."""
    ids = {store.submit("tune", "", TINY_TUNE).id for _ in range(12)}
    got: list[str] = []

    def claimer(k: int) -> None:
        while (claim := store.claim(f"w{k}", 60.0)) is not None:
            got.append(claim.job.id)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # every job once, none twice
    # A lease that ran out lets another worker take the job; the first one's
    # writes are fenced off from then on.
    job = store.submit("tune", "", TINY_TUNE)
    first = store.claim("a", 0.01)
    assert first is not None and first.job.id == job.id
    time.sleep(0.05)
    second = store.claim("b", 60.0)
    assert second is not None and second.job.id == job.id and second.attempt == 2
    assert store.heartbeat(first, 60.0, progress=0.5) is None
    assert not store.finish(first, "succeeded")
    assert not store.put_artifacts(first, {"x.txt": b"x"})
    assert store.heartbeat(second, 60.0, progress=0.5) is False
    store.cancel(job.id)
    assert store.heartbeat(second, 60.0) is True
    assert store.finish(second, "cancelled")
    assert store.get(job.id).state == "cancelled"  # type: ignore[union-attr]


# ----------------------------------------------------------- the client CLI

def test_submit_cli_follows_and_downloads(service: Service, tmp_path: Path) -> None:
    service.start_worker("w1")
    env = {**os.environ, "PTRECLAIM_TOKEN": service.token}
    out = tmp_path / "dl"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "submit.py"), "--url", service.server.url,
         "tune", "soft_hard", "--trials", "2", "--seeds", "1", "--allow-few-seeds",
         "--suite", "redis_jemalloc", "--follow", "--download", str(out)],
        capture_output=True, text=True, env=env, timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert "succeeded" in r.stdout and (out / "best.yaml").is_file()
    # Off a terminal --follow prints a line per change of the job, its state named.
    assert re.search(r"^job \S+ \(tune\) succeeded: 100 % ", r.stderr, re.M), r.stderr
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "submit.py"), "--url", service.server.url,
         "tune", "soft_hard", "--trials", "100000"],
        capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cap of 200" in bad.stderr
    down = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "submit.py"), "--url", "http://127.0.0.1:9",
         "list"], capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 2 and "cannot reach the service" in down.stderr
    assert "Traceback" not in down.stderr
    # A --download folder that cannot be written is refused before anything is submitted.
    (tmp_path / "a_file").write_text("x")
    with service.client() as c:
        before = len(c.jobs())
    nowhere = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "submit.py"), "--url", service.server.url,
         "tune", "soft_hard", "--trials", "2", "--follow", "--download",
         str(tmp_path / "a_file")], capture_output=True, text=True, env=env, timeout=60)
    assert nowhere.returncode == 2 and "--download" in nowhere.stderr
    assert nowhere.stderr.count("\n") == 1 and "Traceback" not in nowhere.stderr
    with service.client() as c:
        assert len(c.jobs()) == before


def test_a_stored_spec_is_read_as_submitted_before_the_types_were_strict() -> None:
    """A worker reads a job stored by an older server (numbers as text, a whole-number
    float) without strictness; what no longer passes is one BadRequest line, which the
    runner writes as the job's error (exit 2), not a traceback."""
    from ptreclaim.service.specs import BadRequest, parse_spec

    old = {"kind": "tune", "trials": "3", "seeds": 3.0, "wall_seconds": 60}
    with pytest.raises(BadRequest, match="trials: expected an integer"):
        parse_spec(old)
    spec = parse_spec(old, strict=False)
    assert spec.kind == "tune" and spec.trials == 3 and spec.seeds == 3
    with pytest.raises(BadRequest, match="wall_seconds"):
        parse_spec({**old, "wall_seconds": 0.5}, strict=False)
