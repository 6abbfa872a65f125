"""The trust gate (docs/trust.md): a crafted pickle never runs.

Each crafted file unpickles into ``open(MARKER, "w")``: loading it creates
the marker file.  Positive controls load the very same files with the gate
opened (``--trust-model``, Optuna's own sampler) and see the marker appear,
so the crafted files do run code when loaded; every entry point must then
refuse them in one line with exit status 2, and the marker must never appear.

The signatures themselves (:mod:`ptreclaim.agents.trust`): a signed folder
verifies, also copied elsewhere; another key, an edited manifest, a replaced
file, a key others can read, no key at all: each is refused with its reason.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

# tests/ is on sys.path (pytest's rootdir-relative import); importing the fixture
# registers it here.
from test_service import TINY_TRAIN, Service, service, wait_state  # noqa: F401 (the fixture)
from test_train import TINY_EXPERIMENT, TINY_SCENARIO

from ptreclaim.agents import loading, trust
from ptreclaim.agents.runs import RunFolder
from ptreclaim.agents.training.config import load_experiment, resolve_scenarios
from ptreclaim.agents.training.hyperparams import load_hyperparams
from ptreclaim.agents.training.runconfig import start_run
from ptreclaim.envs.pagetable_env import EnvConfig
from ptreclaim.envs.sim.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

class _Payload:
    """Unpickles into ``open(path, "w")``: the marker appears iff it ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def crafted_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


def crafted_zip(path: Path, marker: Path) -> Path:
    """An SB3 model zip whose ``data`` holds a serialized object, which SB3
    unpickles (cloudpickle) while it reads the archive."""
    blob = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))
        zf.writestr("_stable_baselines3_version", "2.0.0")
    return path


def forged_manifest(folder: Path, key_file: Path) -> None:
    """A manifest listing every pickled file of ``folder`` correctly, signed
    with another key (another machine, an attacker)."""
    env = dict(os.environ, **{trust.KEY_ENV: str(key_file)})
    code = ("import sys; from ptreclaim.agents import trust; "
            "trust.sign_artifacts(sys.argv[1], trust.pickled_files(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(folder)], env=env, check=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trust")
    (d / "tiny.yaml").write_text(TINY_SCENARIO)
    (d / "exp.yaml").write_text(TINY_EXPERIMENT)
    # This machine's key exists (as after any training): refusals name the forged signature.
    loading.write_pickled(d / "own", d / "own" / "m.pkl", b"")
    return d


def crafted_run(root: Path, marker: Path, name: str = "tiny__ppo__0__20260101-000000") -> Path:
    """A run folder as an attacker would hand one over: a genuine config and
    state (interrupted at step 128, so ``--resume`` continues it), every
    pickled file crafted, and a manifest signed with another machine's key."""
    exp, _ = load_experiment(root / "exp.yaml")
    run = RunFolder(root / "runs" / name)
    run.path.mkdir(parents=True)
    start_run(run, exp, 0, load_hyperparams(exp), resolve_scenarios(exp), "# crafted\n")
    for name_ in ("model.zip", "best_model.zip", "checkpoints/model_128_steps.zip"):
        crafted_zip(run / name_, marker)
    for name_ in ("vecnormalize.pkl", "best_vecnormalize.pkl",
                  "checkpoints/vecnormalize_128_steps.pkl",
                  "checkpoints/replay_buffer_128_steps.pkl"):
        crafted_pickle(run / name_, marker)
    run.write_state(status="interrupted", num_timesteps=128,
                    checkpoint="checkpoints/model_128_steps.zip")
    forged_manifest(run.path, root / "attacker" / "trust.key")
    return run.path


