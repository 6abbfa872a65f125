"""Evaluation: determinism (also across --jobs), statistics, output files,
trained-model loading, and one clear line with exit status 2 for each bad input."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib.image
import numpy as np
import pytest
import yaml

from ptreclaim.agents.evaluate import OUTPUT_FILES, evaluate_specs
from ptreclaim.agents.heuristics import make_heuristic
from ptreclaim.agents.loading import (
    PolicySpec,
    heuristic_spec,
    load_model_policy,
    oracle_spec,
    parse_policy,
)
from ptreclaim.agents.modelpolicy import ObsNormalizedPolicy
from ptreclaim.agents.oracle import OracleBound
from ptreclaim.agents.results import EpisodeResult
from ptreclaim.agents.rollout import episode_seed, run_episode
from ptreclaim.agents.rollout import run_policies as evaluate
from ptreclaim.agents.stats import (
    iqm,
    probability_of_improvement,
    stratified_bootstrap,
    summarize,
)
from ptreclaim.agents.trust import pickled_files, sign_artifacts
from ptreclaim.cli.evaluate import main
from ptreclaim.envs.configio import load_scenario, load_suite, resolve_suite
from ptreclaim.envs.pagetable_env import COST_TERMS, EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.sim.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: {name}
ticks: {ticks}
pt_reclaim: {pt_reclaim}
machine:
  ram_mib: 256
  tenants:
    base_fraction: {base}
workloads:
  - family: hog
    params: {{variant: zeropage}}
  - family: kdump
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """Two tiny scenarios (one on a pre-6.14 kernel) and their suite."""
    (tmp_path / "tiny_a.yaml").write_text(
        TINY.format(name="tiny_a", ticks=80, pt_reclaim="true", base=0.7))
    (tmp_path / "tiny_b.yaml").write_text(
        TINY.format(name="tiny_b", ticks=60, pt_reclaim="false", base=0.75))
    path = tmp_path / "suite.yaml"
    path.write_text("name: tiny\nscenarios: [tiny_a.yaml, tiny_b.yaml]\n")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "-q"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------- determinism

def test_same_results_twice_and_with_two_jobs(tmp_path: Path, suite: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["heuristic:soft_hard", "heuristic:periodic_scan", "--suite", str(suite),
            "--episodes", "3", "--seed", "7", "--bootstrap", "300"]
    outs = []
    for k, jobs in enumerate(("1", "1", "2")):
        out = tmp_path / f"out{k}"
        code, _, err = run_cli(capsys, *args, "--jobs", jobs, "--out", str(out))
        assert code == 0, err
        outs.append(out)
    for name in ("results.csv", "results.json", "summary.json", "report.md", "scores.png",
                 "cost_terms.png", "timeline.png"):
        first = (outs[0] / name).read_bytes()
        assert first == (outs[1] / name).read_bytes(), f"{name} differs between two runs"
        assert first == (outs[2] / name).read_bytes(), f"{name} differs with --jobs 2"
    rows = read_csv(outs[0] / "results.csv")
    # none, on_zap (the baseline), the two heuristics, oracle; 2 scenarios x 3 episodes.
    assert [r["policy"] for r in rows[::6]] == ["none", "on_zap", "soft_hard", "periodic_scan",
                                               "oracle"]
    assert len(rows) == 5 * 2 * 3
    # Same seeds for every policy.
    seeds = {(r["scenario"], r["episode"]): r["seed"] for r in rows if r["policy"] == "none"}
    assert all(seeds[(r["scenario"], r["episode"])] == r["seed"] for r in rows)


def test_pre_6_14_scenario_runs_every_policy_without_on_zap_reclaim(suite: Path) -> None:
    scen = load_suite(suite)[1]
    assert not scen.pt_reclaim
    cfg = EnvConfig()
    res = evaluate({"none": make_heuristic("none"), "on_zap": make_heuristic("on_zap")},
                   [scen], 2, 0, cfg)
    none, on_zap = res[:2], res[2:]
    assert [r.cost for r in none] == [r.cost for r in on_zap]


def test_oracle_instance_is_not_reused_across_episodes(suite: Path) -> None:
    scen = load_suite(suite)[0]
    shared = OracleBound()
    a = evaluate({"oracle": shared}, [scen], 3, 1, EnvConfig())
    b = [evaluate({"oracle": OracleBound()}, [scen], 3, 1, EnvConfig())[k] for k in range(3)]
    assert [r.cost for r in a] == [r.cost for r in b]
    assert shared.env is None  # the caller's instance is left alone


# ----------------------------------------------------------------- statistics

def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_episodes() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (5, 20, 80):
        groups = [rng.normal(10.0, 2.0, n), rng.normal(50.0, 5.0, n)]
        mean, lo, hi = stratified_bootstrap(groups, n_boot=1000, seed=0)
        assert lo <= mean <= hi
        assert mean == pytest.approx(np.mean(np.concatenate(groups)))
        widths.append(hi - lo)
        ilo_mean, ilo, ihi = stratified_bootstrap(groups, iqm, n_boot=1000, seed=0)
        assert ilo <= ilo_mean <= ihi
    assert widths[0] > widths[1] > widths[2]
    # Stratified: the scenario offset (10 vs 50) adds no width.
    pooled_width = np.quantile(
        [np.mean(rng.choice(np.r_[np.full(80, 10.0), np.full(80, 50.0)], 160))
         for _ in range(500)], [0.025, 0.975])
    assert stratified_bootstrap([np.full(80, 10.0), np.full(80, 50.0)])[2] == 30.0
    assert pooled_width[1] - pooled_width[0] > 1.0


def test_iqm_and_probability_of_improvement() -> None:
    assert iqm([1, 2, 3, 4, 100, -100, 2.5, 3.5]) == pytest.approx(np.mean([2, 2.5, 3, 3.5]))

    def res(policy: str, ep: int, cost: float) -> EpisodeResult:
        terms = dict.fromkeys(COST_TERMS, 0.0)
        return EpisodeResult(policy, "s", ep, ep, -cost, terms, 1, 0, 0, 0, terms)

    rs = [res("a", 0, 1.0), res("a", 1, 5.0), res("a", 2, 2.0),
          res("b", 0, 2.0), res("b", 1, 4.0), res("b", 2, 2.0),
          res("none", 0, 10.0), res("none", 1, 10.0), res("none", 2, 10.0),
          res("oracle", 0, 0.0), res("oracle", 1, 0.0), res("oracle", 2, 0.0)]
    assert probability_of_improvement(rs, "a", "b") == pytest.approx((1 + 0 + 0.5) / 3)
    s = {x.policy: x for x in summarize(rs, improvement_over="b", n_boot=200)}
    assert s["a"].normalized == pytest.approx(1 - 8 / 3 / 10)
    assert s["none"].normalized == 0.0 and s["oracle"].normalized == 1.0
    assert s["a"].improvement_over == "b" and s["b"].prob_improvement is None


# ----------------------------------------------------------------- output files

def test_every_output_file_is_written_and_parses(tmp_path: Path, suite: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    params = tmp_path / "sh.yaml"
    params.write_text("soft_pt_frac: 0.02\nhard_pt_frac: 0.05\n")
    code, _, err = run_cli(capsys, f"heuristic:soft_hard:{params}", "--suite", str(suite),
                           "--episodes", "2", "--out", str(out), "--bootstrap", "200")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 * 2 * 2
    for k in COST_TERMS:
        assert f"term_{k}" in rows[0] and f"cost_{k}" in rows[0]
    for r in rows:  # weighted terms add up to the cost
        total = sum(float(r[f"cost_{k}"]) for k in COST_TERMS)
        assert total == pytest.approx(float(r["cost"]), rel=1e-9, abs=1e-9)
    data = json.loads((out / "results.json").read_text())
    assert [d["cost"] for d in data] == [float(r["cost"]) for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    labels = [s["policy"] for s in summary["overall"]]
    assert labels == ["none", "on_zap", "soft_hard[sh]", "oracle"]
    assert set(summary["per_scenario"]) == {"tiny_a", "tiny_b"}
    for s in summary["overall"]:
        assert s["ci_low"] <= s["mean_cost"] <= s["ci_high"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["episodes"] == 2 and config["scenarios"] == ["tiny_a", "tiny_b"]
    report = (out / "report.md").read_text()
    assert "normalised score" in report and "![scores](scores.png)" in report
    # Every policy paired against the --baseline (on_zap) on the same episodes.
    paired = summary["meta"]["paired"]
    assert set(paired) == {"none", "soft_hard[sh]"}
    by_ep = {(r["policy"], r["scenario"], r["episode"]): float(r["cost"]) for r in rows}
    diffs = [by_ep[("on_zap", s, e)] - by_ep[("soft_hard[sh]", s, e)]
             for (p_, s, e) in by_ep if p_ == "soft_hard[sh]"]
    mean, lo, hi = paired["soft_hard[sh]"]
    assert mean == pytest.approx(sum(diffs) / len(diffs)) and lo <= mean <= hi
    assert "## Paired against `on_zap`" in report
    for png in ("scores.png", "cost_terms.png", "timeline.png"):
        img = matplotlib.image.imread(out / png)
        assert img.shape[0] > 100 and img.shape[1] > 100
    assert "evaluate.py" in (out / "command.txt").read_text()


def test_thresholds_file_runs_its_soft_hard_rule(tmp_path: Path, suite: Path) -> None:
    rule = {"kind": "soft_hard", "soft_pt_frac": 0.03, "hard_pt_frac": 0.08}
    yml = tmp_path / "thresholds.yaml"
    yml.write_text(yaml.safe_dump({"schema_version": 2, "provenance": {"seed": 0},
                                   "rule": rule}))
    js = tmp_path / "thresholds.json"
    js.write_text(json.dumps({"rule": rule}))
    params = tmp_path / "p.yaml"
    params.write_text("soft_pt_frac: 0.03\nhard_pt_frac: 0.08\n")
    specs = [parse_policy(str(yml)), parse_policy(str(js)),
             parse_policy(f"same=heuristic:soft_hard:{params}")]
    assert [s.label for s in specs] == ["thresholds[thresholds]", "thresholds[thresholds]",
                                        "same"]
    assert specs[0].params == specs[1].params == specs[2].params
    scen = load_suite(suite)[:1]
    a, _ = evaluate_specs([specs[0]], scen, 2, 0, EnvConfig())
    c, _ = evaluate_specs([specs[2]], scen, 2, 0, EnvConfig())
    assert [r.cost for r in a] == [r.cost for r in c]


# ----------------------------------------------------------------- trained models

def _train_run(root: Path, name: str = "exp__ppo__0__20250101-000000", steps: int = 256,
               **env_kw: Any) -> Path:
    """A run folder as train.py writes it, from a model trained for ``steps``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    scen = load_scenario(root / "tiny_a.yaml")
    cfg = EnvConfig(max_steps=8, **env_kw)
    venv = VecNormalize(DummyVecEnv([lambda: PageTableReclaimEnv([scen], cfg)]))
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0,
                device="cpu", policy_kwargs={"net_arch": [16]})
    model.learn(steps)
    run = root / "runs" / name
    run.mkdir(parents=True)
    for prefix in ("", "best_"):
        model.save(run / f"{prefix}model.zip")
        venv.save(str(run / f"{prefix}vecnormalize.pkl"))
    # Written here as train.py writes them, so signed as this machine's (docs/trust.md).
    sign_artifacts(run, pickled_files(run))
    env = {"max_steps": 8, **env_kw}
    # The layout scripts/train.py writes (experiment.algo, experiment.env).
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "experiment": {"name": "exp", "algo": "ppo", "env": env}}))
    return run


