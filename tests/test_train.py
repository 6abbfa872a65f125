"""The training pipeline, run as a user runs it: ``python scripts/train.py``.

Every run uses a tiny scenario (60 ticks, one zero-page hog) and budgets of a
few hundred steps, written into ``tmp_path``; independent runs start at once
and are awaited together, so the whole file stays well under 90 s on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium  # noqa: F401  (registers the env ids before the env module loads)
import numpy as np
import pytest
import yaml

from ptreclaim.agents import loading, modelpolicy
from ptreclaim.agents.runs import RunFolder
from ptreclaim.agents.stats import gain_share
from ptreclaim.agents.training import callbacks, config, hyperparams, runconfig
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.pagetable_env import OBS_NAMES, EnvConfig, PageTableReclaimEnv

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train.py"

TINY_SCENARIO = """\
name: tiny
ticks: 60
jitter: 0.1
machine:
  ram_mib: 1024
  movable_fraction: 0.8
  cpus: 4
workloads:
  - family: hog
    params: {variant: zeropage, size_gib: 16, tables_per_tick: 16}
"""

TINY_EXPERIMENT = """\
name: tiny
train_suite: tiny.yaml
eval_suite: tiny.yaml
seeds: [0]
timesteps: 256
n_envs: 2
checkpoint_freq: 0
eval: {freq: 128, episodes: 1, final_episodes: 2, n_boot: 200}
env: {decision_ticks: 5, max_steps: 12}
hyperparams:
  ppo: {n_steps: 32, batch_size: 32, n_epochs: 2}
  maskable_ppo: {n_steps: 32, batch_size: 32, n_epochs: 2}
  recurrent_ppo: {n_steps: 32, batch_size: 32, n_epochs: 2}
  a2c: {n_steps: 8}
  dqn: {learning_starts: 32, buffer_size: 1000}
