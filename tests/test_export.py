"""Distillation and export: ``python scripts/export_thresholds.py RUN``.

A tiny run (one zero-page hog, a few hundred PPO steps) is trained once per
module with ``scripts/train.py``; the export reads it like a user's run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_train  # tests/ is on sys.path (pytest's rootdir-relative import)
import yaml

from ptreclaim.agents.distill import (
    Dataset,
    DistillConfig,
    canonical,
    collect,
    distill,
    fit_rule,
    fit_tree,
)
from ptreclaim.agents.evaluate import evaluate_specs
from ptreclaim.agents.export import (
    THRESHOLDS_SCHEMA_VERSION,
    ThresholdsRecord,
    read_thresholds,
    sha256_file,
    write_thresholds,
)
from ptreclaim.agents.heuristics import (
    SoftHard,
    SoftHardParams,
    TreeRule,
    make_heuristic,
    make_rule,
)
from ptreclaim.agents.loading import parse_policy
from ptreclaim.agents.stats import gain_share
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.features import OBS_NAMES
from ptreclaim.envs.pagetable_env import EnvConfig
from ptreclaim.envs.sim.config import ConfigError, build

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "scripts" / "export_thresholds.py"
EVALUATE = ROOT / "scripts" / "evaluate.py"
TRAIN = ROOT / "scripts" / "train.py"
FIXTURE = ROOT / "tests" / "data" / "export" / "known_good.yaml"
#: The fixture's held-out mean cost must reproduce within this relative
#: tolerance: the simulator is deterministic, so anything beyond float noise
#: means the model, a workload or the reward changed, and the fixture (and the
#: README's table) must be regenerated on purpose.
FIXTURE_RTOL = 1e-6

# The tiny scenario and experiment of the training tests: one zero-page hog, a
# few hundred PPO steps.
TINY_SCENARIO, TINY_EXPERIMENT = test_train.TINY_SCENARIO, test_train.TINY_EXPERIMENT


def run(script: Path, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("export")
    (d / "tiny.yaml").write_text(TINY_SCENARIO)
    # Its unseen suite (eval.unseen_suite): the scenario under another name and seed of
    # its jitter, enough to follow the export's second evaluation.
    (d / "tiny_unseen.yaml").write_text(TINY_SCENARIO.replace("name: tiny", "name: tiny_unseen")
                                        .replace("jitter: 0.1", "jitter: 0.2"))
    (d / "exp.yaml").write_text(TINY_EXPERIMENT)
    code, _, err = run(TRAIN, "--config", str(d / "exp.yaml"), "--out", str(d / "runs"),
                       "--set", f"eval.unseen_suite={d / 'tiny_unseen.yaml'}",
                       "--set", "eval.unseen_episodes=3", "--no-progress")
    assert code == 0, err
    (folder,) = (d / "runs").glob("tiny__*")
    return folder


@pytest.fixture(scope="module")
def exported(tiny_run: Path) -> dict[str, Any]:
    out = tiny_run.parent.parent / "out"
    code, stdout, err = run(EXPORT, str(tiny_run), "--out", str(out), "--iterations", "2",
                            "--episodes", "1", "--eval-episodes", "2", "--tuned",
                            str(_tuned_file(tiny_run.parent.parent)), "-q")
    assert code == 0, err
    return {"out": out, "stdout": stdout, "stderr": err, "run": tiny_run}


def _tuned_file(d: Path) -> Path:
    path = d / "tuned.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 2, "name": "tuned",
                                    "rule": {"kind": "soft_hard", "soft_pt_frac": 0.001}}))
    return path


def _assert_share(written: Any, base: float, export: float, learned: float) -> None:
    """A gain share in the export is ``(base - export) / (base - learned)``, recomputed
    from the costs beside it.  The file rounds every cost and the share to 4 decimals, so
    the recomputed share may differ by what +-5e-5 on each cost does to the ratio (a
    small learned gain over ``base`` magnifies it) plus the share's own rounding."""
    share = gain_share(base, export, learned)
    if share is None:
        assert written is None
        return
    # The ratio is monotone in each cost, so its extremes over the rounding box lie at
    # the box's corners.
    e = 5e-5
    corners = [c for a in (-e, e) for b in (-e, e) for c_ in (-e, e)
               if (c := gain_share(base + a, export + b, learned + c_)) is not None]
    assert len(corners) == 8
    lo, hi = min(corners), max(corners)
    assert lo - e - 1e-9 <= written <= hi + e + 1e-9, (written, share, lo, hi)


