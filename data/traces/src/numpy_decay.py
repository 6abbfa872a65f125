"""numpy_decay: numpy arrays of tens of MiB that grow, churn and shrink.

    python numpy_decay.py SECONDS

Meant to run under jemalloc in its decay mode, as ``data/traces/record.sh``
does::

    LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=dirty_decay_ms:1000,muzzy_decay_ms:1000 python numpy_decay.py 40

numpy allocates array data with ``malloc`` (and asks for transparent huge
pages, ``MADV_HUGEPAGE``, on arrays of 4 MiB or more), so every array of
8..48 MiB is one jemalloc "large" extent: its size class plus, with
jemalloc's default ``cache_oblivious``, one padding page.  Requests of
``oversize_threshold`` (8 MiB) or more live in jemalloc's oversize arena,
whose decay jemalloc sets to 0: a freed extent is purged at once
(``MADV_DONTNEED`` over the whole extent, padding page included).  The
smaller allocations (the temporaries below, Python's own) decay by the
settings: dirty pages become muzzy after ``dirty_decay_ms`` (``MADV_FREE``)
and are purged after ``muzzy_decay_ms`` (``MADV_DONTNEED``), when the
program allocates, as a busy process does.

Phases, by share of SECONDS (fixed seed, so the allocation sequence is the
same every run; timing is not):

* 0-30 %: grow to about 480 MiB of live arrays, every page written;
* 30-65 %: churn: each step frees a random array and allocates one of a new
  size; a third of them are written only in their first half (a buffer
  sized for the worst case), some are built from temporaries (``a * 2 + 1``);
* 65-85 %: shrink: one array freed per step until 3 are left, while small
  temporaries keep the allocator ticking;
* 85-100 %: near idle: small temporaries only, so decay purges the rest.
"""

from __future__ import annotations

import sys
import time

import numpy as np

MiB = 1 << 20
SIZES_MIB = (8, 12, 16, 24, 32, 48)
TARGET = 480 * MiB
STEP_S = 0.03


def array(rng: np.random.Generator, partial: bool) -> np.ndarray:
    """A new float64 array of one of SIZES_MIB (plus up to 1 MiB), written
    in full or, with ``partial``, in its first half only."""
    nbytes = int(rng.choice(SIZES_MIB)) * MiB + int(rng.integers(0, 256)) * 4096
    a = np.empty(nbytes // 8)
    if partial:
        a[: a.size // 2] = 1.0
    else:
        a.fill(1.0)
    return a


def tick(rng: np.random.Generator) -> None:
    """Small temporaries (up to 1 MiB): allocator activity that drives decay."""
    for _ in range(20):
        b = np.ones(int(rng.integers(1, 128)) * 1024)
        b.sum()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 40.0
    rng = np.random.default_rng(15)
    live: list[np.ndarray] = []
    t0 = time.monotonic()

    def elapsed() -> float:
        return (time.monotonic() - t0) / seconds

    while elapsed() < 0.30:
        if sum(a.nbytes for a in live) < TARGET:
            live.append(array(rng, partial=False))
        tick(rng)
        time.sleep(STEP_S)
    while elapsed() < 0.65:
        live.pop(int(rng.integers(len(live))))
        if rng.random() < 0.25 and live:
            src = live[int(rng.integers(len(live)))]
            live.append(src * 2.0 + 1.0)  # one temporary, freed at once
        else:
            live.append(array(rng, partial=rng.random() < 1 / 3))
        tick(rng)
        time.sleep(STEP_S)
    while elapsed() < 0.85:
        if len(live) > 3:
            live.pop(int(rng.integers(len(live))))
        tick(rng)
        time.sleep(2 * STEP_S)
    while elapsed() < 1.0:
        tick(rng)
        time.sleep(4 * STEP_S)


if __name__ == "__main__":
    main()
