"""The regression corpus of bad input (issue 15), driven through the real
command lines (``python scripts/<tool>.py``, in a subprocess).

Every case must end in exactly one line on stderr, ``<tool>: error: ...``,
of at most :data:`~ptreclaim.cli.common.MAX_LINE` characters, with no
traceback and exit status 2; and nothing may be written or lost: an output
folder named on the command line does not appear, a run folder given to
``--resume`` is left byte for byte as it was.  The classes: YAML and JSON
past the input limits (alias bombs, huge integers, deep nesting, huge
files), huge and non-finite numbers on the command line, hyperparameters
SB3 would refuse or turn into NaN, outputs that cannot be written or belong
to someone else (a training run, another process), damaged run folders, and
tuning on the held-out suite.  A run whose weights
turn NaN is the one exit status 1: it is marked failed and keeps its last
good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/ is on sys.path (pytest's rootdir-relative import).
from test_train import TINY_EXPERIMENT, TINY_SCENARIO

from ptreclaim.agents import loading
from ptreclaim.agents.runs import claim_folder
from ptreclaim.agents.training import config, hyperparams
from ptreclaim.agents.training.callbacks import STOP_AT_ENV
from ptreclaim.cli.common import MAX_LINE
from ptreclaim.envs.sim.config import QUOTE_CHARS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TRACE = ROOT / "data" / "traces" / "churn_jemalloc.npz"

SCENARIO = TINY_SCENARIO
#: A checkpoint every 64 steps: the run stopped at 128 has one to resume from.
EXPERIMENT = TINY_EXPERIMENT.replace("checkpoint_freq: 0", "checkpoint_freq: 64")


def _laughs(levels: int = 9) -> str:
    """A "billion laughs" document: 9 ** levels strings from ~40 lines."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _deep(depth: int = 5000) -> str:
    return "[" * depth + "]" * depth


BIG = "9" * 5000


