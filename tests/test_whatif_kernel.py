"""The refcount design's rule on the live kernel (envs/kernel/zapcheck.py, ``ptoracle -z``).

After every zap (``MADV_DONTNEED[_LOCKED]``, ``munmap``) the tables Qi Zheng's refcount
design would free are, on the model, those left with every entry none; on the kernel,
``PAGEMAP_SCAN`` shows which pages still hold an entry.  Both answers must be the same, and
so must VmPTE.  Skips where the kernel cannot serve as the oracle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ptreclaim.envs.kernel.check import load_scripts
from ptreclaim.envs.kernel.oracle import kernel_status
from ptreclaim.envs.kernel.zapcheck import ZapAnswer, check_script
from ptreclaim.envs.sim.opscript import parse_file

DATA = Path(__file__).parent / "data"
PROBE = DATA / "whatif" / "refcount_zaps.script"
CORPUS = sorted((DATA / "kernel").glob("*.script"))

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", autouse=True)
def kernel() -> None:
    ok, why = kernel_status()
    if not ok:
        pytest.skip(f"kernel oracle unavailable: {why}")


def _explain(answers: list[ZapAnswer]) -> str:
    bad = [a for a in answers if not a.ok]
    return "; ".join(f"op {a.index} {a.op}: kernel frees {a.kernel_frees}, model "
                     f"{a.model_frees}, VmPTE {a.kernel_delta}/{a.model_delta}, counts "
                     f"{a.count_diffs}" for a in bad[:5])


def test_the_probe_script() -> None:
    """Partial zaps that empty tables (which 6.14 keeps), zero-page, guard-marker, shared
    file, locked and two-VMA slots, and partial munmaps: the frees are these, on both."""
    answers = check_script(parse_file(PROBE))
    assert all(a.ok for a in answers), _explain(answers)
    assert all(a.kernel_used == a.model_used for a in answers)  # anon and shared-file writes
    frees = [f for a in answers for f in a.model_frees]
    assert frees == [(0, 0), (0, 2048), (0, 6144), (1, 0), (2, 2048), (3, 0), (4, 0), (5, 0)]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_the_kernel_corpus(path: Path) -> None:
    answers = check_script(parse_file(path))
    assert all(a.ok for a in answers), _explain(answers)


@pytest.mark.slow
def test_generated_scripts() -> None:
    """Seeded generated scripts of every family, THP ones included."""
    answers = [a for s in load_scripts([], 24, seed=18) for a in check_script(s)]
    assert len(answers) > 100
    assert all(a.ok for a in answers), _explain(answers)