"""

ENV_CONFIG = EnvConfig(decision_ticks=5, max_steps=12)
RUN_FILES = ("config.yaml", "command.txt", "versions.json", "state.json", "model.zip",
             "best_model.zip", "vecnormalize.pkl", "best_vecnormalize.pkl",
             "evaluations.npz", "eval_results.json", "report.md", "learning_curve.png",
             "cost_terms.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.yaml").write_text(TINY_SCENARIO)
    (d / "exp.yaml").write_text(TINY_EXPERIMENT)
    return d


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(callbacks.STOP_AT_ENV, None)
    env.update(extra or {})
    return env


def start(args: Sequence[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python scripts/train.py ARGS`` in the background."""
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(extra_env))


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(args: Sequence[str], extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return finish(start(args, extra_env))


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def rollout(run_dir: Path, scenario: Path, steps: int = 30) -> tuple[list[list[int]], list[float]]:
    """The first ``steps`` actions and rewards of a run's final policy."""
    policy = runconfig.load_trained_policy(run_dir)
    env = PageTableReclaimEnv([load_scenario(scenario)], ENV_CONFIG)
    obs, _ = env.reset(seed=123)
    actions, rewards = [], []
    for _ in range(steps):
        a, _ = policy.predict(obs)
        obs, r, term, trunc, _ = env.step(a)
        actions.append([int(x) for x in np.ravel(a)])
        rewards.append(r)
        if term or trunc:
            obs, _ = env.reset()
    return actions, rewards


# -------------------------------------------------- runs shared by the tests


@pytest.fixture(scope="module")
def runs(tiny: Path) -> Iterator[dict[str, Any]]:
    """One smoke run per algorithm, a second PPO run with the same seed, a
    run stopped halfway (test hook), a two-seed run in parallel processes:
    all started together."""
    exp = str(tiny / "exp.yaml")
    jobs: dict[str, subprocess.Popen[str]] = {}
    for algo in loading.ALGOS:
        jobs[algo] = start(["--config", exp, "--algo", algo, "--out", str(tiny / algo)])
    jobs["ppo_again"] = start(["--config", exp, "--out", str(tiny / "ppo_again")])
    jobs["stopped"] = start(["--config", exp, "--out", str(tiny / "stopped"),
                             "--set", "checkpoint_freq=64"], {callbacks.STOP_AT_ENV: "128"})
    # The multi-seed run also meets a rule file among its baselines (eval.baselines'
    # LABEL=RULE), as the default experiment meets the shipped tuned rules.
    rule = tiny / "constant_rule.yaml"
    rule.write_text((CONFIG_DIR / "rules" / "best_constant.yaml").read_text())
    jobs["multi"] = start(["--config", exp, "--seeds", "0,1", "--jobs", "2",
                           "--set", "eval.final_episodes=1", "--out", str(tiny / "multi"),
                           "--set", f"eval.baselines=[none, soft_hard, mine={rule}]",
                           "--set", f"eval.unseen_suite={tiny / 'tiny.yaml'}",
                           "--set", "eval.unseen_episodes=2"])
    jobs["warm"] = start(["--config", exp, "--out", str(tiny / "warm"),
                          "--set", "pretrain.teacher=heuristic:periodic_scan",
                          "--set", "pretrain.steps=64", "--set", "pretrain.epochs=2"])
    results = {name: finish(p, timeout=180) for name, p in jobs.items()}
    yield {"dir": tiny, "results": results}


@pytest.mark.parametrize("algo", loading.ALGOS)
def test_smoke_run_per_algorithm(runs: dict[str, Any], algo: str) -> None:
    rc, out, err = runs["results"][algo]
    assert rc == 0, err
    run_dir = only_run(runs["dir"] / algo)
    assert run_dir.name.startswith(f"tiny__{algo}__0__")
    for f in RUN_FILES:
        assert (run_dir / f).is_file(), f
    assert any((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert list((run_dir / "checkpoints").glob("model_256_steps.zip"))
    assert list((run_dir / "checkpoints").glob("vecnormalize_256_steps.pkl"))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished" and state["num_timesteps"] == 256
    report = (run_dir / "report.md").read_text()
    for name in (*config.BASELINES, "oracle", algo, f"{algo}_best"):
        assert f"| {name} |" in report
    assert "paired" in report.lower()
    # The printed table: every policy, with the normalised score column.
    assert "score" in out and "soft_hard" in out and "oracle" in out
    cfg = runconfig.read_run_config(run_dir)
    assert cfg.experiment.algo == algo and cfg.seed == 0
    with np.load(run_dir / "evaluations.npz") as d:
        assert list(d["timesteps"]) == [128, 256]
        assert d["results"].shape == (2, 1)


def test_save_load_round_trip_gives_identical_actions(runs: dict[str, Any]) -> None:
    obs = np.random.default_rng(0).uniform(-1, 1, (64, len(OBS_NAMES))).astype(np.float32)
    for algo in ("ppo", "dqn"):
        run_dir = only_run(runs["dir"] / algo)
        final = runconfig.load_trained_policy(run_dir)
        # The last checkpoint is the final model: same weights, same statistics.
        model = loading.load_model(run_dir / "checkpoints" / "model_256_steps.zip", algo,
                                   ENV_CONFIG)
        stats = loading.load_vecnormalize(run_dir / "checkpoints" / "vecnormalize_256_steps.pkl")
        ckpt = modelpolicy.as_policy(model, stats, ENV_CONFIG, "ckpt")
        a, _ = final.predict(obs)
        b, _ = ckpt.predict(obs)
        assert a.shape == (64, 5)
        np.testing.assert_array_equal(a, b)
        # Single observations act like rows of the batch.
        np.testing.assert_array_equal(final.predict(obs[5])[0], a[5])
    # In process: save -> load keeps the weights and the statistics exactly.
    run_dir = only_run(runs["dir"] / "ppo")
    model = loading.load_model(run_dir / "model.zip", "ppo", ENV_CONFIG)
    path = runs["dir"] / "roundtrip.zip"
    callbacks.save_model(model, RunFolder(runs["dir"]), path)
    again = loading.load_model(path, "ppo", ENV_CONFIG)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  again.predict(obs, deterministic=True)[0])


def test_same_seed_same_actions_and_rewards(runs: dict[str, Any]) -> None:
    assert runs["results"]["ppo_again"][0] == 0
    a = only_run(runs["dir"] / "ppo")
    b = only_run(runs["dir"] / "ppo_again")
    with np.load(a / "evaluations.npz") as da, np.load(b / "evaluations.npz") as db:
        np.testing.assert_array_equal(da["results"], db["results"])
    scenario = runs["dir"] / "tiny.yaml"
    acts_a, rews_a = rollout(a, scenario)
    acts_b, rews_b = rollout(b, scenario)
    assert acts_a == acts_b
    assert rews_a == rews_b
    assert json.loads((a / "eval_results.json").read_text()) == \
        json.loads((b / "eval_results.json").read_text())


def test_warm_start_is_recorded(runs: dict[str, Any]) -> None:
    rc, out, err = runs["results"]["warm"]
    assert rc == 0, err
    assert "warm start: heuristic:periodic_scan plays 64 decisions" in out
    state = json.loads((only_run(runs["dir"] / "warm") / "state.json").read_text())
    rec = state["pretrain"]
    assert rec["teacher"] == "heuristic:periodic_scan" and rec["steps"] == 64
    assert 0.0 <= rec["agreement"] <= 1.0 and state["status"] == "finished"


def test_resume_continues_the_step_count(runs: dict[str, Any]) -> None:
    rc, out, err = runs["results"]["stopped"]
    assert rc == 128 + signal.SIGINT, err
    run_dir = only_run(runs["dir"] / "stopped")
    assert f"--resume {run_dir}" in out
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "interrupted" and state["num_timesteps"] == 128
    assert (run_dir / "checkpoints" / "model_128_steps.zip").is_file()
    assert (run_dir / "checkpoints" / "vecnormalize_128_steps.pkl").is_file()
    assert not (run_dir / "model.zip").exists()
    # Keep a copy for the foreign-model test before resuming.
    spare = runs["dir"] / "stopped_copy" / run_dir.name
    shutil.copytree(run_dir, spare)
    rc, out, err = run(["--resume", str(run_dir)])
    assert rc == 0, err
    assert "resuming" in out and "at step 128/256" in out
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished" and state["num_timesteps"] == 256
    model = loading.load_model(run_dir / "model.zip", "ppo", ENV_CONFIG)
    assert model.num_timesteps == 256
    with np.load(run_dir / "evaluations.npz") as d:
        assert list(d["timesteps"]) == [128, 256]
    # One TensorBoard run, continued rather than restarted.
    assert [p.name for p in (run_dir / "tb").iterdir()] == ["ppo_1"]
    assert len((run_dir / "command.txt").read_text().splitlines()) == 4
    # A finished run cannot be resumed again, and stays as it was.
    before = (run_dir / "report.md").read_bytes()
    rc, _, err = run(["--resume", str(run_dir)])
    assert rc == 2 and "finished" in err
    assert (run_dir / "report.md").read_bytes() == before


def test_gap_closed_share_is_none_without_a_gap() -> None:
    # The report's "share of each baseline's gap to the oracle" is gain_share(baseline,
    # learned, oracle); a baseline no worse than the oracle has no gap, and no share (a
    # ratio over a zero or negative gap would read as a number the policy did not earn).
    assert gain_share(10.0, 6.0, 2.0) == 0.5
    assert gain_share(10.0, 12.0, 2.0) == -0.25
    assert gain_share(2.0, 1.0, 2.0) is None
    assert gain_share(1.5, 1.0, 2.0) is None


def test_multi_seed_parallel_aggregate_report(runs: dict[str, Any]) -> None:
    rc, out, err = runs["results"]["multi"]
    assert rc == 0, err + out
    out_dir = runs["dir"] / "multi"
    multi = [p for p in out_dir.iterdir() if "__multi__" in p.name]
    assert len(multi) == 1
    report = (multi[0] / "report.md").read_text()
    assert "## Per seed" in report and "## Pooled over seeds" in report
    assert "| 0 | ppo |" in report and "| 1 | ppo |" in report and "| pooled | ppo |" in report
    # Every baseline has its column, the rule file under its label, and the verdict and the
    # share of each baseline's gap to the oracle name them all.
    header = next(line for line in report.splitlines() if line.startswith("| seed |"))
    assert [c.strip() for c in header.strip("|").split("|")][4:] == [
        "failure ticks/ep (unwarned)", "vs none", "vs soft_hard", "vs mine"]
    # Failure ticks per episode, and in brackets those no pressure signal warned of, for
    # the learned rows and the baselines' alike.
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines()
             if line.startswith(("| 0 | ppo |", "| - | none |"))]
    assert len(cells) >= 2 and all(re.fullmatch(r"\d+\.\d \(\d+\.\d\)", c[4]) for c in cells)
    assert "against each of none, soft_hard, mine) on" in report
    gap = next(line for line in report.splitlines() if "gap to the oracle" in line)
    # (A baseline that costs what the oracle costs has no gap: the tiny scenario's `none`
    # may not.)
    assert re.search(r"soft_hard -?\d+\.\d\d, mine -?\d+\.\d\d\.$", gap)
    # On screen: the final model against each baseline, a column per seed and pooled.
    after = out[out.index(": the held-out suite"):out.index(": the unseen suite")]
    screen = [line for line in after.splitlines() if line.startswith("│ mine ")]
    assert len(screen) == 1 and len(re.findall(r"[-+]\d+\.\d\d (win|tie|loss)",
                                                screen[0])) == 3, out
    # and the final model's failure ticks, unwarned in brackets, per seed and pooled
    fails = [line for line in after.splitlines() if line.startswith("│ failure ticks")]
    assert len(fails) == 1 and len(re.findall(r"\d+\.\d \(\d+\.\d\)", fails[0])) == 3, out
    # The unseen suite (eval.unseen_suite): every seed's final model and every baseline,
    # judged as the held-out suite is, once the seeds are done.
    unseen = json.loads((multi[0] / "unseen_results.json").read_text())
    assert {r["policy"] for r in unseen} == {"seed0", "seed1", "none", "soft_hard", "mine",
                                             "oracle"}
    assert len(unseen) == 6 * 2
    assert "## Per seed (unseen)" in report and "## Pooled over seeds (unseen)" in report
    assert "on the unseen suite (95 % CI" in report
    assert "unseen suite tiny: 1 scenarios x 2 episodes (seeds from 1000), 2 final models" in out
    unseen_screen = out[out.index(": the unseen suite"):]
    assert len([line for line in unseen_screen.splitlines() if line.startswith("│ mine ")]) == 1
    seed_run = next(p for p in out_dir.iterdir() if "__0__" in p.name)
    results = json.loads((seed_run / "eval_results.json").read_text())
    assert {"none", "soft_hard", "mine", "oracle", "ppo"} <= {r["policy"] for r in results}
    seeds = sorted(p.name.split("__")[2] for p in out_dir.iterdir() if "__multi__" not in p.name
                   and not p.name.startswith("."))
    assert seeds == ["0", "1"]
    assert (multi[0] / "experiment.yaml").is_file()


def test_a_run_holds_copies_of_the_rule_files_it_meets(runs: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """Every run folder of the multi-seed experiment, and the experiment's folder, hold a
    copy of the rule file its baselines name (rules/), named relative to the folder: a run
    copied to another machine or checkout still finds the rule it met."""
    out_dir = runs["dir"] / "multi"
    original = (runs["dir"] / "constant_rule.yaml").read_bytes()
    folders = [p for p in out_dir.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 3
    for folder in folders:
        assert (folder / "rules" / "baseline_mine.yaml").read_bytes() == original
        text = (folder / ("experiment.yaml" if "__multi__" in folder.name
                          else "config.yaml")).read_text()
        assert "mine=rules/baseline_mine.yaml" in text and "constant_rule" not in text
    # A seed's run, copied elsewhere, reads its own copy (not the original's path).
    seed_run = next(p for p in folders if "__0__" in p.name)
    moved = tmp_path / "elsewhere" / seed_run.name
    shutil.copytree(seed_run, moved)
    cfg = runconfig.read_run_config(moved)
    assert f"mine={moved / 'rules' / 'baseline_mine.yaml'}" in cfg.experiment.eval.baselines
    config.check_baseline_files(cfg.experiment)
    # What export compares with when no flag names a rule: the run's own copy.
    from ptreclaim.cli.export import _default_rule

    assert _default_rule(tmp_path / "no_study.yaml", cfg.experiment, "mine", "--x") == (
        moved / "rules" / "baseline_mine.yaml")


def test_snapshot_rules_copies_teachers_and_baselines(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    thresholds = src / "t.yaml"
    thresholds.write_text((CONFIG_DIR / "rules" / "tuned_periodic_scan.yaml").read_text())
    params = src / "p.yaml"
    params.write_text("soft_pt_frac: 0.002\n")
    data = {"pretrain": {"teacher": f"{thresholds}, heuristic:soft_hard:{params},"
                                    " heuristic:periodic_scan"},
            "eval": {"baselines": ["none", f"a={thresholds}", f"b=heuristic:soft_hard:{params}",
                                   "c=heuristic:on_zap"]}}
    run = tmp_path / "run"
    run.mkdir()
    out = config.snapshot_rules(data, run)
    assert out["pretrain"]["teacher"] == ("rules/teacher0.yaml,heuristic:soft_hard:"
                                          "rules/teacher1.yaml,heuristic:periodic_scan")
    assert out["eval"]["baselines"] == ["none", "a=rules/baseline_a.yaml",
                                        "b=heuristic:soft_hard:rules/baseline_b.yaml",
                                        "c=heuristic:on_zap"]
    assert data["eval"]["baselines"][1] == f"a={thresholds}"  # the input is not changed
    for name, orig in (("teacher0", thresholds), ("teacher1", params),
                       ("baseline_a", thresholds), ("baseline_b", params)):
        assert (run / "rules" / f"{name}.yaml").read_bytes() == orig.read_bytes()
    # Read back against the folder: absolute paths into it, which load and check.
    back = config.resolve_rule_paths(out, run)
    assert back["eval"]["baselines"][1] == f"a={run / 'rules' / 'baseline_a.yaml'}"
    assert back["pretrain"]["teacher"].split(",")[1] == (
        f"heuristic:soft_hard:{run / 'rules' / 'teacher1.yaml'}")
    for entry in back["eval"]["baselines"]:
        loading.baseline_spec(entry)
    # A rule file that went away before the copy: one error naming it, nothing else.
    with pytest.raises(config.TrainError, match=r"nope\.yaml: cannot copy this rule file into "
                       r".*rules \(No such file or directory\); check that it exists"):
        config.snapshot_rules({"eval": {"baselines": [f"x={src / 'nope.yaml'}"]}}, run)
    # The originals may go: the copies are what the run meets.
    thresholds.unlink()
    params.unlink()
    for entry in back["eval"]["baselines"]:
        loading.baseline_spec(entry)


def test_resuming_a_multi_seed_folder_evaluates_a_missing_unseen_suite(
        runs: dict[str, Any]) -> None:
    """An experiment stopped after its seeds but before the unseen suite resumes there:
    no seed trains again, the unseen suite runs, the report gains its section."""
    out_dir = runs["dir"] / "multi"
    (multi,) = [p for p in out_dir.iterdir() if "__multi__" in p.name]
    before = json.loads((multi / "unseen_results.json").read_text())
    (multi / "unseen_results.json").unlink()
    states = {p: (p / "state.json").read_bytes() for p in out_dir.iterdir()
              if "__multi__" not in p.name and not p.name.startswith(".")}
    wall = json.loads((multi / "multi_state.json").read_text())["wall_seconds"]
    rc, out, err = run(["--resume", str(multi)])
    assert rc == 0, err + out
    assert json.loads((multi / "unseen_results.json").read_text()) == before
    # The wall time adds this invocation's to the earlier ones'.
    assert json.loads((multi / "multi_state.json").read_text())["wall_seconds"] > wall
    assert all((p / "state.json").read_bytes() == b for p, b in states.items())
    assert "## Per seed (unseen)" in (multi / "report.md").read_text()


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny: Path) -> None:
    out = tiny / "sigterm"
    proc = start(["--config", str(tiny / "exp.yaml"), "--out", str(out),
                  "--timesteps", "1000000", "--set", "eval.freq=64"])
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("step "):
            break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    rc, rest, err = finish(proc, timeout=60)
    assert rc == 128 + signal.SIGTERM, err
    assert "resume with" in rest
    run_dir = only_run(out)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "interrupted"
    n = state["num_timesteps"]
    assert 0 < n < 1_000_000
    assert (run_dir / "checkpoints" / f"model_{n}_steps.zip").is_file()
    assert (run_dir / "checkpoints" / f"vecnormalize_{n}_steps.pkl").is_file()


# -------------------------------------------------------------- bad input


def _bad_cases(tiny: Path) -> dict[str, tuple[list[str], str]]:
    (tiny / "malformed.yaml").write_text("name: x\nseeds: [0\n")
    (tiny / "typo.yaml").write_text("nme: x\n")
    fake = tiny / "not_a_run"
    fake.mkdir(exist_ok=True)
    (fake / "notes.txt").write_text("hello")
    exp = str(tiny / "exp.yaml")
    return {
        "missing config": (["--config", str(tiny / "nope.yaml")], "no such file"),
        "malformed config": (["--config", str(tiny / "malformed.yaml")], "YAML syntax error"),
        "unknown key": (["--config", str(tiny / "typo.yaml")], "did you mean 'name'"),
        "unknown algo": (["--config", exp, "--algo", "ppp"], "did you mean 'ppo'"),
        "not a run": (["--resume", str(fake)], "not a run folder"),
        "no such run": (["--resume", str(tiny / "nowhere")], "no such run folder"),
        "bad set key": (["--config", exp, "--set", "env.decision_tick=5"],
                        "did you mean 'decision_ticks'"),
        "bad set type": (["--config", exp, "--set", "timesteps=many"], "expected an integer"),
        "bad set range": (["--config", exp, "--set", "env.decision_ticks=0"], "out of range"),
        "bad set switch": (["--config", exp, "--set", "env.burst_memory=maybe"],
                           "env.burst_memory: expected true or false, got 'maybe'"),
        "bad set form": (["--config", exp, "--set", "timesteps"], "expected key=value"),
        "bad hyperparameter": (["--config", exp, "--set", "hyperparams.ppo.n_step=5"],
                               "did you mean 'n_steps'"),
        "bad schedule": (["--config", exp, "--set", "hyperparams.ppo.learning_rate=lin_x"],
                         "schedule"),
        "bad seeds": (["--config", exp, "--seeds", "0,a"], "comma-separated"),
        "bad suite": (["--config", exp, "--set", "eval_suite=tst"], "did you mean 'test'"),
        "unknown flag": (["--bogus"], "unrecognized arguments"),
        "bad teacher": (["--config", exp, "--set", "pretrain.teacher=heuristic:sofhard"],
                        "did you mean 'soft_hard'"),
    }


@pytest.fixture(scope="module")
def bad_results(tiny: Path) -> dict[str, tuple[int, str, str]]:
    out = tiny / "bad_out"
    procs = {name: start([*args, "--out", str(out)]) if "--resume" not in args
             else start(args) for name, (args, _) in _bad_cases(tiny).items()}
    return {name: finish(p, timeout=60) for name, p in procs.items()}


BAD_CASES = ("missing config", "malformed config", "unknown key", "unknown algo", "not a run",
             "no such run", "bad set key", "bad set type", "bad set range", "bad set switch",
             "bad set form",
             "bad hyperparameter", "bad schedule", "bad seeds", "bad suite", "unknown flag",
             "bad teacher")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_error_line_and_status_2(tiny: Path, bad_results: dict[str, Any],
                                                   case: str) -> None:
    rc, out, err = bad_results[case]
    cases = _bad_cases(tiny)
    assert set(cases) == set(BAD_CASES)
    expected = cases[case][1]
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err
    # Nothing was created for a run that never started.
    assert not (tiny / "bad_out").exists() or not any((tiny / "bad_out").iterdir())


def test_model_from_another_env_is_refused(runs: dict[str, Any], tmp_path: Path) -> None:
    """A checkpoint swapped for a model of another env (other observation
    space, signed as this machine's) or for a file this run did not write
    (another run's model): one error line, nothing overwritten."""
    copies = runs["dir"] / "stopped_copy"
    if not copies.exists():
        pytest.skip("needs the stopped run of test_resume_continues_the_step_count")
    src = only_run(copies)
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    scen = load_scenario(runs["dir"] / "tiny.yaml")
    other = PPO("MlpPolicy", PageTableReclaimEnv([scen], EnvConfig(candidate_counts=True)),
                n_steps=16, batch_size=16, seed=0, device="cpu")
    for name, make in (("other_env", lambda p: callbacks.save_model(other, RunFolder(p.parents[1]),
                                                                   p)),
                       ("other_algo", lambda p: shutil.copy(
                           only_run(runs["dir"] / "dqn") / "model.zip", p))):
        run_dir = tmp_path / name
        shutil.copytree(src, run_dir)
        ckpt = run_dir / "checkpoints" / "model_128_steps.zip"
        make(ckpt)
        before = sorted(p.name for p in run_dir.rglob("*"))
        rc, _, err = run(["--resume", str(run_dir)])
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
        assert ("from another env" in err) if name == "other_env" else (
            "changed after it was written" in err)
        assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_existing_run_folder_is_never_overwritten(tiny: Path, tmp_path: Path) -> None:
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    rc, _, err = run(["--config", str(tiny / "exp.yaml"), "--run-dir", str(existing)])
    assert rc == 2 and "never overwriting" in err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------- in process


def test_set_values_are_typed_and_validated(tiny: Path) -> None:
    exp, data = config.load_experiment(tiny / "exp.yaml", [
        ("--set", "env.decision_ticks=7"), ("--set", "normalize.reward=false"),
        ("--set", "hyperparams.ppo.learning_rate=1e-3"), ("--set", "seeds=[3, 4]")])
    assert exp.env.decision_ticks == 7 and exp.normalize.reward is False
    assert exp.seeds == (3, 4)
    assert exp.train_suite == str((tiny / "tiny.yaml").resolve())
    assert data["env"]["decision_ticks"] == 7
    hp = hyperparams.load_hyperparams(exp)
    assert hp["learning_rate"] == pytest.approx(1e-3)
    assert hp["n_steps"] == 32  # the experiment's override of the algo YAML
    sched = hyperparams._schedule("lin_3e-4", "x")
    assert sched(1.0) == pytest.approx(3e-4) and sched(0.5) == pytest.approx(1.5e-4)
    with pytest.raises(config.TrainError, match="did you mean 'normalize'"):
        config.load_experiment(tiny / "exp.yaml", [("--set", "normalise.obs=true")])


def test_env_threads_reach_the_batched_env(tiny: Path) -> None:
    from ptreclaim.agents.training.fastvec import FastVecEnv
    from ptreclaim.agents.training.vecenv import envs_line, make_vec_env

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("a helper thread needs a second usable CPU")
    exp, _ = config.load_experiment(tiny / "exp.yaml", [("--set", "env_threads=2")])
    venv = make_vec_env(exp, config.resolve_scenarios(exp).train, 0, 0.99)
    inner = venv.unwrapped
    assert isinstance(inner, FastVecEnv) and inner.threads == 2
    assert envs_line(exp, venv) == f"{exp.n_envs} envs on 2 threads"
    venv.close()
    # DQN acts through a wrapper, so it trains on SB3's DummyVecEnv: the run says the
    # setting is unused rather than ignoring it silently.
    dqn, _ = config.load_experiment(tiny / "exp.yaml", [("--set", "env_threads=2"),
                                                        ("--algo dqn", "algo=dqn")])
    venv = make_vec_env(dqn, config.resolve_scenarios(dqn).train, 0, 0.99)
    assert envs_line(dqn, venv) == (f"{dqn.n_envs} envs; env_threads 2 unused: dqn on these "
                                    "scenarios needs SB3's DummyVecEnv")
    venv.close()
    dummy, _ = config.load_experiment(tiny / "exp.yaml", [("--set", "env_threads=2"),
                                                          ("--set", "vec_env=dummy")])
    venv = make_vec_env(dummy, config.resolve_scenarios(dummy).train, 0, 0.99)
    assert envs_line(dummy, venv).endswith("; env_threads 2 unused: vec_env is dummy")
    venv.close()
    with pytest.raises(config.TrainError, match="env_threads"):
        config.load_experiment(tiny / "exp.yaml", [("--set", "env_threads=0")])


def test_default_experiment_and_algo_configs_load() -> None:
    exp, _ = config.load_experiment(None)
    assert exp.name == "default" and exp.algo == "ppo" and len(exp.seeds) >= 3
    # The default warm-starts PPO from the shipped tuned rule (a thresholds file).
    teacher = Path(exp.pretrain.teacher)
    assert teacher.parent.name == "rules" and teacher.name.startswith("tuned_")
    assert loading.parse_policy(exp.pretrain.teacher).kind == "thresholds"
    # ...tuned on the training suite the experiment trains on: a grown or changed
    # suite must come with a re-tuned teacher (and re-tuned baselines), or the
    # comparison with the tuned rules stops being like for like.
    provenance = yaml.safe_load(teacher.read_text())["provenance"]
    assert provenance["scenarios"] == [s.name for s in config.resolve_scenarios(exp).train]
    assert provenance["n_trials"] >= 140
    with pytest.raises(config.TrainError, match=r"pretrain\.teacher= "):
        config.load_experiment(None, [("--algo dqn", "algo=dqn")])
    dqn, _ = config.load_experiment(None, [("--algo dqn", "algo=dqn"),
                                           ("--set", "pretrain.teacher=")])
    assert dqn.algo == "dqn" and not dqn.pretrain.teacher
    for algo in loading.ALGOS:
        hp = hyperparams.load_hyperparams(dataclasses.replace(
            exp, algo=algo, pretrain=config.PretrainConfig()))
        hyperparams.materialize(algo, hp)
    scen = config.resolve_scenarios(exp)
    assert {s.name for s in scen.train}.isdisjoint({s.name for s in scen.eval})


def test_flattened_actions_cover_the_multidiscrete_space() -> None:
    nvec = np.array([5, 3, 4, 4, 2])
    flat = modelpolicy.unflatten_action(np.arange(480), nvec)
    assert flat.shape == (480, 5)
    assert len({tuple(r) for r in flat}) == 480
    assert (flat < nvec).all()
    assert list(modelpolicy.unflatten_action(np.int64(7), nvec)) == list(flat[7])


def test_default_experiment_meets_the_shipped_tuned_rules() -> None:
    exp, _ = config.load_experiment(None)
    assert exp.eval.baseline_labels == ["none", "on_zap", "soft_hard", "periodic_scan",
                                        "tuned_soft_hard", "tuned_periodic_scan",
                                        "best_constant"]
    for entry in exp.eval.baselines[4:]:
        label, path = entry.split("=", 1)
        assert Path(path).is_absolute() and Path(path) == CONFIG_DIR / "rules" / f"{label}.yaml"
        spec = loading.baseline_spec(entry)
        assert spec.kind == "thresholds" and spec.label == label
    # The warm start's teacher is among them: the learned policy must beat what it copied.
    assert f"tuned_periodic_scan={Path(exp.pretrain.teacher)}" in exp.eval.baselines


@pytest.mark.parametrize("value, says", [
    ("[soft_hardd]", "unknown heuristic 'soft_hardd' (did you mean 'soft_hard'?)"),
    ("[mine=nope.yaml]", "nope.yaml"),
    ("[soft_hard, soft_hard]", "the label 'soft_hard' is given twice"),
    ("[oracle=../rules/best_constant.yaml]", "is the oracle's"),
    ("[ppo=configs/rules/best_constant.yaml]", "is the learned policy's"),
    ("[3]", "eval.baselines[0]: expected a string"),
])
def test_bad_baselines_get_one_clear_error(value: str, says: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load_experiment(None, [("--set", f"eval.baselines={value}")])
    assert says in str(err.value) and "eval.baselines" in str(err.value)


def test_a_model_is_not_a_baseline(tmp_path: Path) -> None:
    model = tmp_path / "model.zip"
    model.write_bytes(b"PK")
    with pytest.raises(config.ConfigError, match="a baseline is a rule"):
        loading.baseline_spec(f"learned={model}")


def test_the_baseline_cache_key_covers_the_compiled_core(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """The baselines' episodes run on the compiled core, so a change to its sources alone
    must invalidate their cached results, as a change to the Python model does."""
    from ptreclaim.agents.training import baselines

    names = {f.name for f in baselines.fingerprinted_files()}
    assert {"_fast.pyx", "sim.cpp", "pagetable.hpp", "pool.hpp", "wl_alloc.cpp",
            "setup.py", "pagetable_env.py", "heuristics.py"} <= names
    assert "_fast.cpp" not in names  # generated from _fast.pyx
    before = baselines._code_fingerprint()
    read = Path.read_bytes

    def edited(self: Path) -> bytes:
        return read(self) + (b"// edited\n" if self.name == "sim.hpp" else b"")

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert baselines._code_fingerprint() != before


def test_a_rule_baseline_is_cached_by_what_it_is(tiny: Path, tmp_path: Path) -> None:
    from ptreclaim.agents.training.baselines import baseline_results

    scen = [load_scenario(tiny / "tiny.yaml")]
    rule = tmp_path / "rule.yaml"
    shipped = yaml.safe_load((CONFIG_DIR / "rules" / "best_constant.yaml").read_text())
    rule.write_text(yaml.safe_dump(shipped))
    cache = tmp_path / "cache"
    first = baseline_results([f"mine={rule}"], scen, 2, 1000, ENV_CONFIG, cache)
    assert [r.policy for r in first] == ["mine", "mine"]
    assert [p.name.split("-")[0] for p in cache.glob("*.json")] == ["mine"]
    # The same rule again: from the cache.  An edited rule: a new baseline, run again.
    assert baseline_results([f"mine={rule}"], scen, 2, 1000, ENV_CONFIG, cache) == first
    shipped["rule"]["budget"] = 0  # the smallest budget: another rule
    rule.write_text(yaml.safe_dump(shipped))
    second = baseline_results([f"mine={rule}"], scen, 2, 1000, ENV_CONFIG, cache)
    assert len(list(cache.glob("*.json"))) == 2 and second != first


def test_baselines_in_two_processes_equal_one_and_the_cache(tiny: Path, tmp_path: Path) -> None:
    from ptreclaim.agents.training.baselines import baseline_results

    scen = [load_scenario(tiny / "tiny.yaml")]
    names = ["soft_hard", "oracle", "none"]
    one = baseline_results(names, scen, 2, 1000, ENV_CONFIG, None, jobs=1)
    ticks: list[int] = []
    two = baseline_results(names, scen, 2, 1000, ENV_CONFIG, tmp_path, lambda: ticks.append(1),
                           jobs=2)
    assert two == one and len(ticks) == len(one) == 6
    assert [r.policy for r in one] == ["soft_hard"] * 2 + ["oracle"] * 2 + ["none"] * 2
    assert len(list(tmp_path.glob("*.json"))) == 3
    # Cached: nothing runs again, the same results come back.
    again = baseline_results(names, scen, 2, 1000, ENV_CONFIG, tmp_path, lambda: ticks.append(1),
                             jobs=2)
    assert again == one and len(ticks) == 6


def _baselines_in_a_seed(cache: Path, names: list[str], scenario: Path, out: Any) -> None:
    """What a seed of a multi-seed run (a daemonic process) does: baseline_results, with
    every batch of episodes it runs itself recorded."""
    from ptreclaim.agents.training import baselines

    runs: list[list[str]] = []
    real = baselines.run_baselines

    def spy(specs: Any, *args: Any, **kw: Any) -> Any:
        runs.append([s.label for s in specs])
        return real(specs, *args, **kw)

    baselines.run_baselines = spy  # type: ignore[assignment]
    got = baselines.baseline_results(names, [load_scenario(scenario)], 2, 1000, ENV_CONFIG,
                                     cache)
    out.put((runs, [dataclasses.asdict(r) for r in got]))


def test_seeds_split_the_baselines_one_at_a_time_oracle_first(tiny: Path,
                                                             tmp_path: Path) -> None:
    """In a seed of a multi-seed run, baseline_results takes the free baselines one at a
    time, the oracle first, and lets each go once stored (the one-seed run says so); two
    seeds started together run each baseline exactly once between them, one baseline per
    batch, and both get the results of one process alone."""
    import multiprocessing

    from ptreclaim.agents.results import EpisodeResult
    from ptreclaim.agents.training.baselines import baseline_results

    names = ["soft_hard", "none", "oracle", "on_zap"]
    want = baseline_results(names, [load_scenario(tiny / "tiny.yaml")], 2, 1000, ENV_CONFIG,
                            None)
    ctx = multiprocessing.get_context("fork")

    def seeds(n: int, cache: Path) -> list[tuple[list[list[str]], list[EpisodeResult]]]:
        queue = ctx.Queue()
        procs = [ctx.Process(target=_baselines_in_a_seed, daemon=True,
                             args=(cache, names, tiny / "tiny.yaml", queue)) for _ in range(n)]
        for p in procs:
            p.start()
        outs = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        return [(runs, [EpisodeResult(**r) for r in res]) for runs, res in outs]

    [(runs, got)] = seeds(1, tmp_path / "one")
    assert runs == [["oracle"], ["soft_hard"], ["none"], ["on_zap"]] and got == want
    both = seeds(2, tmp_path / "two")
    assert all(got == want for _, got in both)
    ran = sorted(label for runs, _ in both for batch in runs for label in batch)
    assert ran == sorted(names) and all(len(batch) == 1 for runs, _ in both for batch in runs)