def run_tool(script: str, args: Sequence[str], cwd: Path,
             env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def run_all(calls: dict[str, tuple[str, list[str]]], cwd: Path
            ) -> dict[str, tuple[int, str, str]]:
    """Run independent commands a few at a time (most of their time is
    Python starting up and importing)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_tool, script, args, cwd)
                   for name, (script, args) in calls.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_one_line(res: tuple[int, str, str], tool: str, phrase: str) -> str:
    code, out, err = res
    lines = err.strip().splitlines()
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith(f"{tool}: error: "), line
    assert len(line) <= MAX_LINE, line
    assert phrase in line, line
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs, and a run interrupted at step 128 of 256 (a checkpoint every
    64 steps): what ``--resume`` continues, and a training run's folder."""
    d = tmp_path_factory.mktemp("bad_input")
    (d / "tiny.yaml").write_text(SCENARIO)
    (d / "exp.yaml").write_text(EXPERIMENT)
    files = {
        "bomb.yaml": _laughs() + SCENARIO + "description: *l9\n",
        "bigint.yaml": SCENARIO.replace("ticks: 60", f"ticks: {BIG}"),
        "deep.yaml": SCENARIO + f"extra: {_deep()}\n",
        "bigstr.yaml": SCENARIO.replace("ram_mib: 1024", f"ram_mib: {'x' * 1_000_000}"),
        "deep.json": '{"rule": ' + _deep() + "}",
        "bigint.json": '{"rule": {"kind": "soft_hard", "soft_pt_frac": ' + BIG + "}}",
        "nan.json": '{"rule": {"kind": "soft_hard", "soft_pt_frac": NaN}}',
        "deep_thresholds.yaml": f"rule: {_deep()}\n",
        "bomb_exp.yaml": _laughs() + EXPERIMENT + "description: *l9\n",
        "deep_exp.yaml": EXPERIMENT + f"extra: {_deep()}\n",
        "bomb_env.yaml": _laughs() + "max_steps: 20\ndescription: *l9\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    with (d / "huge.yaml").open("w") as f:
        f.write(SCENARIO)
        f.write("# padding\n" * 500_000)  # 5 MB of comments
    (d / "a_file").write_text("not a folder\n")
    code, out, err = run_tool("train.py", ["--config", "exp.yaml", "--out", str(d / "runs"),
                                           "--no-progress"], d, {STOP_AT_ENV: "128"})
    assert code == 130, (out, err)
    (run,) = (d / "runs").glob("tiny__*")
    run.rename(d / "interrupted")
    return d


# ------------------------------------------------------------ inputs past the limits

LIMIT_CASES: dict[str, tuple[str, list[str], str]] = {
    "alias bomb in a scenario": ("simulate.py", ["bomb.yaml"], "expands to more than"),
    "5,000-digit integer in a scenario": ("simulate.py", ["bigint.yaml"],
                                          "an integer of 5000 digits"),
    "deep nesting in a scenario": ("simulate.py", ["deep.yaml"], "nested deeper than 64"),
    "a megabyte value in a scenario": ("simulate.py", ["bigstr.yaml"], "expected an integer"),
    "a 5 MB scenario": ("simulate.py", ["huge.yaml"], "larger than 4 MiB"),
    "deep nesting in a thresholds .json": ("evaluate.py", ["deep.json"], "nested deeper"),
    "deep nesting in a thresholds .yaml": ("evaluate.py", ["deep_thresholds.yaml"],
                                           "nested deeper"),
    "5,000-digit integer in a thresholds .json": ("evaluate.py", ["bigint.json"],
                                                  "an integer of 5000 digits"),
    "NaN in a thresholds .json": ("evaluate.py", ["nan.json"], "NaN is not a JSON number"),
    "alias bomb in an experiment": ("train.py", ["--config", "bomb_exp.yaml"],
                                    "expands to more than"),
    "deep nesting in an experiment": ("train.py", ["--config", "deep_exp.yaml"],
                                      "nested deeper"),
    "alias bomb in --env-config": ("tune.py", ["heuristic", "soft_hard", "--suite", "tiny.yaml",
                                               "--env-config", "bomb_env.yaml"],
                                   "expands to more than"),
    "--timesteps with 400 digits": ("train.py", ["--config", "exp.yaml", "--timesteps",
                                                 "1" + "0" * 400], "401 digits"),
    "--episodes with 5,000 digits": ("evaluate.py", ["--episodes", BIG], "invalid int value"),
    "--episodes with 400 digits": ("evaluate.py", ["--episodes", "9" * 400], "out of range"),
    "--set a 5,000-digit integer": ("train.py", ["--config", "exp.yaml", "--set",
                                                 f"env.decision_ticks={BIG}"],
                                    "an integer of 5000 digits"),
    "--set an infinite learning rate": ("train.py", ["--config", "exp.yaml", "--set",
                                                     "hyperparams.ppo.learning_rate=.inf"],
                                        "not a finite number"),
    "--set a NaN learning rate schedule": ("train.py", ["--config", "exp.yaml", "--set",
                                                        "hyperparams.ppo.learning_rate=lin_1e999"],
                                           "does not start at a finite number"),
    "--set an infinite env weight": ("train.py", ["--config", "exp.yaml", "--set",
                                                  "env.decision_ticks=.nan"], "expected an"),
    "capture_trace --duration nan": ("capture_trace.py", ["record", "-o", "t.npz",
                                                          "--duration", "nan", "--", "true"],
                                     "--duration: nan is out of range"),
    "capture_trace --interval-ms inf": ("capture_trace.py", ["record", "-o", "t.npz",
                                                             "--interval-ms", "inf", "--",
                                                             "true"], "--interval-ms: inf"),
    "tune --timeout inf": ("tune.py", ["heuristic", "soft_hard", "--timeout", "inf"],
                           "--timeout: inf is out of range"),
    "tune on the held-out suite": ("tune.py", ["heuristic", "soft_hard", "--suite", "test"],
                                   "holds held-out scenarios"),
}


@pytest.fixture(scope="module")
def limit_results(work: Path) -> dict[str, tuple[int, str, str]]:
    calls = {}
    for k, (case, (script, args, _)) in enumerate(LIMIT_CASES.items()):
        out = ["--out", str(work / "limit_out" / str(k))] if script != "capture_trace.py" else []
        calls[case] = (script, [*args, *out])
    return run_all(calls, work)


@pytest.mark.parametrize("case", LIMIT_CASES)
def test_input_past_a_limit_is_one_line(work: Path, limit_results: dict[str, Any],
                                        case: str) -> None:
    script, _, phrase = LIMIT_CASES[case]
    line = assert_one_line(limit_results[case], script, phrase)
    assert not (work / "limit_out").exists()
    assert not (work / "t.npz").exists()
    # An offending value is quoted, at most ~QUOTE_CHARS characters of it.
    assert "x" * (QUOTE_CHARS + 1) not in line and BIG[:QUOTE_CHARS + 1] not in line


# ------------------------------------------------------------ hyperparameter values

#: A bad SB3 hyperparameter on the default experiment (as run from the repository):
#: case -> (the --set flags, what the one line says).  Before these were range-checked
#: SB3 failed with a traceback after the run folder was made (an AssertionError, a
#: ValueError, a RuntimeError of torch, an UnboundLocalError mid-training), or took the
#: value silently (gamma 2).
HP_CASES: dict[str, tuple[list[str], str]] = {
    "batch_size 0": (["hyperparams.ppo.batch_size=0"],
                     "hyperparams.ppo.batch_size: 0 is out of range; allowed [2, "),
    "n_steps -1": (["hyperparams.ppo.n_steps=-1"],
                   "hyperparams.ppo.n_steps: -1 is out of range; allowed [1, "),
    "unknown policy": (["hyperparams.ppo.policy=Foo"],
                       "hyperparams.ppo.policy: 'Foo' is not a policy ppo can train here; "
                       "use MlpPolicy"),
    "negative layer width": (["hyperparams.ppo.policy_kwargs={net_arch: [-3]}"],
                             "hyperparams.ppo.policy_kwargs.net_arch[0]: -3 is out of range"),
    "net_arch not a list": (["hyperparams.ppo.policy_kwargs={net_arch: x}"],
                            "hyperparams.ppo.policy_kwargs.net_arch: expected a list of "
                            "layer widths"),
    "n_epochs 0": (["hyperparams.ppo.n_epochs=0"],
                   "hyperparams.ppo.n_epochs: 0 is out of range; allowed [1, "),
    "gamma 2": (["hyperparams.ppo.gamma=2"],
                "hyperparams.ppo.gamma: 2 is out of range; allowed [0, 1]"),
    "schedule from 0": (["hyperparams.ppo.learning_rate=lin_0"],
                        "hyperparams.ppo.learning_rate: 'lin_0' starts at 0.0 is out of range"),
    "rollout of one step": (["n_envs=1", "hyperparams.ppo.n_steps=1"],
                            "hyperparams.ppo.n_steps: 1 x n_envs 1 is a rollout of 1 step"),
    "unknown policy_kwargs key": (["hyperparams.ppo.policy_kwargs={net_archh: [64]}"],
                                  "did you mean 'net_arch'"),
    "recurrent_ppo without its LSTM policy": (
        ["algo=recurrent_ppo", "hyperparams.recurrent_ppo.policy=MlpPolicy"],
        "hyperparams.recurrent_ppo.policy: 'MlpPolicy' is not a policy recurrent_ppo can "
        "train here; use MlpLstmPolicy"),
    "dqn exploration_fraction 0": (["algo=dqn", "hyperparams.dqn.exploration_fraction=0"],
                                   "hyperparams.dqn.exploration_fraction: 0 is out of range; "
                                   "allowed (0, 1]"),
    "dqn train_freq per episode on 8 envs": (
        ["algo=dqn", "hyperparams.dqn.train_freq=[4, episode]"],
        "hyperparams.dqn.train_freq: updates per episode need n_envs 1"),
}


@pytest.fixture(scope="module")
def hp_results(tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, dict[str, tuple[int, str, str]]]:
    out = tmp_path_factory.mktemp("bad_hp") / "runs"
    calls = {}
    for case, (sets, _) in HP_CASES.items():
        args = ["--out", str(out), "--timesteps", "64", "--seed", "0", "--set", "pretrain=null"]
        for s in sets:
            args += ["--set", s]
        calls[case] = ("train.py", args)
    return out, run_all(calls, ROOT)


@pytest.mark.parametrize("case", HP_CASES)
def test_a_bad_hyperparameter_is_one_line_before_any_folder(
        hp_results: tuple[Path, dict[str, tuple[int, str, str]]], case: str) -> None:
    out, results = hp_results
    assert_one_line(results[case], "train.py", HP_CASES[case][1])
    assert not out.exists()


def test_the_shipped_hyperparameters_pass_the_range_checks() -> None:
    """Every shipped experiment with every algorithm (its algo YAML and its
    ``hyperparams`` overrides): the checks refuse none of their values."""
    for path in sorted((ROOT / "configs" / "experiments").glob("*.yaml")):
        exp, _ = config.load_experiment(path)
        for algo in loading.ALGOS:
            run = dataclasses.replace(exp, algo=algo, pretrain=config.PretrainConfig())
            hp = hyperparams.load_hyperparams(run)
            hyperparams.validate_hyperparams(algo, hp, f"{path.name} {algo}", run.n_envs)
            hyperparams.materialize(algo, hp)


# ------------------------------------------------------------ outputs

def test_outputs_are_checked_before_any_work(work: Path, tmp_path: Path) -> None:
    """Unwritable outputs (procfs takes no new file, even from root), a
    file where a folder goes, an existing output without --force: refused
    before the work, which would otherwise run to its end and be lost."""
    ro = "/proc/ptreclaim-no-such-dir"
    scen = str(work / "tiny.yaml")
    cases: dict[str, tuple[str, list[str], str]] = {
        "simulate": ("simulate.py", [scen, "--out", ro], "cannot write in /proc"),
        "evaluate": ("evaluate.py", ["--suite", scen, "--out", ro], "cannot write in /proc"),
        "train": ("train.py", ["--config", "exp.yaml", "--out", ro], "cannot write in /proc"),
        "train onto a file": ("train.py", ["--config", "exp.yaml", "--out", "a_file"],
                              "exists and is not a folder"),
        "monitor --plot": ("monitor.py", ["--once", "--plot", f"{ro}.png".replace(
            "ptreclaim-no-such-dir", "x")], "cannot write in /proc"),
        "capture_trace record -o": ("capture_trace.py", ["record", "-o", "/proc/t.npz", "--",
                                                         "true"], "cannot write in /proc"),
        "capture_trace record -o existing": ("capture_trace.py", ["record", "-o", "a_file",
                                                                  "--", "true"],
                                             "pass --force"),
        "capture_trace check --png": ("capture_trace.py", ["check", str(TRACE), "--png",
                                                           "/proc/x.png"],
                                      "cannot write in /proc"),
        "tune": ("tune.py", ["heuristic", "soft_hard", "--suite", scen, "--out", ro],
                 "cannot write in /proc"),
    }
    for name, (script, args, phrase) in cases.items():
        assert name and assert_one_line(run_tool(script, args, work), script, phrase)
    assert (work / "a_file").read_text() == "not a folder\n"


def test_a_training_run_is_never_another_command_s_output(work: Path) -> None:
    run = work / "interrupted"
    before = snapshot(run)
    scen = str(work / "tiny.yaml")
    for script, args in (("evaluate.py", ["--suite", scen, "--episodes", "1", "--force"]),
                         ("simulate.py", [scen, "--force"]),
                         ("tune.py", ["heuristic", "soft_hard", "--suite", scen])):
        assert_one_line(run_tool(script, [*args, "--out", str(run)], work), script,
                        "a training run's folder")
    assert snapshot(run) == before
    # Still resumable: its config was not overwritten.
    loading.verify_run(run)


def test_tune_leaves_no_empty_folder_behind(work: Path, tmp_path: Path) -> None:
    scen = str(work / "tiny.yaml")
    for args, phrase in ((["--storage", "bogus://nowhere"], "--storage bogus://nowhere"),
                         (["--env-config", "missing.yaml"], "no such file")):
        out = tmp_path / "new" / "study"
        assert_one_line(run_tool("tune.py", ["heuristic", "soft_hard", "--suite", scen,
                                             "--out", str(out), *args], work),
                        "tune.py", phrase)
        assert not out.exists() and not out.parent.exists()


def test_a_claimed_output_or_run_is_refused(work: Path, tmp_path: Path) -> None:
    """Another process holding the folder (here: this one) is refused at
    once, before any work, and nothing of its is touched."""
    out = tmp_path / "busy"
    out.mkdir()
    (out / "report.md").write_text("the other process's\n")
    with claim_folder(out, "busy"):
        assert_one_line(run_tool("evaluate.py", ["--suite", str(work / "tiny.yaml"),
                                                 "--episodes", "1", "--force", "--out",
                                                 str(out)], work),
                        "evaluate.py", "another process is writing there")
    assert [p.name for p in out.iterdir()] == ["report.md"]
    run = work / "interrupted"
    before = snapshot(run)
    with claim_folder(run, "busy"):
        assert_one_line(run_tool("train.py", ["--resume", str(run)], work), "train.py",
                        "another process is training this run")
    assert snapshot(run) == before


def test_two_evaluations_on_one_out(work: Path, tmp_path: Path) -> None:
    """Started together: one writes its report, the other is refused (the
    folder is claimed, or already holds a report), and neither mixes its
    files into the other's."""
    out = tmp_path / "shared"
    args = [sys.executable, str(SCRIPTS / "evaluate.py"), "heuristic:soft_hard", "--suite",
            str(work / "tiny.yaml"), "--episodes", "2", "--no-oracle", "--out", str(out), "-q"]
    procs = [subprocess.Popen(args, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    (loser,) = [r for r in results if r[0] == 2]
    line = assert_one_line(loser, "evaluate.py", "--out")
    assert "another process is writing there" in line or "already exists" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary


# ------------------------------------------------------------ damaged run folders

def _edit_yaml(key: str, value: Any) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = yaml.safe_load((run / "config.yaml").read_text())
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        (run / "config.yaml").write_text(yaml.safe_dump(data))
    return edit


def _edit_state(**fields: Any) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        state = json.loads((run / "state.json").read_text())
        state.update(fields)
        (run / "state.json").write_text(json.dumps(state))
    return edit


def _write(name: str, text: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / name).write_text(text)
    return edit


def _broken_stats(run: Path) -> None:
    """Damaged, though this machine wrote it (signed after the damage)."""
    path = run / "checkpoints" / "vecnormalize_128_steps.pkl"
    loading.write_pickled(run, path, path.read_bytes()[:40])


def _missing(name: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / name).unlink()
    return edit


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "config without a seed": (_edit_yaml("seed", KeyError), "no seed"),
    "config without scenarios": (_edit_yaml("scenarios", KeyError), "no scenarios"),
    "negative seed": (_edit_yaml("seed", -3), "is not a seed"),
    "text seed": (_edit_yaml("seed", "abc"), "is not a seed"),
    "seed unlike the experiment's": (_edit_yaml("seed", 5), "is not [5], the run's seed"),
    "scenarios without train": (_edit_yaml("scenarios.train", KeyError),
                                "scenarios must map train and eval"),
    "hyperparameters not a mapping": (_edit_yaml("hyperparams", [1, 2]),
                                      "hyperparams must be a mapping"),
    "infinite learning rate": (_edit_yaml("hyperparams.learning_rate", float("inf")),
                               "not a finite number"),
    "unknown experiment key": (_edit_yaml("experiment.algoo", "ppo"), "unknown key"),
    "config not YAML": (_write("config.yaml", "experiment: [unclosed\n"), "YAML syntax error"),
    "config an alias bomb": (_write("config.yaml", _laughs() + "seed: *l9\n"),
                             "expands to more than"),
    "state not JSON": (_write("state.json", "{not json"), "not valid JSON"),
    "state a list": (_write("state.json", "[1, 2]"), "not a run state"),
    "state deeply nested": (_write("state.json", _deep()), "nested deeper"),
    "unknown status": (_edit_state(status="bogus"), "status 'bogus' is not one of"),
    "negative step count": (_edit_state(num_timesteps=-5), "expected a count"),
    "checkpoint outside the folder": (_edit_state(checkpoint="../../etc/passwd"),
                                      "is not a file inside the run folder"),
    "checkpoint missing": (_missing("checkpoints/model_128_steps.zip"), "is missing"),
    # It would resume with the statistics of another step count (found by num_timesteps).
    "checkpoint of another step count": (_edit_state(num_timesteps=64),
                                         "is not the one of num_timesteps 64"),
    "statistics missing": (_missing("checkpoints/vecnormalize_128_steps.pkl"),
                           "cannot resume without"),
    "statistics broken": (_broken_stats, "cannot load the VecNormalize statistics"),
    "a step count but no checkpoint": (_edit_state(checkpoint=None),
                                       "no checkpoint to resume from"),
    "a failed run": (_edit_state(status="failed", error="diverged at step 64"),
                     "this run failed"),
    "a finished run": (_edit_state(status="finished"), "this run is finished"),
    "no such folder": (lambda run: shutil.rmtree(run), "no such run folder"),
}


@pytest.fixture(scope="module")
def damage_results(work: Path) -> dict[str, tuple[Any, ...]]:
    """case -> (the command's result, the run folder before, after)."""
    runs, before = {}, {}
    for k, (case, (damage, _)) in enumerate(DAMAGE.items()):
        runs[case] = work / "damaged" / str(k)
        shutil.copytree(work / "interrupted", runs[case])
        damage(runs[case])
        before[case] = snapshot(runs[case]) if runs[case].exists() else None
    results = run_all({case: ("train.py", ["--resume", str(run)])
                       for case, run in runs.items()}, work)
    return {case: (results[case], before[case],
                   snapshot(runs[case]) if runs[case].exists() else None) for case in DAMAGE}


@pytest.mark.parametrize("case", DAMAGE)
def test_resume_of_a_damaged_run_is_one_line(damage_results: dict[str, tuple[Any, ...]],
                                             case: str) -> None:
    res, before, after = damage_results[case]
    assert_one_line(res, "train.py", DAMAGE[case][1])
    assert after == before


def test_a_damaged_multi_seed_experiment_is_one_line(work: Path, tmp_path: Path) -> None:
    multi = tmp_path / "tiny__ppo__multi__20260101-000000"
    multi.mkdir()
    shutil.copy(work / "exp.yaml", multi / "experiment.yaml")
    (multi / "runs.json").write_text('{"zero": 5}')
    assert_one_line(run_tool("train.py", ["--resume", str(multi)], work), "train.py",
                    "not a map of seeds to run folders")


# ------------------------------------------------------------ a run that diverges

@pytest.mark.slow
def test_a_diverging_run_is_marked_failed_and_keeps_its_last_good_checkpoint(
        work: Path, tmp_path: Path) -> None:
    code, out, err = run_tool("train.py", ["--config", "exp.yaml", "--out", str(tmp_path),
                                           "--no-progress", "--set",
                                           "hyperparams.ppo.learning_rate=1e30"], work)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and \
        "training diverged" in lines[0] and "Traceback" not in err, err
    (run,) = tmp_path.glob("tiny__*")
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "failed" and "NaN or inf" in state["error"]
    ckpt = run / state["checkpoint"]
    assert f"kept the last good checkpoint {state['checkpoint']}" in err
    loading.verify_run(run)
    from ptreclaim.agents.training.callbacks import check_finite
    from ptreclaim.envs.pagetable_env import EnvConfig

    check_finite(loading.load_model(ckpt, "ppo", EnvConfig(decision_ticks=5, max_steps=12)))
    assert not (run / "model.zip").exists()
    assert_one_line(run_tool("train.py", ["--resume", str(run)], work), "train.py",
                    "this run failed")
