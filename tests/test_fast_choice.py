"""The compiled core's ``Generator.choice(cand, size=k, replace=False)`` against numpy's:
the same values and the generator left in the same state, over many seeds and sizes --
both of numpy's algorithms (Floyd's sampling, and the partial shuffle of a large sample of
a large population) and the sizes at the edges between them."""

from __future__ import annotations

import numpy as np
import pytest

from ptreclaim.envs.sim.fast._fast import callback_counts, choice_noreplace

#: (population, sample) pairs: tiny, the workloads' usual, Floyd's hash set at a power of
#: two, and around numpy's switch to the partial shuffle (population > 10,000 and sample >
#: population // 50).
SIZES = [(1, 0), (1, 1), (2, 1), (2, 2), (5, 5), (7, 3), (50, 10), (100, 99), (853, 853),
         (1000, 100), (4096, 27), (10000, 201), (10000, 10000), (10001, 200), (10001, 201),
         (10049, 200), (10050, 201), (10050, 202), (20000, 400), (20000, 401), (30000, 7),
         (50000, 12345), (50000, 50000)]


@pytest.mark.parametrize(("n", "k"), SIZES)
def test_choice_noreplace_is_numpys(n: int, k: int) -> None:
    for seed in range(60 if n <= 20000 else 8):
        mine, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
        # Candidates as the workloads pass them: distinct, ascending, not 0..n-1.
        cand = np.arange(n, dtype=np.int64) * 3 + 17
        before = callback_counts()[0]
        got = choice_noreplace(mine, cand, k)
        assert callback_counts()[0] == before + 1
        want = theirs.choice(cand, size=k, replace=False)
        assert got.dtype == np.int64 and got.tolist() == want.tolist(), (n, k, seed)
        assert mine.bit_generator.state == theirs.bit_generator.state, (n, k, seed)


def test_choice_noreplace_in_a_stream() -> None:
    """Interleaved with other draws from one generator, many random sizes: the streams
    stay equal."""
    mine, theirs = np.random.default_rng(2026), np.random.default_rng(2026)
    sizer = np.random.default_rng(7)
    for _ in range(2000):
        n = int(sizer.integers(1, 3000))
        k = int(sizer.integers(0, n + 1))
        cand = np.sort(sizer.choice(10**6, size=n, replace=False)).astype(np.int64)
        assert choice_noreplace(mine, cand, k).tolist() == \
            theirs.choice(cand, size=k, replace=False).tolist()
        assert mine.integers(0, 2**63) == theirs.integers(0, 2**63)


def test_choice_noreplace_rejects_a_sample_larger_than_the_population() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[0, 3\]"):
        choice_noreplace(np.random.default_rng(0), np.arange(3, dtype=np.int64), 4)
