"""Bad input to capture_trace.py, kernel_check.py and tune.py: one line on
stderr naming the problem and the fix, exit status 2, no traceback, and
nothing written before is lost (found by fuzzing the command lines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import test_tune  # tests/ is on sys.path (pytest's rootdir-relative import)

from ptreclaim.cli import capture_trace, kernel_check, tune
from ptreclaim.cli.common import MAX_LINE
from ptreclaim.envs.host import procfs
from ptreclaim.envs.kernel.scriptgen import generate_corpus
from ptreclaim.envs.sim.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "data" / "traces" / "churn_glibc_trim.npz"
SCRIPT = ROOT / "tests" / "data" / "kernel" / "E01_dontneed_aligned.script"

# The cheapest study: tests/test_tune.py's tiny machine, 20 steps per episode.
TINY = test_tune.TINY


def one_line(code: int, err: str, tool: str, *phrases: str) -> str:
    """``err`` is one error line of ``tool`` holding every phrase; exit status 2."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{tool}: error: ") and len(lines[0]) <= MAX_LINE, lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def run(main: Callable[[list[str]], int], argv: list[str],
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------ capture_trace.py check --png


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.npz"
    shutil.copy(TRACE, path)
    return path


def test_check_never_overwrites_the_trace(trace: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = trace.read_bytes()
    for extra in ([], ["--force"]):
        code, err = run(capture_trace.main,
                        ["check", str(trace), "--png", str(trace), "--rows", "0", *extra], capsys)
        one_line(code, err, "capture_trace.py", f"--png {trace}", "the trace being checked",
                 "choose another --png")
    assert trace.read_bytes() == before
    read_trace(trace)


def test_check_png_keeps_an_existing_file_unless_force(trace: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    png = tmp_path / "plot.png"
    png.write_text("mine\n")
    code, err = run(capture_trace.main,
                    ["check", str(trace), "--png", str(png), "--rows", "0"], capsys)
    one_line(code, err, "capture_trace.py", f"--png {png}: exists", "pass --force")
    assert png.read_text() == "mine\n"
    assert capture_trace.main(["check", str(trace), "--png", str(png), "--rows", "0",
                               "--force"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Atomic: nothing but the trace and the plot is left in the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "t.npz"]
    capsys.readouterr()


def test_check_png_in_a_missing_folder_is_refused(trace: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "no" / "such" / "x.png"
    code, err = run(capture_trace.main, ["check", str(trace), "--png", str(png)], capsys)
    one_line(code, err, "capture_trace.py", "its folder does not exist", "create it first")
    assert not (tmp_path / "no").exists()


def test_check_replaces_its_own_default_plot(trace: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Without --png the plot is TRACE.fidelity.png, which each check rewrites
    (data/traces/record.sh relies on it)."""
    default = trace.with_suffix(".fidelity.png")
    default.write_text("old plot\n")
    assert capture_trace.main(["check", str(trace), "--rows", "0"]) == 0
    assert default.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


# ------------------------------------------------------------ capture_trace.py record --pid


def _denied(pid: int | str = "self", root: object = None) -> list[procfs.MapEntry]:
    raise PermissionError(13, "Permission denied", f"/proc/{pid}/maps")


def test_record_of_an_unreadable_process_is_one_line(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    monkeypatch.setattr(procfs, "read_maps", _denied)
    out = tmp_path / "a.npz"
    code, err = run(capture_trace.main, ["record", "-o", str(out), "--pid", str(os.getpid()),
                                         "--no-syscalls", "--duration", "1", "-q"], capsys)
    one_line(code, err, "capture_trace.py", f"/proc/{os.getpid()}/maps: permission denied",
             "another user", "run as that user or as root")
    assert not out.exists()


def test_record_keeps_its_samples_when_the_process_becomes_unreadable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A command that execs a setuid program mid-capture: the samples so far are kept."""
    real, calls = procfs.read_maps, []

    def maps(pid: int | str = "self", root: object = None) -> list[procfs.MapEntry]:
        calls.append(pid)
        return real(pid) if len(calls) <= 3 else _denied(pid)

    monkeypatch.setattr(procfs, "read_maps", maps)
    out = tmp_path / "a.npz"
    assert capture_trace.main(["record", "-o", str(out), "--no-syscalls", "--interval-ms",
                               "10", "--duration", "5", "-q", "--", "sleep", "5"]) == 0
    assert read_trace(out).samples == 3
    capsys.readouterr()


def test_record_of_pid_1_without_rights_is_one_line(tmp_path: Path) -> None:
    """The fuzzed case itself, where this machine denies /proc/1/maps (a container)."""
    try:
        procfs.read_maps(1)
    except PermissionError:
        pass
    except (OSError, procfs.ProcessGone):
        pytest.skip("no process 1 here")
    else:
        pytest.skip("/proc/1/maps is readable here")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "capture_trace.py"), "record",
                           "-o", str(tmp_path / "a4.npz"), "--pid", "1", "--no-syscalls",
                           "--duration", "1", "-q"], capture_output=True, text=True, timeout=120)
    one_line(proc.returncode, proc.stderr, "capture_trace.py", "/proc/1/maps: permission denied")
    assert not (tmp_path / "a4.npz").exists()


# ------------------------------------------------------------ kernel_check.py


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "s.script"
    shutil.copy(SCRIPT, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "folder", "not utf-8"])
def test_expected_file_that_cannot_be_read_is_one_line(kind: str, script: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    expected = script.with_suffix(".expected")
    if kind == "folder":
        expected.mkdir()
    elif kind == "not utf-8":
        expected.write_bytes(b"\xff\xfe0\n")
    phrase = {"missing": "do not exist", "folder": "is a folder",
              "not utf-8": "not UTF-8"}[kind]
    code, err = run(kernel_check.main, ["expected", str(script)], capsys)
    one_line(code, err, "kernel_check.py", str(expected), phrase, "kernel_check.py kernel")


def test_expected_file_beside_the_script_still_matches(script: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    shutil.copy(SCRIPT.with_suffix(".expected"), script.with_suffix(".expected"))
    assert kernel_check.main(["expected", str(script), "-q"]) == 0
    assert "1 of 1 scripts match" in capsys.readouterr().out


@pytest.mark.parametrize("argv,phrase", [
    (["--generated", "1", "--seed", "-1"], "--seed: -1 is out of range"),
    (["--generated", "1", "--seed", str(2**63)], "--seed: 9223372036854775808 is out of range"),
    (["--generated", "99999999999"], "--generated: 99999999999 is out of range"),
    (["--generated", "-1"], "--generated: -1 is out of range"),
])
def test_compare_generator_flags_are_range_checked(argv: list[str], phrase: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(kernel_check.main, ["compare", "-q", *argv], capsys)
    one_line(code, err, "kernel_check.py", phrase, "allowed [0, ")


def test_generate_corpus_checks_its_arguments() -> None:
    for kwargs, message in (({"seed": -1, "count": 1}, "seed must be an integer >= 0"),
                            ({"seed": 0, "count": -1}, "count must be an integer >= 0"),
                            ({"seed": 0, "count": 1, "thp_share": 2.0}, "thp_share")):
        with pytest.raises(ValueError, match=message):
            generate_corpus(**kwargs)
    assert generate_corpus(2**32 - 1, 1)  # the largest seed kernel_check.py takes


# ------------------------------------------------------------ tune.py --storage


@pytest.fixture
def tune_args(tmp_path: Path) -> list[str]:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "env.yaml").write_text("max_steps: 20\n")
    return ["heuristic", "soft_hard", "--suite", str(tmp_path / "tiny.yaml"), "--env-config",
            str(tmp_path / "env.yaml"), "--out", str(tmp_path / "o"), "-q", "--n-trials", "1"]


@pytest.mark.parametrize("url,phrase", [
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("sqlite+pysqlite://", "in-memory"),
    ("sqlite:///file:m?mode=memory&uri=true", "in-memory"),
    ("sqlite:////nonexistent-ptreclaim/dir/x.db", "does not exist"),
])
def test_storage_that_cannot_hold_a_study_is_refused(url: str, phrase: str,
                                                     tune_args: list[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    code, err = run(tune.main, [*tune_args, "--storage", url], capsys)
    one_line(code, err, "tune.py", f"--storage {url}", phrase, "sqlite:///" if
             phrase == "in-memory" else "create it first")
    assert not Path("/nonexistent-ptreclaim").exists()
    assert not (tmp_path / "o").exists()


def test_the_setup_lock_finds_the_file_of_every_sqlite_url_form(tmp_path: Path) -> None:
    # The lock that serialises study creation sits beside the database file; a file: URI
    # used to be read as a path named "file:..." (its lock in a folder of that name).
    from ptreclaim.agents.tune.storage import _sqlite_file

    assert _sqlite_file(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert _sqlite_file(f"sqlite:///file:{tmp_path}/b.db?uri=true") == tmp_path / "b.db"
    # uri= as SQLAlchemy reads a boolean; SQLite's file:// forms with an empty or local host.
    assert _sqlite_file(f"sqlite:///file:{tmp_path}/c.db?uri=on") == tmp_path / "c.db"
    assert _sqlite_file(f"sqlite:///file://localhost{tmp_path}/d.db?uri=1") == tmp_path / "d.db"
    assert _sqlite_file(f"sqlite:///file://{tmp_path}/e.db?uri=yes") == tmp_path / "e.db"
    for url in ("sqlite:///file:m?mode=memory&uri=true", "sqlite://", "sqlite:///:memory:",
                "postgresql://u@h/db", "not a url"):
        assert _sqlite_file(url) is None, url


def test_storage_that_is_a_folder_is_refused(tune_args: list[str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(tune.main, [*tune_args, "--storage", f"sqlite:///{tmp_path}"], capsys)
    one_line(code, err, "tune.py", "is a folder", "name a file")


def test_storage_file_in_an_existing_folder_still_works(tune_args: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    db = tmp_path / "studies" / "s.db"
    db.parent.mkdir()
    assert tune.main([*tune_args, "--storage", f"sqlite:///{db}"]) == 0
    assert db.stat().st_size > 0
    capsys.readouterr()


def test_in_memory_storage_through_the_script_has_no_traceback(tune_args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), *tune_args,
                           "--storage", "sqlite://"], capture_output=True, text=True,
                          timeout=300)
    one_line(proc.returncode, proc.stderr, "tune.py", "in-memory")
