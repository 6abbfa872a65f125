"""The page-table model against the recorded experiments and the live kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptreclaim.envs.kernel.check import compare_script
from ptreclaim.envs.kernel.oracle import kernel_status, run_script
from ptreclaim.envs.kernel.scriptgen import generate_corpus
from ptreclaim.envs.sim.opscript import parse_file, parse_text, read_expected
from ptreclaim.envs.sim.replay import replay

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "kernel"
EXPERIMENTS = sorted(DATA.glob("*.script"))
SCRIPT = ROOT / "scripts" / "kernel_check.py"

KERNEL_OK, KERNEL_WHY = kernel_status()
needs_kernel = pytest.mark.skipif(not KERNEL_OK, reason=f"live kernel cannot serve: {KERNEL_WHY}")

#: The differential corpus: 240 non-THP scripts of every family, plus 100 THP
#: scripts of every family (THP scripts map shmem where the family maps ext4
#: files, and collapse shmem then refault it: R24; 18 of these 100 PMD-map a
#: file THP).  The THP scripts replay faster than the plain ones, so the test
#: takes what the earlier 240 + 80 (anon families only) took.
CORPUS_SEED = 20261126


def _corpus() -> list[tuple[str, str]]:
    plain = generate_corpus(CORPUS_SEED, 240)
    thp = generate_corpus(CORPUS_SEED + 1, 100, thp_share=1.0)
    return plain + [(f"thp-{n}", t) for n, t in thp]


def test_experiments_are_all_shipped() -> None:
    assert len(EXPERIMENTS) == 53
    for s in EXPERIMENTS:
        assert s.with_suffix(".expected").exists()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_model_replays_experiment_exactly(path: Path) -> None:
    script = parse_file(path)
    got = [o.delta_kib for o in replay(script, check=True)]
    assert got == read_expected(path.with_suffix(".expected"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_model_fails_where_the_kernel_failed(path: Path) -> None:
    """Ops the kernel reported as FAILED in RULES.md fail in the model too."""
    script = parse_file(path)
    for op, out in zip(script.ops, replay(script), strict=True):
        if out.failed is not None:
            assert op.mayfail, f"line {op.lineno} failed in the model: {out.failed}"


@needs_kernel
@pytest.mark.kernel
def test_generated_scripts_match_live_kernel() -> None:
    corpus = _corpus()
    assert len(corpus) >= 300
    bad = []
    for name, text in corpus:
        script = parse_text(text, name)
        d = compare_script(script, run_script(script), replay(script, check=True))
        if not d.ok:
            i, k, m = d.diffs[0]
            bad.append(f"{name} line {script.ops[i].lineno} {script.ops[i].text!r}: "
                       f"kernel {k.delta_kib} {k.failed} model {m.delta_kib} {m.failed}")
    assert not bad, f"{len(bad)} scripts differ:\n" + "\n".join(bad[:10])


def test_pre_614_kernel_frees_nothing_on_dontneed() -> None:
    script = parse_file(DATA / "E01_dontneed_aligned.script")
    got = [o.delta_kib for o in replay(script, pt_reclaim=False)]
    assert got == [0, 24, 24, 24, 24, 24, 24]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_simulate_prints_expected_format() -> None:
    path = DATA / "E22_fork.script"
    r = _cli("simulate", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == path.with_suffix(".expected").read_text()


@needs_kernel
@pytest.mark.kernel
def test_cli_kernel_and_compare() -> None:
    path = DATA / "E14_munmap_partial.script"
    r = _cli("kernel", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == path.with_suffix(".expected").read_text()
    r = _cli("compare", *map(str, EXPERIMENTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "53 of 53 scripts match" in r.stdout


@needs_kernel
@pytest.mark.kernel
def test_compare_flags_exactly_the_differing_ops() -> None:
    """The comparison flags exactly the ops that disagree: a pre-6.14 model
    against this kernel differs at the three DONTNEEDs that free tables."""
    script = parse_file(DATA / "E01_dontneed_aligned.script")
    kernel = run_script(script)
    model = replay(script, pt_reclaim=False)
    d = compare_script(script, kernel, model)
    assert not d.ok
    assert [i for i, _, _ in d.diffs] == [2, 5, 6]


@needs_kernel
@pytest.mark.kernel
def test_cli_compare_generated_thp_families() -> None:
    r = _cli("compare", "-q", "--generated", "6", "--seed", "3", "--thp",
             "--families", "file,virtio_mem")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("6 of 6 scripts match")


def test_cli_bad_families_is_one_line() -> None:
    r = _cli("compare", "--generated", "4", "--families", "file,nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "unknown family 'nope'" in r.stderr and "allocator" in r.stderr
    r = _cli("compare", "--generated", "4", "--thp", "--bogus")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--bogus" in r.stderr


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.script"
    bad.write_text("mmap 0 anon private 4M\ntouch 0 0 4M scribble\n")
    r = _cli("simulate", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert f"{bad}:2:" in r.stderr and "write, read" in r.stderr
    r = _cli("simulate", str(tmp_path / "missing.script"))
    assert r.returncode == 2 and "cannot read" in r.stderr and r.stderr.count("\n") == 1
    r = _cli("compare")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
