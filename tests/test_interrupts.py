"""Stopping parallel work as an operator does: SIGTERM to the main process, or to its group.

Each test starts the real command line with two worker processes, waits
until they are at work, sends SIGTERM to the main process alone (as
``kill``, systemd or a scheduler do) or to its whole process group (as
``timeout``, systemd's default kill mode and a shell's job control do: the
workers get it too), and checks three things: no process
of the tree is alive a few seconds later; the output is one line with no
traceback; what was saved resumes.  Cases: ``evaluate.py --jobs 2`` (both ways),
``tune.py --jobs 2``, a two-seed ``train.py --jobs 2``, and one seed's final
evaluation with ``eval.jobs 2`` (its group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import test_train  # tests/ is on sys.path (pytest's rootdir-relative import)
import test_tune

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
#: Cheap episodes whose cost still depends on the policy; LONG: a few seconds each.
TINY = test_tune.TINY
LONG = TINY.replace("ticks: 400", "ticks: 3000")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid`` from /proc, or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below ``root``."""
    parent: dict[int, int] = {}
    start: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parent[int(entry)], start[int(entry)] = st[0], st[2]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return {(p, start[p]) for p in found}


def _alive(procs: set[tuple[int, int]]) -> list[int]:
    """The processes of ``procs`` still running (a zombie, or a reused pid, is not)."""
    out = []
    for pid, started in procs:
        st = _stat(pid)
        if st is not None and st[1] != "Z" and st[2] == started:
            out.append(pid)
    return out


def _workers(procs: set[tuple[int, int]]) -> int:
    n = 0
    for pid, _ in procs:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                n += 1
    return n


@dataclass
class Stopped:
    code: int
    out: str  # what the command wrote after the signal
    err: str
    tree: set[tuple[int, int]]


def stop_mid_work(script: str, args: list[str], cwd: Path, ready: Callable[[str], bool],
                  timeout: float = 180, group: bool = False) -> Stopped:
    """Run ``scripts/<script> ARGS``; once two workers run and ``ready(stdout)``,
    SIGTERM the main process (with ``group``: its whole process group, workers included,
    as ``timeout``, systemd's default KillMode and a shell's job control do); wait until
    every process of its tree is gone."""
    out_path, err_path = cwd / f"{script}.out", cwd / f"{script}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / script), *args], cwd=cwd,
                                stdout=out, stderr=err, env=dict(os.environ, COLUMNS="200"),
                                start_new_session=group)
    tree: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert proc.poll() is None, f"{script} ended before the signal: " \
                                        f"{err_path.read_text()}"
            assert time.monotonic() < deadline, f"{script} never got to work"
            tree |= _descendants(proc.pid)
            if _workers(tree) >= 2 and ready(out_path.read_text()):
                break
            time.sleep(0.2)
        tree |= _descendants(proc.pid)
        n_out, n_err = len(out_path.read_bytes()), len(err_path.read_bytes())
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone_by = time.monotonic() + 10
    while _alive(tree) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not _alive(tree), f"still running after the main process ended: {_alive(tree)}"
    return Stopped(code, out_path.read_bytes()[n_out:].decode(),
                   err_path.read_bytes()[n_err:].decode(), tree)