def cli(script: str, args: Sequence[str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_refused(res: tuple[int, str, str], marker: Path, phrase: str = "not trusted") -> None:
    code, out, err = res
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and ": error: " in lines[0] and phrase in lines[0], err
    assert "Traceback" not in err
    assert not marker.exists(), "the crafted pickle ran"


# ------------------------------------------------------------ positive controls

def test_the_crafted_files_do_run_code_when_the_gate_is_open(tiny: Path, tmp_path: Path) -> None:
    """Loaded unchecked, each crafted file creates its marker: the refusals
    below are the gate's doing, not a harmless file's."""
    for k, make in enumerate((crafted_zip, crafted_pickle)):
        marker = tmp_path / f"ran{k}"
        path = make(tmp_path / f"f{k}" / ("model.zip" if k == 0 else "vn.pkl"), marker)
        with pytest.raises(ConfigError):
            if k == 0:
                loading.load_model(path, "ppo", EnvConfig(), trusted=True)
            else:
                loading.load_vecnormalize(path, trusted=True)
        assert marker.exists()


def test_trust_model_is_the_explicit_way_around(tiny: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = crafted_run(tiny, marker, "open__ppo__0__20260101-000000")
    _, _, err = cli("evaluate.py", [str(run), "--trust-model", "--suite",
                                       str(tiny / "tiny.yaml"), "--episodes", "1", "--no-oracle",
                                       "--out", str(tmp_path / "ev")], tiny)
    assert marker.exists(), err
    assert "note: --trust-model: " in err and "loaded without checking where it came from" in err
    shutil.rmtree(run)


# ------------------------------------------------------------ every entry point refuses

def test_no_entry_point_runs_a_crafted_run_folder(tiny: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = crafted_run(tiny, marker, "crafted__ppo__0__20260101-000000")
    suite = ["--suite", str(tiny / "tiny.yaml"), "--episodes", "1", "--no-oracle"]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cases = {
        "evaluate": ("evaluate.py", [str(run), *suite, "--out", str(tmp_path / "ev")]),
        "evaluate --best": ("evaluate.py", [str(run), "--best", *suite, "--out",
                                            str(tmp_path / "evb")]),
        "evaluate zip": ("evaluate.py", [str(run / "model.zip"), *suite, "--out",
                                         str(tmp_path / "evz")]),
        "simulate": ("simulate.py", [str(tiny / "tiny.yaml"), "--policy", str(run),
                                     "--out", str(tmp_path / "sim")]),
        "monitor": ("monitor.py", ["--policy", str(run), "--once", "--json"]),
        "export": ("export_thresholds.py", [str(run), "-q", "--out", str(tmp_path / "ex")]),
        "resume": ("train.py", ["--resume", str(run)]),
    }
    for name, (script, args) in cases.items():
        res = cli(script, args, tiny)
        assert_refused(res, marker, "was not signed with this machine's key")
        assert name and not (tmp_path / "ev").exists()
    # Nothing in the folder changed (train.py did not even append to command.txt).
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_bare_crafted_zip_and_stats_are_refused(tiny: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = crafted_zip(tmp_path / "dl" / "model.zip", marker)
    crafted_pickle(tmp_path / "dl" / "vecnormalize.pkl", marker)
    res = cli("evaluate.py", [str(model), "--suite", str(tiny / "tiny.yaml"), "--episodes", "1",
                              "--out", str(tmp_path / "ev")], tiny)
    assert_refused(res, marker, "no trust.json next to it")
    res = cli("simulate.py", [str(tiny / "tiny.yaml"), "--policy", str(model), "--out",
                              str(tmp_path / "sim")], tiny)
    assert_refused(res, marker, "no trust.json next to it")


@pytest.mark.slow
def test_replaced_files_of_a_signed_run_are_refused(tiny: Path, tmp_path: Path) -> None:
    """A genuine run of this machine whose checkpoint, statistics or replay
    buffer was swapped for a crafted one after it was signed."""
    marker = tmp_path / "ran"
    code, _, err = cli("train.py", ["--config", "exp.yaml", "--out", str(tmp_path / "runs"),
                                      "--set", "checkpoint_freq=64", "--no-progress"], tiny)
    assert code == 0, err
    (good,) = (tmp_path / "runs").glob("tiny__*")
    state = json.loads((good / "state.json").read_text())
    state.update(status="interrupted", num_timesteps=128,
                 checkpoint="checkpoints/model_128_steps.zip")
    (good / "state.json").write_text(json.dumps(state))
    loading.verify_run(good)  # genuine: every file verifies
    for victim, make in (("checkpoints/vecnormalize_128_steps.pkl", crafted_pickle),
                         ("checkpoints/model_128_steps.zip", crafted_zip),
                         ("vecnormalize.pkl", crafted_pickle)):
        run = tmp_path / f"swapped_{Path(victim).stem}"
        shutil.copytree(good, run)
        loading.verify_run(run)  # a copy elsewhere is still trusted
        make(run / victim, marker)
        with pytest.raises(trust.TrustError, match="changed after it was written"):
            loading.verify_run(run)
        if victim.startswith("checkpoints/"):
            assert_refused(cli("train.py", ["--resume", str(run)], tiny), marker,
                           "changed after it was written")
        else:
            assert_refused(cli("evaluate.py", [str(run), "--suite", str(tiny / "tiny.yaml"),
                                               "--episodes", "1", "--out",
                                               str(tmp_path / "ev")], tiny),
                           marker, "changed after it was written")
    # The same run from another machine (its key signed it): refused, then
    # adopted with --trust-model (one line says so), after which it resumes.
    other = tmp_path / "from_elsewhere"
    shutil.copytree(good, other)
    (other / trust.MANIFEST).unlink()
    forged_manifest(other, tmp_path / "other_machine" / "trust.key")
    assert_refused(cli("train.py", ["--resume", str(other)], tiny), marker,
                   "was not signed with this machine's key")
    code, out, err = cli("train.py", ["--resume", str(other), "--trust-model", "--no-progress"],
                         tiny)
    assert code == 0, (out, err)
    assert err.count("note: --trust-model: ") == 1 and "now signed as this machine's" in err
    loading.verify_run(other)
    # A finished run is refused before --trust-model signs anything.
    before = (other / trust.MANIFEST).read_bytes()
    code, _, err = cli("train.py", ["--resume", str(other), "--trust-model"], tiny)
    assert code == 2 and "this run is finished" in err and "note:" not in err
    assert (other / trust.MANIFEST).read_bytes() == before


def test_a_crafted_multi_seed_experiment_is_refused(tiny: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = crafted_run(tiny, marker, "multi_seed__ppo__0__20260101-000000")
    multi = tiny / "runs" / "tiny__ppo__multi__20260101-000000"
    multi.mkdir()
    shutil.copy(tiny / "exp.yaml", multi / "experiment.yaml")
    (multi / "runs.json").write_text(json.dumps({"0": str(run)}))
    assert_refused(cli("train.py", ["--resume", str(multi)], tiny), marker,
                   "was not signed with this machine's key")


@pytest.mark.slow
def test_a_crafted_cma_es_state_in_a_study_is_refused(tiny: Path, tmp_path: Path) -> None:
    """Optuna pickles CMA-ES's state into each trial and unpickles it on
    resume; tune.py restores it through a restricted unpickler."""
    pytest.importorskip("cmaes")
    import optuna

    marker = tmp_path / "ran"
    out = tmp_path / "study"
    args = ["heuristic", "soft_hard", "--suite", str(tiny / "tiny.yaml"), "--sampler", "cmaes",
            "--out", str(out), "-q"]
    code, _, err = cli("tune.py", [*args, "--n-trials", "2"], tiny)
    assert code == 0, err
    # Where Optuna keeps the state (once a generation is complete): a system
    # attribute of the last complete trial, the hex of a pickle.
    evil = pickle.dumps(_Payload(marker)).hex()
    with sqlite3.connect(out / "study.db") as con:
        (trial_id,) = con.execute("SELECT max(trial_id) FROM trials "
                                  "WHERE state = 'COMPLETE'").fetchone()
        con.execute("INSERT INTO trial_system_attributes (trial_id, key, value_json) "
                    "VALUES (?, 'cma:optimizer:0', ?)", (trial_id, json.dumps(evil)))
    shutil.copy(out / "study.db", tmp_path / "control.db")
    assert_refused(cli("tune.py", [*args, "--n-trials", "1"], tiny), marker,
                   "refers to ")
    # Control: Optuna's own sampler on the same tampered study runs the pickle.
    study = optuna.load_study(study_name="soft_hard",
                              storage=f"sqlite:///{tmp_path / 'control.db'}",
                              sampler=optuna.samplers.CmaEsSampler(seed=0))
    with pytest.raises(Exception):  # noqa: B017 (whatever follows the payload)
        study.ask(study.trials[-1].distributions)
    assert marker.exists()


# ------------------------------------------------------------ the signatures

def test_signatures_survive_a_move_and_nothing_else(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    loading.write_pickled(run, run / "model.zip", b"model bytes")
    loading.write_pickled(run, run / "checkpoints" / "s.pkl", b"stats bytes")
    assert trust.verify_bytes(run / "model.zip") == b"model bytes"
    assert trust.verify_bytes(run / "checkpoints" / "s.pkl") == b"stats bytes"
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    loading.verify_run(moved)
    # An edited manifest (a digest changed, the HMAC kept) no longer verifies.
    data = json.loads((moved / trust.MANIFEST).read_text())
    data["files"]["model.zip"] = "0" * 64
    (moved / trust.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(trust.TrustError, match="not signed with this machine's key"):
        trust.verify_bytes(moved / "model.zip")
    # A file the manifest does not list.
    (run / "other.pkl").write_bytes(b"x")
    with pytest.raises(trust.TrustError, match="does not list it"):
        trust.verify_bytes(run / "other.pkl")
    with pytest.raises(trust.TrustError, match=r"other\.pkl"):
        loading.verify_run(run)
    # Another key (another machine): nothing it did not sign verifies.
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "k2" / "trust.key"))
    with pytest.raises(trust.TrustError, match="no trust key yet"):
        trust.verify_bytes(run / "model.zip")
    loading.write_pickled(tmp_path / "x", tmp_path / "x" / "m.zip", b"m")  # makes key 2
    with pytest.raises(trust.TrustError, match="not signed with this machine's key"):
        trust.verify_bytes(run / "model.zip")


def test_the_key_is_private_and_made_once(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(trust.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    key = tmp_path / "cfg" / "ptreclaim" / "trust.key"
    assert trust.key_path() == key
    loading.write_pickled(tmp_path / "r", tmp_path / "r" / "m.zip", b"m")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    first = key.read_bytes()
    loading.write_pickled(tmp_path / "r", tmp_path / "r" / "n.zip", b"n")
    assert key.read_bytes() == first and len(first) == trust.KEY_BYTES
    # A relative XDG_CONFIG_HOME is invalid (the XDG spec): the home folder's is used.
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")
    assert trust.key_path() == Path.home() / ".config" / "ptreclaim" / "trust.key"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    key.chmod(0o644)
    with pytest.raises(trust.TrustError, match="chmod 600"):
        trust.verify_bytes(tmp_path / "r" / "m.zip")
    key.chmod(0o600)
    key.write_bytes(b"short")
    with pytest.raises(trust.TrustError, match="not a ptreclaim trust key"):
        trust.verify_bytes(tmp_path / "r" / "m.zip")


def test_trust_run_adopts_a_folder_the_user_vouches_for(tiny: Path, tmp_path: Path) -> None:
    """``train.py --resume DIR --trust-model`` signs the folder's files,
    after one line saying so; later loads then verify without the flag."""
    folder = tmp_path / "adopted"
    folder.mkdir()
    (folder / "model.zip").write_bytes(b"weights")
    with pytest.raises(trust.TrustError):
        loading.verify_run(folder)
    assert loading.trust_run(folder) == [folder / "model.zip"]
    loading.verify_run(folder)


# ------------------------------------------------------------ the service

@pytest.mark.slow
def test_the_service_loads_a_train_job_s_model_only_as_its_worker_signed_it(
        service: Service, tmp_path: Path) -> None:  # noqa: F811
    """An evaluate job that names a train job loads the model its worker
    signed (the manifest travels with the run through the job store); the
    same job's model swapped in the store for a crafted one fails, in one
    line, and never runs."""

    from ptreclaim.service.store import blobs

    marker = tmp_path / "ran"
    train = {**TINY_TRAIN, "overrides": [*TINY_TRAIN["overrides"], "pretrain.steps=64"]}
    evaluate = {"kind": "evaluate", "episodes": 1, "oracle": False,
                "input": {"source": "shipped", "name": "redis_jemalloc"}}
    with service.client() as c:
        job = c.submit(train)
        service.start_worker("w")
        assert wait_state(c, job["id"])["state"] == "succeeded"
        names = {a["name"] for a in c.artifacts(job["id"])}
        assert any(n.endswith("/trust.json") for n in names), names
        good = wait_state(c, c.submit({**evaluate, "policies": [f"job:{job['id']}"]})["id"])
        assert good["state"] == "succeeded", good
        # Whoever can write the store swaps the model for a crafted one.
        model = next(n for n in names if n.endswith("/model.zip"))
        crafted = crafted_zip(tmp_path / "crafted.zip", marker).read_bytes()
        with service.store.engine.begin() as conn:
            conn.execute(blobs.update().where(blobs.c.job_id == job["id"],
                                              blobs.c.name == model).values(data=crafted))
        bad = wait_state(c, c.submit({**evaluate, "policies": [f"job:{job['id']}"]})["id"])
    assert bad["state"] == "failed" and "changed after it was written" in (bad["error"] or ""), bad
    assert not marker.exists()