def test_export_writes_yaml_and_json_with_provenance_and_scores(exported: dict[str, Any]
                                                                ) -> None:
    out, run_dir = exported["out"], exported["run"]
    y = yaml.safe_load((out / "thresholds.yaml").read_text())
    j = json.loads((out / "thresholds.json").read_text())
    assert y == j
    assert y["schema_version"] == THRESHOLDS_SCHEMA_VERSION
    assert y["rule"]["kind"] == "soft_hard"
    prov = y["provenance"]
    assert prov["model_sha256"] == sha256_file(run_dir / "model.zip")
    assert prov["config_sha256"] == sha256_file(run_dir / "config.yaml")
    assert prov["seed"] == 0 and prov["algo"] == "ppo"
    assert prov["model_rules_version"] and prov["ptreclaim_version"]
    assert prov["distillation"]["rounds"] == 2
    ev = y["evaluation"]
    pol = ev["policies"]
    assert {"none", "ppo", "export", "tuned_soft_hard", "soft_hard", "oracle"} <= set(pol)
    assert y["score"]["mean_cost"] == pol["export"]["mean_cost"]
    _assert_share(ev["gain_share"], pol["none"]["mean_cost"], pol["export"]["mean_cost"],
                  pol["ppo"]["mean_cost"])
    # With a tuned heuristic: the share of the learned gain over it.
    _assert_share(ev["gain_share_over_tuned"], pol["tuned_soft_hard"]["mean_cost"],
                  pol["export"]["mean_cost"], pol["ppo"]["mean_cost"])
    assert len(ev["gain_share_over_tuned_ci"]) == 2
    assert len(prov["distillation"]["component_agreement"]) == 5
    assert (out / "export_eval" / "report.md").is_file()
    assert (out / "export_eval" / "scores.png").stat().st_size > 1000


def test_reading_the_export_back_gives_the_same_decisions(exported: dict[str, Any]) -> None:
    out = exported["out"]
    a = read_thresholds(out / "thresholds.yaml").policy()
    b = read_thresholds(out / "thresholds.json").policy()
    scen = load_scenario(exported["run"].parent.parent / "tiny.yaml")
    data, _, _ = collect(a, a, [scen], EnvConfig(decision_ticks=5, max_steps=12), 2, 3)
    rng = np.random.default_rng(0)
    obs = np.concatenate([data.obs, rng.uniform(-1, 1, (500, len(OBS_NAMES)))
                          .astype(np.float32)])
    np.testing.assert_array_equal(a.predict(obs)[0], b.predict(obs)[0])
    # The evaluator reads the file as a policy of its own.
    spec = parse_policy(str(out / "thresholds.yaml"))
    assert spec.kind == "thresholds"