def _one_line(text: str, start: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith(start), lines[0]
    assert "Traceback" not in text and "leaked" not in text
    return lines[0]


@pytest.mark.parametrize("group", [False, True], ids=["main", "group"])
def test_evaluate_stops_its_workers_and_writes_nothing(tmp_path: Path, group: bool) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    # Enough episodes that the compiled core is still busy when the signal comes.
    args = ["--suite", "tiny.yaml", "--episodes", "2000", "--no-oracle", "--jobs", "2",
            "--bootstrap", "200", "--out", "ev", "-q"]
    started = time.monotonic()
    res = stop_mid_work("evaluate.py", args, tmp_path,
                        lambda _: time.monotonic() - started > 1, group=group)
    assert res.code == 128 + signal.SIGTERM
    line = _one_line(res.err, "evaluate.py: SIGTERM stopped the evaluation")
    assert "kept nothing" in line and "resume with" in line
    assert res.out == ""
    assert not (tmp_path / "ev").exists()
    # Resuming is running it again: the same command now finishes.
    proc = subprocess.run([sys.executable, str(SCRIPTS / "evaluate.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ev" / "report.md").is_file()


def _running_trial(db: Path) -> bool:
    """A trial is RUNNING and has sent a heartbeat (read-only, straight from Optuna's tables)."""
    if not db.exists():
        return False
    with contextlib.suppress(sqlite3.Error), \
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                               timeout=10)) as con:
        return bool(con.execute(
            "SELECT t.trial_id FROM trials t JOIN trial_heartbeats h "
            "ON h.trial_id = t.trial_id WHERE t.state = 'RUNNING'").fetchall())
    return False


def test_tune_marks_the_running_trial_failed_and_resumes_with_the_next(tmp_path: Path) -> None:
    (tmp_path / "long.yaml").write_text(LONG)
    (tmp_path / "env.yaml").write_text("max_steps: 200\n")
    args = ["heuristic", "soft_hard", "--suite", "long.yaml", "--env-config", "env.yaml",
            "--out", "tune", "--jobs", "2", "-q"]
    res = stop_mid_work("tune.py", [*args, "--n-trials", "5"], tmp_path,
                        lambda _: _running_trial(tmp_path / "tune" / "study.db"))
    assert res.code == 128 + signal.SIGTERM
    line = _one_line(res.err, "tune.py: SIGTERM stopped trial ")
    assert "marked FAIL" in line and "resume with" in line
    study = optuna.load_study(study_name="soft_hard",
                              storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    states = {t.number: t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states.values()
    (stopped,) = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert stopped.user_attrs["interrupted"] == "SIGTERM"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "tune.py"), *args, "--n-trials", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="soft_hard",
                              storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    new = [t for t in study.trials if t.number not in states]
    assert [t.number for t in new] == [max(states) + 1]
    assert new[0].state == optuna.trial.TrialState.COMPLETE
    # The defaults stay trial 0's job, or the next one's when the interrupt took trial 0.
    assert any(t.user_attrs.get("default") and t.state == optuna.trial.TrialState.COMPLETE
               for t in study.trials)


def test_multi_seed_train_checkpoints_every_seed_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(test_train.TINY_SCENARIO)
    (tmp_path / "exp.yaml").write_text(test_train.TINY_EXPERIMENT)
    args = ["--config", "exp.yaml", "--seeds", "0,1", "--jobs", "2", "--timesteps", "2048",
            "--set", "eval.freq=64", "--out", "out"]

    def both_training(out: str) -> bool:
        return "[seed 0] step " in out and "[seed 1] step " in out

    res = stop_mid_work("train.py", args, tmp_path, both_training)
    assert res.code == 128 + signal.SIGTERM, res.err
    assert "Traceback" not in res.out + res.err and res.err == ""
    # One line says it; a progress line already on its way may precede it.
    lines = [ln for ln in res.out.strip().splitlines() if " step " not in ln
             or "stopped" in ln]
    assert len(lines) == 1 and lines[0].startswith("SIGTERM stopped 2 seed(s)"), res.out
    assert "resume with: python scripts/train.py --resume " in lines[0]
    (multi,) = (tmp_path / "out").glob("*__multi__*")
    runs = {int(k): Path(v) for k, v in json.loads((multi / "runs.json").read_text()).items()}
    assert sorted(runs) == [0, 1]
    for run in runs.values():
        state = json.loads((tmp_path / run / "state.json").read_text())
        assert state["status"] == "interrupted" and 0 < state["num_timesteps"] < 2048
        assert (tmp_path / run / state["checkpoint"]).is_file()
    # Seed 0 alone, then the rest through the multi-seed folder.
    for target in (runs[0], multi):
        proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "--resume",
                               str(target), "--no-progress"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for run in runs.values():
        state = json.loads((tmp_path / run / "state.json").read_text())
        # A rollout cut by the signal makes the resumed run end a few steps past its total.
        assert state["status"] == "finished" and state["num_timesteps"] >= 2048
    report = (multi / "report.md").read_text()
    assert "| 0 | ppo |" in report and "| 1 | ppo |" in report


def test_sigterm_to_the_group_in_train_s_final_evaluation_is_one_line_and_resumes(
        tmp_path: Path) -> None:
    """The signal reaches the evaluation's workers too: a worker that SIGTERM ended is the
    command being stopped, not a crash (it was a WorkerError traceback)."""
    (tmp_path / "tiny.yaml").write_text(test_train.TINY_SCENARIO)
    (tmp_path / "exp.yaml").write_text(test_train.TINY_EXPERIMENT)
    args = ["--config", "exp.yaml", "--set", "eval.jobs=2", "--set", "eval.final_episodes=300",
            "--out", "out", "--no-progress"]
    res = stop_mid_work("train.py", args, tmp_path,
                        lambda out: "final evaluation on" in out, group=True)
    assert res.code == 128 + signal.SIGTERM, res.out + res.err
    assert "Traceback" not in res.out + res.err and "WorkerError" not in res.out + res.err
    line = _one_line(res.out, "SIGTERM stopped the final evaluation of tiny__ppo__0__")
    assert "kept the trained models" in line and "resume with: " in line
    (run,) = (tmp_path / "out").glob("tiny__ppo__0__*")
    assert json.loads((run / "state.json").read_text())["status"] == "trained"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "--resume", str(run),
                           "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
