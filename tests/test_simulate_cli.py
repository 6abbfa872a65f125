"""``scripts/simulate.py``: a tiny scenario end to end in a subprocess (summary
table, run folder, PNG timeline), and every kind of bad input as exactly one
line on stderr with exit status 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptreclaim.cli.simulate import OUTPUT_FILES, plot_timeline, run, summarize
from ptreclaim.envs.configio import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "simulate.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = """\
description: a tiny test scenario
ticks: 600
machine:
  ram_mib: 1024
  movable_fraction: 0.9
  tenants: {base_fraction: 0.9}
workloads:
  - family: balloon
    params: {guest_mib: 128, fill_mib_per_tick: 64, hold_ticks: 5, idle_ticks: 5}
  - family: hog
    start_tick: 5
    params: {variant: zeropage, size_gib: 64, tables_per_tick: 400}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scen") / "tiny.yaml"
    path.write_text(TINY)
    return path


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_python_api(tiny: Path) -> None:
    """The same run from Python: load, run N ticks, summarise, plot."""
    res = run(load_scenario(tiny), ticks=25, policy="none", seed=1)
    assert len(res.history) == 25
    s = summarize(res)
    assert s["totals"]["ticks"] == 25
    assert {q["family"] for q in s["processes"]} == {"balloon", "hog"}
    hog = next(q for q in s["processes"] if q["family"] == "hog")
    assert hog["kind"] == "malicious" and hog["peak_pt_bytes"] > 0
    assert plot_timeline(res).startswith(PNG_MAGIC)
    again = run(load_scenario(tiny), ticks=25, policy="none", seed=1)
    assert again.history == res.history
    aggressive = run(load_scenario(tiny), ticks=25, policy="aggressive", seed=1)
    assert sum(r.reclaim_freed for r in aggressive.history) > 0
    assert np.all(np.diff([r.tick for r in aggressive.history]) == 1)


def test_cli_runs_and_writes(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs = {
        "default": _start([str(tiny), "--ticks", "30", "--policy", "none"], tmp_path),
        "aggressive": _start([str(tiny), "--ticks", "30", "--policy", "aggressive", "--seed",
                              "3", "--out", str(out), "--quiet"], tmp_path),
    }
    results = {k: _finish(p) for k, p in jobs.items()}
    rc, stdout, stderr = results["default"]
    assert rc == 0, stderr
    assert "totals: tiny, policy none, seed 0, 30 ticks" in stdout
    for word in ("processes", "hog1", "malicious", "allocation-failure ticks", "OOM kills",
                 "PSI some / full avg10 peak", "reclaim CPU"):
        assert word in stdout, word
    # Default output: a new folder under runs/simulate/ of the working directory.
    (folder,) = (tmp_path / "runs" / "simulate").iterdir()
    assert folder.name.startswith("tiny__none__0__")
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
    assert (folder / "timeline.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["totals"]["ticks"] == 30
    assert "tiny.yaml" in (folder / "command.txt").read_text()
    assert load_scenario(folder / "config.yaml").workloads == load_scenario(tiny).workloads

    rc, stdout, stderr = results["aggressive"]
    assert rc == 0, stderr
    assert stdout == ""  # --quiet
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["policy"] == "aggressive"
    assert summary["totals"]["reclaim_freed_tables"] > 0
    assert "policy aggressive" in (out / "summary.txt").read_text()

    # An existing file is never overwritten without --force.
    before = (out / "summary.json").read_bytes()
    rc, _, stderr = _finish(_start([str(tiny), "--ticks", "5", "--out", str(out)], tmp_path))
    assert rc == 2
    assert stderr.count("\n") == 1 and "already exists; pass --force" in stderr
    assert (out / "summary.json").read_bytes() == before
    rc, _, stderr = _finish(_start([str(tiny), "--ticks", "5", "--out", str(out), "--force",
                                    "-q"], tmp_path))
    assert rc == 0, stderr
    assert json.loads((out / "summary.json").read_text())["totals"]["ticks"] == 5


def test_cli_bad_input(tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("ticks: 600\nworkloads: [\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(TINY.replace("ticks: 600", "tickz: 600"))
    out_of_range = tmp_path / "range.yaml"
    out_of_range.write_text(TINY.replace("ram_mib: 1024", "ram_mib: 16"))
    family = tmp_path / "family.yaml"
    family.write_text(TINY.replace("family: hog", "family: hogg"))
    cases = {
        "missing": ([str(tmp_path / "nope.yaml")], "nope.yaml: no such file"),
        "malformed": ([str(broken)], "broken.yaml: YAML syntax error at line"),
        "unknown key": ([str(unknown)], "unknown key 'tickz' (did you mean 'ticks'?)"),
        "out of range": ([str(out_of_range)], "machine.ram_mib: 16 is out of range; allowed"),
        "unknown family": ([str(family)], "'hogg' is unknown (did you mean 'hog'?)"),
        "unknown policy": ([str(tiny), "--policy", "agressive"],
                           "--policy 'agressive' is unknown (did you mean 'aggressive'?)"),
        "negative ticks": ([str(tiny), "--ticks", "-5"], "--ticks: -5 is out of range"),
        "zero ticks": ([str(tiny), "--ticks", "0"], "--ticks: 0 is out of range"),
        "ticks not a number": ([str(tiny), "--ticks", "ten"], "invalid int value: 'ten'"),
        "negative seed": ([str(tiny), "--seed", "-1"], "--seed: -1 is out of range"),
        "no scenario": ([], "the following arguments are required: scenario"),
        "out is a file": ([str(tiny), "--out", str(tiny)], "exists and is not a folder"),
    }
    jobs = {k: _start([*args, "--out", str(tmp_path / "o" / k.replace(" ", "_"))]
                      if "--out" not in args else args, tmp_path)
            for k, (args, _) in cases.items()}
    for name, proc in jobs.items():
        rc, stdout, stderr = _finish(proc)
        expected = cases[name][1]
        assert rc == 2, (name, stderr)
        assert stderr.count("\n") == 1, (name, stderr)
        assert stderr.startswith("simulate.py: "), (name, stderr)
        assert expected in stderr, (name, stderr)
        assert "Traceback" not in stderr
        assert stdout == "", name
    assert not (tmp_path / "o").exists()  # nothing was written for bad input


def test_a_bare_name_that_exists_is_a_path(tiny: Path, tmp_path: Path) -> None:
    """``--policy good`` with a folder ``good`` here is that folder (a run folder, read as
    one), not an unknown policy name; a bare name that exists nowhere still is one."""
    (tmp_path / "good").mkdir()
    rc, _, stderr = _finish(_start([str(tiny), "--ticks", "5", "--policy", "good"], tmp_path))
    assert rc == 2 and "no model.zip in this run folder" in stderr and "unknown" not in stderr
    rc, _, stderr = _finish(_start([str(tiny), "--ticks", "5", "--policy", "gone"], tmp_path))
    assert rc == 2 and "--policy 'gone' is unknown" in stderr
