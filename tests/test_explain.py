"""``agents/explain.py`` and ``scripts/explain.py``: action shares and feature sensitivity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptreclaim.agents.explain import explain
from ptreclaim.agents.loading import heuristic_spec
from ptreclaim.cli.explain import main
from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.features import OBS_NAMES
from ptreclaim.envs.pagetable_env import EnvConfig

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = load_scenario(ROOT / "configs" / "scenarios" / "balloon_host_hog.yaml")
ENV = EnvConfig(max_steps=15)


def test_a_policy_that_never_acts_follows_no_feature() -> None:
    ex = explain(heuristic_spec("none"), [SCENARIO], ENV, episodes=2, seed=3)
    assert ex.decisions[SCENARIO.name] == 30
    assert ex.shares[SCENARIO.name]["budget"][0] == 1.0  # always "no pass"
    assert set(ex.sensitivity) == set(OBS_NAMES)
    assert all(v == 0.0 for v in ex.sensitivity.values())


def test_a_rule_follows_the_pressure_it_reads_and_is_deterministic() -> None:
    env = EnvConfig(max_steps=60)  # long enough for the hog to become a suspect
    a = explain(heuristic_spec("soft_hard"), [SCENARIO], env, episodes=2, seed=3)
    b = explain(heuristic_spec("soft_hard"), [SCENARIO], env, episodes=2, seed=3)
    assert a == b
    shares = a.shares[SCENARIO.name]
    assert all(sum(v) == pytest.approx(1.0) for v in shares.values())
    # soft_hard follows the top consumer's share and ratio (its suspect test) and the
    # page-table share (its limits); it never reads the PSI full lines.
    assert a.sensitivity["top1_pt_frac"] > 0 and a.sensitivity["pt_frac"] > 0
    assert a.sensitivity["psi_full_avg60"] == 0.0


def test_cli_writes_its_files_and_refuses_bad_input(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ex"
    assert main(["heuristic:soft_hard", "--suite", "balloon_host_hog", "--episodes", "1",
                 "--out", str(out), "-q"]) == 0
    data = json.loads((out / "explain.json").read_text())
    assert data["scenarios"] == ["balloon_host_hog"] and data["decisions"]["balloon_host_hog"] > 0
    assert (out / "explain.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    for argv, words in ((["nowhere/model.zip"], "no such file"),
                        (["heuristic:soft_hard", "--episodes", "0"], "--episodes"),
                        (["heuristic:soft_hard", "--suite", "no_such_suite"], "no_such_suite")):
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