def test_the_export_is_evaluated_on_the_run_s_unseen_suite_too(exported: dict[str, Any]
                                                                ) -> None:
    """The run's eval.unseen_suite (families its training suite holds out): the same
    policies as on the held-out scenarios but the oracle (no bound there), its episodes
    (eval.unseen_episodes), its own report, and the shares of the learned gain the export
    keeps there, in the file's evaluation beside the held-out ones."""
    out = exported["out"]
    for stem, label in (("thresholds", "export"), ("thresholds_tree", "export_tree")):
        ev = yaml.safe_load((out / f"{stem}.yaml").read_text())["evaluation"]
        unseen = ev["unseen"]
        assert ev["scenarios"] == ["tiny"] and unseen["scenarios"] == ["tiny_unseen"]
        assert unseen["episodes"] == 3 and unseen["label"] == label
        pol = unseen["policies"]
        assert "oracle" in ev["policies"] and "oracle" not in pol
        assert {"none", "ppo", label, "tuned_soft_hard", "soft_hard"} <= set(pol)
        assert pol[label]["episodes"] == 3
        _assert_share(unseen["gain_share"], pol["none"]["mean_cost"], pol[label]["mean_cost"],
                      pol["ppo"]["mean_cost"])
        _assert_share(unseen.get("gain_share_over_tuned"), pol["tuned_soft_hard"]["mean_cost"],
                      pol[label]["mean_cost"], pol["ppo"]["mean_cost"])
        assert Path(unseen["report"]) == (out / "export_eval_unseen" / "report.md").resolve()
    report = (out / "export_eval_unseen" / "report.md").read_text()
    assert "tiny_unseen" in report and "| oracle" not in report  # no row of its own


def test_no_unseen_skips_the_unseen_suite(exported: dict[str, Any], tmp_path: Path) -> None:
    code, stdout, err = run(EXPORT, str(exported["run"]), "--out", str(tmp_path),
                            "--iterations", "1", "--episodes", "1", "--eval-episodes", "1",
                            "--tree-depth", "0", "--no-unseen")
    assert code == 0, err
    ev = yaml.safe_load((tmp_path / "thresholds.yaml").read_text())["evaluation"]
    assert "unseen" not in ev and ev["scenarios"] == ["tiny"]
    assert not (tmp_path / "export_eval_unseen").exists()
    assert "export, held-out: keeps" in stdout and "unseen:" not in stdout