def test_trained_run_folder_is_evaluated_with_its_normalisation(
        tmp_path: Path, suite: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    run = _train_run(tmp_path)
    spec = parse_policy(str(run.relative_to(tmp_path)))
    assert spec.kind == "model" and spec.name == "ppo" and spec.vecnormalize
    assert spec.label == "exp__ppo__0"
    best = parse_policy(str(run), best=True)
    assert best.label == "exp__ppo__0[best]"
    assert best.vecnormalize.endswith("best_vecnormalize.pkl")
    policy = load_model_policy(spec, EnvConfig(max_steps=8), load_suite(suite)[0])
    assert policy.normalize is not None
    outs = []
    for k, jobs in enumerate(("1", "2")):
        out = tmp_path / f"out{k}"
        code, _, err = run_cli(capsys, "runs/exp__ppo__0__20250101-000000", "heuristic:soft_hard",
                               "--suite", str(suite), "--episodes", "2", "--no-oracle",
                               "--jobs", jobs, "--out", str(out), "--bootstrap", "200")
        assert code == 0, err
        outs.append((out / "results.csv").read_bytes())
    assert outs[0] == outs[1]
    rows = read_csv(tmp_path / "out0" / "results.csv")
    assert {r["policy"] for r in rows} == {"none", "on_zap", "exp__ppo__0", "soft_hard"}
    config = yaml.safe_load((tmp_path / "out0" / "config.yaml").read_text())
    assert config["env"]["max_steps"] == 8  # the run's env settings


def test_a_models_episodes_in_chunks_are_its_episodes_alone(tmp_path: Path,
                                                              suite: Path) -> None:
    """evaluate_specs hands a model's episodes to the workers in chunks played in lockstep:
    with 1 and 2 processes every result is the episode run_episode plays alone, the
    timeline episode included, and progress is called once per episode."""
    from ptreclaim.agents import evaluate as evaluation

    run = _train_run(tmp_path)
    spec = parse_policy(str(run))
    scen = load_suite(suite)
    config = EnvConfig(max_steps=8)
    policy = load_model_policy(spec, config, scen[0])
    assert policy.predicts_rows
    episodes = evaluation.MODEL_CHUNK + 3  # two chunks per scenario, the second short
    alone = [run_episode(policy, scen[i], episode_seed(5, i, k), config, spec.label, i, k)
             for i in range(len(scen)) for k in range(episodes)]
    timeline: list[dict[str, Any]] = []
    run_episode(policy, scen[1], episode_seed(5, 1, 0), config, spec.label, 1, 0,
                timeline=timeline)
    assert len({r.reward for r in alone}) > 2
    calls: list[int] = []
    for jobs in (1, 2):
        calls.clear()
        got, timelines = evaluate_specs([spec, heuristic_spec("soft_hard")], scen, episodes,
                                        5, config, jobs=jobs, timeline_scenario=1,
                                        progress=lambda done, total: calls.append(done))
        assert got[:len(alone)] == alone and timelines[spec.label] == timeline
        assert calls == list(range(1, 4 * episodes + 1))  # one call per episode


def test_a_run_trained_on_normalised_observations_needs_its_statistics(
        tmp_path: Path, suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without its VecNormalize statistics a model trained on normalised observations
    reads raw ones: every decision would be wrong, and nothing would say so. Its run's
    config.yaml says normalize.obs, so the statistics file is required."""
    run = _train_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["experiment"]["normalize"] = {"obs": True, "reward": True}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    parse_policy(str(run))  # complete: fine
    (run / "vecnormalize.pkl").unlink()
    with pytest.raises(ConfigError, match=r"vecnormalize\.pkl: missing; .*\(normalize\.obs\)"):
        parse_policy(str(run))
    code, _, err = run_cli(capsys, str(run), "--suite", str(suite), "--episodes", "1",
                           "--out", str(tmp_path / "out"))
    assert code == 2 and "vecnormalize.pkl: missing" in err and "Traceback" not in err
    (run / "best_vecnormalize.pkl").unlink()
    with pytest.raises(ConfigError, match=r"best_vecnormalize\.pkl: missing"):
        parse_policy(str(run), best=True)
    # A run that trained on raw observations has no statistics to miss.
    config["experiment"]["normalize"] = {"obs": False, "reward": True}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert parse_policy(str(run)).vecnormalize == ""


# ----------------------------------------------------------------- bad input

def _bare_model(path: Path, algo: str = "ppo", sign: bool = True, **env_kw: Any) -> Path:
    """An untrained model saved at ``path`` (no run config next to it),
    signed as this machine's unless not ``sign``."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, PPO

    cls = {"ppo": PPO, "a2c": A2C, "maskable_ppo": MaskablePPO}[algo]

    scen = load_scenario(path.parents[2] / "tiny_a.yaml") if path.parents[2].joinpath(
        "tiny_a.yaml").exists() else None
    env = PageTableReclaimEnv([scen] if scen else [load_scenario(ROOT / "configs" / "scenarios"
                                                                 / "redis_jemalloc.yaml")],
                              EnvConfig(**env_kw))
    path.parent.mkdir(parents=True, exist_ok=True)
    cls("MlpPolicy", env, n_steps=64, device="cpu", policy_kwargs={"net_arch": [8]}).save(path)
    if sign:
        sign_artifacts(path.parent, [path])
    return path


def _bad_inputs(tmp: Path, suite: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a phrase the one error line must hold)."""
    (tmp / "empty_suite.yaml").write_text("name: empty\nscenarios: []\n")
    (tmp / "bad_kind.yaml").write_text("rule: {kind: soft_hardd, soft_pt_frac: 0.1}\n")
    (tmp / "bad_param.yaml").write_text("rule: {kind: soft_hard, soft_pt_fracc: 0.1}\n")
    (tmp / "bad_range.json").write_text('{"rule": {"kind": "soft_hard", "hard_pt_frac": 2}}')
    (tmp / "bad_syntax.json").write_text('{"rule": {"kind": ')
    (tmp / "bad_top.yaml").write_text("rules: {kind: soft_hard}\n")
    corrupt = tmp / "runs" / "corrupt__ppo__0__1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.zip").write_bytes(b"PK\x03\x04 not really a zip")
    sign_artifacts(corrupt, [corrupt / "model.zip"])  # trusted, but damaged
    _bare_model(tmp / "runs" / "obs__ppo__0__1" / "model.zip", candidate_counts=True)
    _bare_model(tmp / "runs" / "act__ppo__0__1" / "model.zip", hard_limit_action=False)
    _bare_model(tmp / "elsewhere" / "x" / "model.zip", sign=False)
    existing = tmp / "existing"
    existing.mkdir()
    (existing / "report.md").write_text("keep me\n")
    s = ["--suite", str(suite), "--episodes", "1", "--no-oracle"]
    return {
        "missing path": (["runs/nope", *s], "no such file or folder"),
        "missing heuristic hint": (["soft_hard", *s], "did you mean heuristic:soft_hard"),
        "unknown heuristic": (["heuristic:sofT_hard", *s], "did you mean 'soft_hard'"),
        "missing suite": (["--suite", str(tmp / "nope.yaml")], "no such file"),
        "empty suite": (["--suite", str(tmp / "empty_suite.yaml")], "non-empty list"),
        "thresholds kind": ([str(tmp / "bad_kind.yaml"), *s], "did you mean 'soft_hard'"),
        "thresholds param": ([str(tmp / "bad_param.yaml"), *s], "soft_pt_fracc"),
        "thresholds range": ([str(tmp / "bad_range.json"), *s], "hard_pt_frac"),
        "thresholds syntax": ([str(tmp / "bad_syntax.json"), *s], "not valid JSON"),
        "thresholds top key": ([str(tmp / "bad_top.yaml"), *s], "did you mean 'rule'"),
        "corrupt zip": (["runs/corrupt__ppo__0__1", *s], "cannot load"),
        "observation space": (["runs/obs__ppo__0__1", *s], "observations of shape (42,)"),
        "action space": (["runs/act__ppo__0__1", *s], "trained for actions"),
        "untrusted model": ([str(tmp / "elsewhere" / "x" / "model.zip"), *s],
                            "not trusted: no trust.json next to it"),
        "no best model": (["--best", str(corrupt), *s], "no best_model.zip"),
        "existing output": ([*s, "--out", str(existing)], "--force"),
        "bad episodes": (["--episodes", "0", "--suite", str(suite)], "--episodes"),
        "unknown baseline": ([*s, "--baseline", "nonee"], "did you mean 'none'"),
        "duplicate label": (["heuristic:soft_hard", "heuristic:soft_hard", *s], "LABEL=SPEC"),
        "bad option": (["--episodes", "many"], "invalid int value"),
    }


def test_each_bad_input_is_one_line_and_exit_status_2(
        tmp_path: Path, suite: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    cases = _bad_inputs(tmp_path, suite)
    failures = []
    for name, (argv, phrase) in cases.items():
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        if code != 2 or len(lines) != 1 or phrase not in err or "Traceback" in err:
            failures.append(f"{name}: exit {code}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert (tmp_path / "existing" / "report.md").read_text() == "keep me\n"


def test_trust_model_allows_an_unsigned_model(tmp_path: Path, suite: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = _bare_model(tmp_path / "elsewhere" / "y" / "model.zip", "a2c", sign=False)
    spec = parse_policy(str(model), trust_model=True)
    assert spec.kind == "model" and spec.name == "a2c" and not spec.vecnormalize
    masked = _bare_model(tmp_path / "elsewhere" / "z" / "model.zip", "maskable_ppo", sign=False)
    assert parse_policy(str(masked), trust_model=True).name == "maskable_ppo"
    results, timelines = evaluate_specs([heuristic_spec("none"), spec, oracle_spec()],
                                        load_suite(suite)[:1], 1, 0, EnvConfig())
    assert [r.policy for r in results] == ["none", spec.label, "oracle"]
    assert set(timelines) == {"none", spec.label, "oracle"}
    assert timelines["oracle"][0]["step"] == 0


def test_script_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"),
                           "heuristic:nope", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("evaluate.py: error: heuristic:nope: unknown heuristic")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_policy_spec_is_plain_data() -> None:
    spec = PolicySpec("x", "heuristic", "soft_hard", {"soft_pt_frac": 0.01})
    assert spec.describe()["params"] == {"soft_pt_frac": 0.01}


def test_env_file_sets_the_spaces_a_model_needs(tmp_path: Path, suite: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _bare_model(tmp_path / "runs" / "cc__ppo__0__1" / "model.zip", candidate_counts=True)
    env = tmp_path / "env.yaml"
    env.write_text("env:\n  candidate_counts: true\n  max_steps: 5\n")
    code, _, err = run_cli(capsys, "runs/cc__ppo__0__1", "--env", str(env), "--suite",
                           str(suite), "--episodes", "1", "--no-oracle", "--out",
                           str(tmp_path / "o"), "--bootstrap", "100")
    assert code == 0, err
    rows = read_csv(tmp_path / "o" / "results.csv")
    assert {r["policy"] for r in rows} == {"none", "on_zap", "cc__ppo__0"}
    assert all(int(r["steps"]) <= 5 for r in rows)


def test_flattened_discrete_actions_are_decoded_in_c_order() -> None:
    class Flat:
        def predict(self, obs: Any, state: Any = None, episode_start: Any = None,
                    deterministic: bool = True) -> tuple[np.ndarray, Any]:
            return np.asarray(int(obs[0])), state

    policy = ObsNormalizedPolicy(Flat(), None, "flat", (5, 3, 2))
    for index in (0, 1, 7, 29):
        action, _ = policy.predict(np.asarray([index], dtype=np.float32))
        assert list(action) == list(np.unravel_index(index, (5, 3, 2)))
    assert list(policy.predict(np.asarray([7.0]))[0]) == [1, 0, 1]


def test_suite_by_name_or_path(tmp_path: Path, suite: Path) -> None:
    scenarios, files = resolve_suite("test")
    assert [f.name for f in files] == [f"{s.name}.yaml" for s in scenarios]
    assert len(scenarios) == 6 and all(s.name.startswith("heldout_") for s in scenarios)
    one, _ = resolve_suite(str(tmp_path / "tiny_a.yaml"))
    assert [s.name for s in one] == ["tiny_a"]
    assert [s.name for s in resolve_suite(str(suite))[0]] == ["tiny_a", "tiny_b"]
    with pytest.raises(ConfigError, match="did you mean 'test'"):
        resolve_suite("tset")


def test_unwarned_failures_are_those_of_decisions_taken_above_the_high_watermark() -> None:
    """An episode counts apart the failure ticks of decisions taken while free memory
    stood at or above the high watermark; the timeline (the same episode's per-step
    signals) gives the same count, and the summary and the report carry its mean."""
    from ptreclaim.agents.report import summary_columns, summary_row
    from ptreclaim.configs import CONFIG_DIR

    scenario = load_scenario(CONFIG_DIR / "scenarios" / "kdump_database.yaml")
    config = EnvConfig(max_steps=40)
    timeline: list[dict[str, Any]] = []
    r = run_episode(make_heuristic("none"), scenario, 0, config, "none", timeline=timeline)
    expected = sum(now["failures"] for before, now in itertools.pairwise(timeline)
                   if before["normal_free_pages"] >= before["wmark_high"])
    # This episode has failures of both kinds: a burst out of calm, and failures under
    # pressure (the test would not tell the two apart otherwise).
    assert 0 < r.unwarned_failure_ticks == expected < r.failure_ticks
    twice = [r, dataclasses.replace(r, episode=1, unwarned_failure_ticks=0)]
    (s,) = summarize(twice, n_boot=50)
    assert s.unwarned_failure_ticks == pytest.approx(expected / 2)
    row = dict(zip(summary_columns("none"), summary_row(s), strict=True))
    assert row["of them unwarned"] == f"{expected / 2:.1f}"
    # Results recorded before the count existed say so ("-"), not zero.
    (old,) = summarize([dataclasses.replace(r, unwarned_failure_ticks=None)], n_boot=50)
    assert old.unwarned_failure_ticks is None
    assert dict(zip(summary_columns("none"), summary_row(old), strict=True))[
        "of them unwarned"] == "-"


class _SpacesOnly(gym.Env):
    """An env that only has spaces: enough to build an SB3 model."""

    def __init__(self, action_space: gym.Space, obs_dim: int = 6) -> None:
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (obs_dim,), np.float32)
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, True, {}


def _observations(rng: np.random.Generator, n: int, dim: int) -> list[np.ndarray]:
    """Single and batched observations, float32 and float64 (normalised ones are), small,
    large and exactly zero."""
    out: list[np.ndarray] = []
    for scale in (1e-3, 1.0, 50.0, 1e4):
        out += [(rng.standard_normal(dim) * scale).astype(np.float32) for _ in range(n)]
        out.append(rng.standard_normal((7, dim)) * scale)
    return [*out, np.zeros(dim, np.float32), np.zeros((3, dim))]


@pytest.mark.parametrize(("algo", "space", "shared"), [
    ("ppo", gym.spaces.MultiDiscrete([5, 4, 4, 4, 2]), True),
    ("ppo", gym.spaces.MultiDiscrete([3]), True),
    ("ppo", gym.spaces.MultiDiscrete([5, 4, 2]), False),
    ("a2c", gym.spaces.Discrete(7), True),
])
def test_fast_deterministic_predict_is_sb3s_bit_for_bit(algo: str, space: gym.Space,
                                                        shared: bool) -> None:
    """The fast path of ObsNormalizedPolicy gives model.predict's actions exactly (values,
    dtype, shape) on random networks (with a shared features extractor and without),
    single and batched observations, and on tied and nearly tied logits, where the first
    most likely action must win as torch's argmax of the softmax picks it (logits 1e-8
    apart near 0 become one probability; the raw logits' argmax would take the second); it
    puts the policy in eval mode as predict does, and NaN logits fail as SB3 fails."""
    import torch
    from stable_baselines3 import A2C, PPO

    from ptreclaim.agents.modelpolicy import DeterministicActorCritic

    cls = {"ppo": PPO, "a2c": A2C}[algo]
    rng = np.random.default_rng(0)
    for seed in range(3):
        model = cls("MlpPolicy", _SpacesOnly(space), seed=seed,
                    policy_kwargs={"net_arch": [16, 16], "share_features_extractor": shared})
        fast = ObsNormalizedPolicy(model, None, "m")
        assert isinstance(fast._mode, DeterministicActorCritic)
        for obs in _observations(rng, 20, 6):
            model.policy.set_training_mode(True)
            got, state = fast.predict(obs)
            assert not model.policy.training and not model.policy.action_net.training
            want, _ = model.predict(obs, deterministic=True)
            assert state is None and got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want), (obs, got, want)
    # Ties: every logit equal, then the logits a few ulps apart, increasing and decreasing
    # (float32 softmax maps neighbours to the same probability, and argmax takes the first).
    n = int(np.sum(model.policy.action_dist.action_dims)
            if hasattr(model.policy.action_dist, "action_dims") else space.n)
    net = model.policy.action_net
    tiny = np.float32(30.0)
    for bias in (np.zeros(n, np.float32),
                 np.array([np.float32(1e-8) * (k % 2) for k in range(n)], np.float32),
                 np.array([np.nextafter(tiny, np.float32(99), dtype=np.float32) if k % 2 else tiny
                           for k in range(n)], np.float32),
                 np.array([tiny - np.float32(1e-6) * k for k in range(n)], np.float32),
                 np.array([tiny + np.float32(2e-6) * k for k in range(n)], np.float32)):
        with torch.no_grad():
            net.weight.zero_()
            net.bias.copy_(torch.as_tensor(bias))
        for obs in _observations(rng, 2, 6):
            assert np.array_equal(fast.predict(obs)[0], model.predict(obs, deterministic=True)[0])
    with torch.no_grad():
        net.bias[0] = float("nan")
    obs = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="invalid values") as sb3:
        model.predict(obs, deterministic=True)
    with pytest.raises(ValueError, match="invalid values") as ours:
        fast.predict(obs)
    assert str(ours.value) == str(sb3.value)


def test_other_policies_keep_their_own_predict() -> None:
    """Continuous actions, stochastic calls and recurrent states go through model.predict."""
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", _SpacesOnly(gym.spaces.Box(-1.0, 1.0, (2,), np.float32)), seed=0,
                policy_kwargs={"net_arch": [8]})
    assert ObsNormalizedPolicy(model, None, "box")._mode is None
    calls: list[bool] = []
    discrete = PPO("MlpPolicy", _SpacesOnly(gym.spaces.Discrete(3)), seed=0,
                   policy_kwargs={"net_arch": [8]})
    real = discrete.predict

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append(kw["deterministic"])
        return real(*args, **kw)

    discrete.predict = spy  # type: ignore[method-assign]
    policy = ObsNormalizedPolicy(discrete, None, "d")
    obs = np.zeros(6, np.float32)
    policy.predict(obs)
    policy.predict(obs, deterministic=False)
    policy.predict(obs, state=(np.zeros(1),))
    assert calls == [False, True]


def test_episodes_are_the_same_with_the_fast_predict(suite: Path) -> None:
    """A trained model with its normalisation plays the same episodes on either path."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ptreclaim.agents.modelpolicy import as_policy

    scenarios, _ = resolve_suite(str(suite))
    config = EnvConfig(max_steps=12)
    venv = VecNormalize(DummyVecEnv([lambda: PageTableReclaimEnv(scenarios, config)]))
    model = PPO("MlpPolicy", venv, seed=1, n_steps=64, batch_size=32,
                policy_kwargs={"net_arch": [16]})
    model.learn(128)
    fast = as_policy(model, venv, config, "m")
    slow = as_policy(model, venv, config, "m")
    slow._mode = None
    assert fast._mode is not None
    a, b = evaluate({"m": fast}, scenarios, 2, 5, config), evaluate({"m": slow}, scenarios, 2, 5,
                                                                     config)
    assert a == b and len(a) == 2 * len(scenarios)


def _custom_extractor() -> type:
    """A features extractor of its own (a linear layer and a tanh), not SB3's flatten."""
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class Custom(BaseFeaturesExtractor):
        def __init__(self, observation_space: gym.spaces.Box) -> None:
            super().__init__(observation_space, features_dim=24)
            self.net = torch.nn.Sequential(torch.nn.Linear(observation_space.shape[0], 24),
                                           torch.nn.Tanh())

        def forward(self, obs: Any) -> Any:
            return self.net(obs)

    return Custom


@pytest.mark.parametrize(("algo", "space", "kwargs"), [
    ("ppo", gym.spaces.MultiDiscrete([5, 4, 4, 4, 2]), {"net_arch": [128, 128]}),
    ("ppo", gym.spaces.MultiDiscrete([5, 4, 2]),
     {"net_arch": [16], "share_features_extractor": False}),
    ("ppo", gym.spaces.MultiDiscrete([3, 2]), {"net_arch": [12, 8], "activation_fn": "tanh"}),
    ("ppo", gym.spaces.MultiDiscrete([4, 3]), {"net_arch": [32], "extractor": "custom"}),
    ("ppo", gym.spaces.MultiDiscrete([4, 3]), {"net_arch": [32], "mlp": "subclass"}),
    ("a2c", gym.spaces.Discrete(7), {"net_arch": [16, 16]}),
])
def test_rows_decide_as_each_row_alone(algo: str, space: gym.Space, kwargs: dict) -> None:
    """predict_rows gives, for every row of a batch of 1 to 70 rows, bit for bit the
    action predict gives that row alone (the network runs row by row; only the mode runs on
    the batch), on random networks (ReLU, a tanh one, a separate actor extractor, a
    features extractor of its own, an MLP extractor that is not SB3's own class, A2C with
    a Discrete action), observations of the env's width (39) from 1e-3 to 1e4, and tied and
    nearly tied logits; NaN logits fail with SB3's own error.  The logits are compared with
    predict's computation from a fresh copy of the row, as predict makes one: running the
    network on the whole batch fails that, though its actions happen to agree here."""
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.policies import BaseModel
    from stable_baselines3.common.torch_layers import MlpExtractor

    kwargs = dict(kwargs)
    if kwargs.get("activation_fn") == "tanh":
        kwargs["activation_fn"] = torch.nn.Tanh
    if kwargs.pop("extractor", None):
        kwargs["features_extractor_class"] = _custom_extractor()
    subclass = kwargs.pop("mlp", None)
    cls = {"ppo": PPO, "a2c": A2C}[algo]
    rng = np.random.default_rng(3)
    width = 39
    model = cls("MlpPolicy", _SpacesOnly(space, width), seed=2, policy_kwargs=kwargs)
    p = model.policy
    if subclass:
        class Mlp(MlpExtractor):
            pass

        mlp = Mlp(p.features_dim, [32], torch.nn.ReLU)
        mlp.load_state_dict(p.mlp_extractor.state_dict())
        p.mlp_extractor = mlp
    policy = ObsNormalizedPolicy(model, None, "m")
    assert policy.predicts_rows
    fast = policy._mode
    assert fast is not None
    assert (fast._layers is None) == bool(subclass)

    def check(obs: np.ndarray) -> None:
        rows = policy.predict_rows(obs)
        alone = np.stack([policy.predict(o)[0] for o in obs])
        assert rows.dtype == alone.dtype and np.array_equal(rows, alone), (obs, rows, alone)
        with torch.no_grad():  # the logits too, as predict computes one row's
            one = [p.action_net(p.mlp_extractor.forward_actor(
                BaseModel.extract_features(p, torch.as_tensor(np.array(o)[None]),
                                           p.pi_features_extractor)))
                for o in obs]
        assert torch.equal(fast.logits_rows(obs), torch.cat(one))

    for scale in (1e-3, 1.0, 50.0, 1e4):
        obs = (rng.standard_normal((70, width)) * scale).astype(np.float32)
        for rows in (1, 2, 3, 7, 16, 33, 70):
            check(obs[:rows])
    net = model.policy.action_net
    n = net.bias.shape[0]
    tiny = np.float32(30.0)
    for bias in (np.zeros(n, np.float32),
                 np.array([np.float32(1e-8) * (k % 2) for k in range(n)], np.float32),
                 np.array([tiny - np.float32(1e-6) * k for k in range(n)], np.float32)):
        with torch.no_grad():
            net.weight.mul_(1e-7)
            net.bias.copy_(torch.as_tensor(bias))
        for rows in (1, 5, 64):
            check(rng.standard_normal((rows, width)).astype(np.float32))
    with torch.no_grad():
        net.bias[0] = float("nan")
    with pytest.raises(ValueError, match="invalid values"):
        policy.predict_rows(np.zeros((4, width), np.float32))


def test_lockstep_episodes_are_the_episodes_alone(suite: Path) -> None:
    """run_policies plays a model's episodes in lockstep (predict_rows); each is the
    episode run_episode plays alone, for any lockstep width, with one progress call per
    episode; a policy without predict_rows plays them one by one."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ptreclaim.agents.modelpolicy import as_policy

    scenarios, _ = resolve_suite(str(suite))
    config = EnvConfig(max_steps=15)
    venv = VecNormalize(DummyVecEnv([lambda: PageTableReclaimEnv(scenarios, config)]))
    model = PPO("MlpPolicy", venv, seed=4, n_steps=64, batch_size=32,
                policy_kwargs={"net_arch": [32, 32]})
    model.learn(192)
    policy = as_policy(model, venv, config, "m")

    class Alone:
        """The same policy without predict_rows."""

        def predict(self, *args: Any, **kw: Any) -> Any:
            return policy.predict(*args, **kw)

    alone = evaluate({"m": Alone()}, scenarios, 4, 9, config)
    assert alone == [run_episode(policy, scenarios[i], r.seed, config, "m", i, r.episode)
                     for i in range(len(scenarios)) for r in alone[4 * i:4 * i + 4]]
    assert len({r.reward for r in alone}) > 2  # the episodes differ from one another
    calls: list[tuple[int, int]] = []
    for width in (1, 3, 64):
        calls.clear()
        got = evaluate({"m": policy, "h": make_heuristic("soft_hard")}, scenarios, 4, 9,
                       config, lambda done, total: calls.append((done, total)), lockstep=width)
        assert got[:len(alone)] == alone
        assert calls == [(k, 16) for k in range(1, 17)]