def test_an_unseen_suite_not_on_this_machine_stops_the_export_before_the_work(
        exported: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "moved"
    shutil.copytree(exported["run"], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["experiment"]["eval"]["unseen_suite"] = str(tmp_path / "gone" / "unseen.yaml")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_export(run, tmp_path / "out")
    assert code == 2 and "Traceback" not in err, err
    assert "eval.unseen_suite" in err and "or pass --no-unseen" in err
    assert not (tmp_path / "out" / "thresholds.yaml").exists()  # nothing distilled


def run_export(run_dir: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(EXPORT, str(run_dir), "--out", str(out), "--iterations", "1", "--episodes",
               "1", "--eval-episodes", "1", "--tree-depth", "0", "-q", *extra)


def test_same_seed_same_export(exported: dict[str, Any], tmp_path: Path) -> None:
    code, _, err = run(EXPORT, str(exported["run"]), "--out", str(tmp_path), "--iterations",
                       "2", "--episodes", "1", "--no-eval", "-q")
    assert code == 0, err
    a = yaml.safe_load((tmp_path / "thresholds.yaml").read_text())
    b = yaml.safe_load((exported["out"] / "thresholds.yaml").read_text())
    assert a["rule"] == b["rule"]
    assert a["provenance"] == b["provenance"]


def test_collecting_in_lockstep_is_collecting_one_episode_at_a_time(tiny_run: Path) -> None:
    """A trained model labels the distillation's states in lockstep (predict_rows): the
    data, the driver's actions and its cost are those of one episode at a time, bit for
    bit, when the model drives itself and when a rule drives, for any width."""
    from ptreclaim.agents.training.runconfig import load_trained_policy

    teacher = load_trained_policy(tiny_run, "final")
    assert teacher.predicts_rows
    d = tiny_run.parent.parent
    scenarios = [load_scenario(d / "tiny.yaml"), load_scenario(d / "tiny_unseen.yaml")]
    config = EnvConfig(decision_ticks=5, max_steps=12)
    ticks: list[int] = []
    for driver in (teacher, SoftHard()):
        alone = collect(driver, teacher, scenarios, config, 3, 11, lockstep=1)
        assert len(alone[0].obs) > 2 * 3 * 5 and len(set(alone[0].obs[:, 1])) > 2
        for width in (2, 64):
            ticks.clear()
            got = collect(driver, teacher, scenarios, config, 3, 11, lambda: ticks.append(1),
                          lockstep=width)
            assert np.array_equal(got[0].obs, alone[0].obs)
            assert np.array_equal(got[0].actions, alone[0].actions)
            assert np.array_equal(got[1], alone[1]) and got[2] == alone[2] and len(ticks) == 6


def test_distilling_a_rule_recovers_its_decisions() -> None:
    """A teacher that *is* a soft/hard rule is matched exactly on the states
    the student visits."""
    scen = load_scenario(CONFIG_DIR / "scenarios" / "balloon_host_hog.yaml")
    env_config = EnvConfig(decision_ticks=10, max_steps=40)
    teacher = SoftHard(SoftHardParams(soft_pt_frac=0.002, hard_pt_frac=0.02, soft_budget=2,
                                      hard_budget=4, soft_depth=0, hard_depth=2, soft_idle=1,
                                      psi_trigger=1.0, target_by="growth"))
    res = distill(teacher, [scen], env_config, DistillConfig(iterations=2, episodes=1))
    assert res.agreement == pytest.approx(1.0)
    assert isinstance(res.student, SoftHard) and res.student.params.soft_budget == 2
    assert res.student.params.soft_idle == 1


def test_fit_recovers_a_constant_policy() -> None:
    rng = np.random.default_rng(1)
    obs = rng.uniform(0, 0.2, (300, len(OBS_NAMES))).astype(np.float32)
    acts = np.tile([3, 2, 1, 0, 0], (300, 1))
    params, agree = fit_rule(Dataset(obs, acts), budgets=5)
    assert agree == 1.0
    pred = SoftHard(params).predict(obs)[0]
    np.testing.assert_array_equal(canonical(pred), canonical(acts))


def test_tree_export_is_written_rendered_and_evaluated(exported: dict[str, Any]) -> None:
    out = exported["out"]
    rec = read_thresholds(out / "thresholds_tree.json")
    assert rec.kind == "tree" and rec.provenance["distillation"]["tree_depth"] == 3
    assert "export_tree" in rec.evaluation["policies"]
    text = (out / "thresholds_tree.txt").read_text()
    assert text.strip() == rec.policy().render()  # type: ignore[attr-defined]


def test_fit_tree_recovers_a_one_split_teacher() -> None:
    rng = np.random.default_rng(2)
    obs = rng.uniform(0, 0.1, (400, len(OBS_NAMES))).astype(np.float32)
    pt = obs[:, OBS_NAMES.index("pt_frac")]
    acts = np.where((pt > 0.05)[:, None], [4, 2, 0, 0, 0], [1, 0, 2, 0, 0])
    rule, agree = fit_tree(Dataset(obs, acts), depth=3)
    assert agree == 1.0
    assert rule.tree["feature"] == "pt_frac" and rule.tree["above"] == pytest.approx(0.05,
                                                                                      abs=2e-3)
    assert rule.render().splitlines()[0].startswith("if pt_frac > 0.0")
    action, why = rule.decide(obs[np.argmax(pt)])
    assert list(action) == [4, 2, 0, 0, 0] and "pt_frac" in why and ">" in why


def test_fit_tree_splits_only_on_what_every_host_observes() -> None:
    """A teacher trained with an ablation's extra observations (here the burst memory,
    appended after OBS_NAMES) is distilled into a rule over OBS_NAMES alone: the extra
    column is never a split, even when it alone decides the teacher's action."""
    rng = np.random.default_rng(3)
    obs = rng.uniform(0, 0.1, (400, len(OBS_NAMES) + 1)).astype(np.float32)
    acts = np.where((obs[:, -1] > 0.05)[:, None], [4, 2, 0, 0, 0], [1, 0, 2, 0, 0])
    rule, agree = fit_tree(Dataset(obs, acts), depth=3)
    names = rule.render()
    assert "burst_drop" not in names and agree < 1.0
    assert rule.decide(obs[0][: len(OBS_NAMES)])[0].shape == (5,)


@pytest.mark.parametrize(("tree", "want"), [
    ({"feature": "pt_fraction", "above": 0.1, "then": {"action": [1, 0, 0, 0, 0]},
      "else": {"action": [0, 0, 0, 0, 0]}}, "did you mean 'pt_frac'"),
    ({"action": [9, 0, 0, 0, 0]}, "is not [budget"),
    ({"action": [1, 0, 0]}, "a v0 action"),
    ({"feature": "pt_frac", "above": 0.1, "then": {"action": [1, 0, 0, 0, 0]}},
     "a node holds"),
    ({"feature": "pt_frac", "above": "high", "then": {"action": [1, 0, 0, 0, 0]},
      "else": {"action": [0, 0, 0, 0, 0]}}, "finite number"),
])
def test_bad_tree_is_one_clear_error(tree: dict[str, Any], want: str) -> None:
    with pytest.raises(ConfigError, match=want.replace("[", r"\[")):
        make_rule("tree", {"tree": tree}, "t.yaml.rule")
    assert isinstance(make_rule("tree", {"tree": {"action": [1, 0, 0, 0, 0]}}), TreeRule)


def test_write_refuses_a_bad_rule_and_keeps_the_old_file(tmp_path: Path) -> None:
    good = ThresholdsRecord("soft_hard", {"soft_pt_frac": 0.01}, "good")
    write_thresholds(tmp_path / "t", good)
    before = (tmp_path / "t.yaml").read_text()
    with pytest.raises(ConfigError, match="soft_pt_frac"):
        write_thresholds(tmp_path / "t", ThresholdsRecord(
            "soft_hard", {"soft_pt_frac": 0.5, "hard_pt_frac": 0.1}, "bad"))
    assert (tmp_path / "t.yaml").read_text() == before


@pytest.mark.parametrize("case", ["no_model", "not_a_run", "schema", "v0_schema",
                                  "soft_over_hard", "unknown_key", "bad_flag", "out_is_a_file",
                                  "bad_json"])
def test_bad_input_is_one_line_and_status_2(case: str, tiny_run: Path, tmp_path: Path
                                            ) -> None:
    if case == "no_model":
        broken = tmp_path / "run"
        shutil.copytree(tiny_run, broken)
        (broken / "model.zip").unlink()
        code, out, err = run(EXPORT, str(broken), "-q")
        want = "no model.zip"
    elif case == "not_a_run":
        code, out, err = run(EXPORT, str(tmp_path), "-q")
        want = "not a run folder"
    elif case == "bad_flag":
        code, out, err = run(EXPORT, str(tiny_run), "--iterations", "0")
        want = "--iterations"
    elif case == "out_is_a_file":
        (tmp_path / "f").write_text("x")
        code, out, err = run(EXPORT, str(tiny_run), "--out", str(tmp_path / "f"), "-q")
        want = "exists and is not a folder"
    elif case == "bad_json":
        (tmp_path / "t.json").write_text("{not json")
        code, out, err = run(EVALUATE, str(tmp_path / "t.json"), "--episodes", "1", "--out",
                             str(tmp_path / "ev"))
        want = "not valid JSON"
    else:
        rule: dict[str, Any] = {"kind": "soft_hard"}
        data: dict[str, Any] = {"schema_version": 2, "rule": rule}
        if case == "schema":
            data["schema_version"] = 99
            want = "schema_version"
        elif case == "v0_schema":
            data["schema_version"] = 1
            want = "schema_version: 1 is a rule for env v0"
        elif case == "soft_over_hard":
            rule.update(soft_pt_frac=0.3, hard_pt_frac=0.1)
            want = "must not exceed"
        else:
            data["rulez"] = {}
            want = "did you mean 'rule'"
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump(data))
        code, out, err = run(EVALUATE, str(path), "--episodes", "1", "--out",
                             str(tmp_path / "ev"))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_known_good_export_reproduces_its_score() -> None:
    """The regression fixture: a real export of the default experiment
    (``tests/data/export/README.md`` says how it was made)."""
    data = yaml.safe_load(FIXTURE.read_text())
    assert data.get("schema_version") == THRESHOLDS_SCHEMA_VERSION, (
        f"{FIXTURE.name} is a schema_version {data.get('schema_version')} export; regenerate it "
        "with the commands of tests/data/export/README.md")
    record = read_thresholds(FIXTURE)
    ev = data["evaluation"]
    scenarios = [load_scenario(CONFIG_DIR / "scenarios" / f"{n}.yaml") for n in ev["scenarios"]]
    env_config = build(EnvConfig, ev["env"], "fixture.evaluation.env")
    spec = parse_policy(f"export={FIXTURE}")
    results, _ = evaluate_specs([spec], scenarios, ev["episodes"], ev["seed"], env_config,
                                jobs=2)
    mean = float(np.mean([r.cost for r in results]))
    assert mean == pytest.approx(ev["policies"]["export"]["mean_cost"], rel=FIXTURE_RTOL,
                                 abs=1e-4)
    assert record.score["mean_cost"] == ev["policies"]["export"]["mean_cost"]
    assert make_heuristic("soft_hard", dict(record.params)).act(
        np.zeros(len(OBS_NAMES), np.float32)).shape == (5,)


def test_without_flags_the_export_meets_the_rules_its_run_met(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --tuned/--constant: the rule files the run met among its baselines (the default
    experiment's shipped tuned rules), even where a study has left its own result in this
    folder (another model's session may have); the study only for a run that met none,
    and a note either way."""
    from ptreclaim.agents.training.config import load_experiment
    from ptreclaim.cli.export import _default_rule

    exp, _ = load_experiment(None)
    absent = tmp_path / "runs" / "tune" / "soft_hard" / "best.yaml"
    assert _default_rule(absent, exp, "tuned_soft_hard", "--tuned") == CONFIG_DIR / "rules" / \
        "tuned_soft_hard.yaml"
    assert _default_rule(absent, exp, "best_constant", "--constant") == CONFIG_DIR / "rules" / \
        "best_constant.yaml"
    assert capsys.readouterr().err == ""
    study = _tuned_file(tmp_path)
    assert _default_rule(study, exp, "tuned_soft_hard", "--tuned") == CONFIG_DIR / "rules" / \
        "tuned_soft_hard.yaml"
    assert (f"comparing with the run's tuned_soft_hard baseline "
            f"{CONFIG_DIR / 'rules' / 'tuned_soft_hard.yaml'}, not with the study in {study} "
            f"(pass --tuned {study} for that)") in capsys.readouterr().err
    # A run without such a baseline: the study if there is one, else nothing.
    heuristics_only, _ = load_experiment(None, [("--set", "eval.baselines=[soft_hard]")])
    assert _default_rule(absent, heuristics_only, "tuned_soft_hard", "--tuned") is None
    assert capsys.readouterr().err == ""
    assert _default_rule(study, heuristics_only, "tuned_soft_hard", "--tuned") == study
    assert (f"comparing with the study in {study} as tuned_soft_hard, which the run did "
            f"not meet") in capsys.readouterr().err
    # A run whose rule file is gone (moved from another machine): said, then the same.
    gone = tmp_path / "gone.yaml"
    shutil.copy(CONFIG_DIR / "rules" / "best_constant.yaml", gone)
    moved, _ = load_experiment(None, [("--set", f"eval.baselines=[best_constant={gone}]")])
    gone.unlink()
    assert _default_rule(absent, moved, "best_constant", "--constant") is None
    err = capsys.readouterr().err
    assert f"the run's best_constant baseline {gone} is not here" in err
    assert "not compared with it (name a file with --constant)" in err
    constant_study = tmp_path / "constant.yaml"
    shutil.copy(CONFIG_DIR / "rules" / "best_constant.yaml", constant_study)
    assert _default_rule(constant_study, moved, "best_constant", "--constant") == constant_study
    err = capsys.readouterr().err
    assert f"is not here; comparing with the study in {constant_study}" in err
