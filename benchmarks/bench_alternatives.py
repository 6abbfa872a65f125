#!/usr/bin/env python3
"""Benchmark of the techniques issue 13 weighed for the simulator core, side by side.

One representative piece of the model's per-tick work, implemented four ways and timed in
one run (rounds interleaved, variants rotated each round, medians of ``time.process_time``):

1. ``reference``: the pure-Python model (:class:`~ptreclaim.envs.sim.pagetable.AddressSpace`),
   driven op by op -- the exact model the live kernel checks;
2. ``numpy``: array state (entry kinds ``uint8[N, 512]``, per-table kind counts and
   classes), vectorised slice assignments and ``np.count_nonzero``, a Python loop over ops;
3. ``numba``: the same array state with the whole op loop in one ``@njit(cache=True)``
   function (skipped, with a message, when numba is not installed: it is not a project
   dependency);
4. ``compiled``: the C++ core (``envs.sim.fast._fast.FastAddressSpace``), one binding call
   per op.  The binding has no op-script replay in one call (``fast/check.py`` replays op by
   op too), so there is no batched row for it.

**Why this work.**  A cProfile of the reference env under random actions (issue 13, and
300 steps of the default id re-profiled for this benchmark) spends its own time in
``AddressSpace._fault_range`` (~40 % cumulative), ``_ensure_pte``, ``_reclass``/``census``
(``bytearray.count``), ``reclaim_table`` and ``_zap``: faults over ranges of a few tables,
the per-table class census, DONTNEED of sub-ranges and out-of-line reclaim of
reconstructable tables.  So the work here is exactly that, on one anonymous private
mapping of N 2 MiB slots (N = 1,000 and 30,000 by default):

* populate: one write touch with a 2 MiB stride (one present page in each of N tables);
* then a seeded op sequence, 8 ops a tick: write-fault a random page range (45 %),
  read-fault one (20 %: none entries become shared-zeropage entries), DONTNEED one (35 %;
  it frees a table only where one call covers its whole aligned 2 MiB, RULES.md R6/R7).
  Ranges are 1..16384 pages, log-uniform: an op reaches ~3 tables on average (the
  profiled env: 2.8 tables per fault);
* every 8 ticks a reclaim pass frees every empty and zero-only table;
* every tick the census is read: (tables, class counts, RSS, tables reclaimed so far).

Every variant keeps per-table entry-kind counts (present / none / zeropage) and the class
of each table, and must produce the same per-tick census, the same final tables with the
same counts, and the same allocation/free totals as the reference: a mismatch aborts the
run (a variant that computes something else is not a measurement).

The numpy and numba variants implement only what this work exercises (one VMA, anon
private, no THP, guards, files or VMA lookups), so they are a lower bound on what a full
port in that technique would cost; the reference and the compiled core run the full model.

Besides the table, numba's compile cost is measured: the first call in this process, and
in fresh processes with an empty and then a warm ``NUMBA_CACHE_DIR`` (does ``cache=True``
remove it at the next start?), next to a process that only imports numpy (the start-up
floor).

Reproduce::

    .venv/bin/python benchmarks/bench_alternatives.py           # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/bench_alternatives.py --quick   # smoke run, ~10 s
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from ptreclaim.envs.sim.fast._fast import FastAddressSpace
from ptreclaim.envs.sim.pagetable import (
    E_ANON,
    E_NONE,
    E_ZERO,
    ENTRIES,
    PAGE,
    PTE_SHIFT,
    PTE_SPAN,
    VM_READ,
    VM_WRITE,
    AddressSpace,
    TableClass,
)

#: Where the mapping starts: 1 TiB, so it is 2 MiB- and 1 GiB-aligned (slot = index + BASE_SLOT).
BASE = 1 << 40
BASE_SLOT = BASE >> PTE_SHIFT
#: log2 of entries per table: page index >> PAGE_BITS is the table index.
PAGE_BITS = 9
assert 1 << PAGE_BITS == ENTRIES

OP_WRITE, OP_READ, OP_DONTNEED = 0, 1, 2
#: Op mix (write, read, DONTNEED) and range lengths: 1..2**MAX_LOG_PAGES pages, log-uniform.
OP_MIX = (0.45, 0.20, 0.35)
MAX_LOG_PAGES = 14
#: 8 ops a tick; a reclaim pass every 8 ticks (the env decides every 10 ticks, and the
#: profile shows ~38 reclaim_table calls a tick: passes are frequent).
OPS_PER_TICK = 8
RECLAIM_EVERY = 8
RECLAIM_CLASSES = frozenset({TableClass.EMPTY, TableClass.ZERO})

# Counter slots of the array variants: one per table class, then:
NO_TABLE = 4  # the "class" of a slot without a PTE table (so one bincount covers both)
C_RSS, C_ALLOCATED, C_ZAP_FREED, C_RECLAIMED = 5, 6, 7, 8
N_COUNTERS = 9
EMPTY, ZERO, PINNED = int(TableClass.EMPTY), int(TableClass.ZERO), int(TableClass.PINNED)
#: Columns of the per-tick census: tables, 4 class counts, RSS pages, tables reclaimed.
TRAIL_COLUMNS = 7

IntArray = npt.NDArray[np.int64]


@dataclass
class Outcome:
    """What a variant computed: compared across variants, never timed."""

    trail: IntArray  # [ticks, TRAIL_COLUMNS]
    tables: IntArray  # [tables, 3]: table index, present entries, zeropage entries
    totals: tuple[int, int, int]  # tables allocated, freed (all paths), freed on zap

    def difference(self, other: Outcome) -> str:
        """"" when equal, else the first difference."""
        if not np.array_equal(self.trail, other.trail):
            t = int(np.flatnonzero((self.trail != other.trail).any(axis=1))[0])
            return f"tick {t}: census {self.trail[t].tolist()} != {other.trail[t].tolist()}"
        if not np.array_equal(self.tables, other.tables):
            return "final tables or their entry counts differ"
        if self.totals != other.totals:
            return f"totals (allocated, freed, freed on zap) {self.totals} != {other.totals}"
        return ""


@dataclass
class Run:
    """One timed run of one variant."""

    populate_s: float
    ops_s: float
    outcome: Outcome


def make_ops(n_tables: int, n_ops: int, seed: int) -> IntArray:
    """The seeded op sequence: rows (kind, first page index, pages), whole ticks only."""
    rng = np.random.default_rng([seed, n_tables])
    n_ops -= n_ops % OPS_PER_TICK
    kind = rng.choice(3, size=n_ops, p=OP_MIX)
    scale = rng.integers(0, MAX_LOG_PAGES + 1, size=n_ops)
    pages = rng.integers(1, (1 << scale) + 1)
    pages = np.minimum(pages, n_tables * ENTRIES)
    first = rng.integers(0, n_tables * ENTRIES - pages + 1)
    return np.stack([kind, first, pages], axis=1).astype(np.int64)


# --------------------------------------------------------------------------- the models

def _trail_row(tables: int, counts: tuple[int, ...], rss: int, reclaimed: int
               ) -> tuple[int, ...]:
    return (tables, *counts, rss, reclaimed)


def _model_outcome(trail: list[tuple[int, ...]], tables: list[tuple[int, bytes]],
                   stats: dict[str, int]) -> Outcome:
    rows = [(slot - BASE_SLOT, e.count(E_ANON), e.count(E_ZERO)) for slot, e in tables]
    return Outcome(np.asarray(trail, dtype=np.int64),
                   np.asarray(rows, dtype=np.int64).reshape(-1, 3),
                   (stats["pte_allocated"], stats["pte_freed"], stats["pte_reclaimed_on_zap"]))


def _ticks(op_list: list[list[int]]) -> Iterator[tuple[int, list[list[int]]]]:
    """(tick number, that tick's op rows) for every whole tick of ``op_list`` (the ops as
    a list, converted before the clock starts)."""
    for tick in range(len(op_list) // OPS_PER_TICK):
        yield tick, op_list[tick * OPS_PER_TICK:(tick + 1) * OPS_PER_TICK]


def _populate_model(mm: AddressSpace | FastAddressSpace, n_tables: int) -> float:
    """Map the N slots and write one page in each (the reference and the compiled core
    share this API); the CPU seconds it took, garbage collected before."""
    gc.collect()
    t0 = time.process_time()
    assert mm.mmap(BASE, n_tables * PTE_SPAN, prot=VM_READ | VM_WRITE, fixed=True) is None
    assert mm.touch(BASE, n_tables * PTE_SPAN, True, PTE_SPAN) is None
    return time.process_time() - t0


def _apply_to_model(mm: AddressSpace | FastAddressSpace, tick_ops: list[list[int]]) -> None:
    """One tick's ops on a model address space, one call per op."""
    for kind, first, pages in tick_ops:
        if kind == OP_DONTNEED:
            mm.madvise(BASE + first * PAGE, pages * PAGE, "DONTNEED")
        else:
            mm.touch(BASE + first * PAGE, pages * PAGE, kind == OP_WRITE)


def run_reference(n_tables: int, ops: IntArray) -> Run:
    """The pure-Python model, one call per op; reclaim walks its incremental class sets."""
    op_list = ops.tolist()
    mm = AddressSpace(pt_reclaim=True, thp_disabled=True)
    populate_s = _populate_model(mm, n_tables)
    t1 = time.process_time()
    trail = []
    reclaimed = 0
    for tick, tick_ops in _ticks(op_list):
        _apply_to_model(mm, tick_ops)
        if (tick + 1) % RECLAIM_EVERY == 0:
            for cls in RECLAIM_CLASSES:
                for slot in list(mm.tables_in_class(cls)):
                    reclaimed += mm.reclaim_table(slot, RECLAIM_CLASSES) >= 0
        trail.append(_trail_row(len(mm.pte), mm.class_counts(), mm.rss_pages, reclaimed))
    t2 = time.process_time()
    tables = [(slot, bytes(mm.pte[slot].entries)) for slot in sorted(mm.pte)]
    return Run(populate_s, t2 - t1, _model_outcome(trail, tables, vars(mm.stats)))


def run_compiled(n_tables: int, ops: IntArray) -> Run:
    """The C++ core through its binding, one call per op.  The binding does not list the
    tables of a class, so the driver remembers the slots that read faults and DONTNEEDs
    reached since the last pass: only those can have become empty or zero-only (a write
    leaves every table it reaches with a present page)."""
    op_list = ops.tolist()
    mm = FastAddressSpace(pt_reclaim=True, thp_disabled=True)
    populate_s = _populate_model(mm, n_tables)
    t1 = time.process_time()
    trail = []
    reclaimed = 0
    candidates: set[int] = set()
    for tick, tick_ops in _ticks(op_list):
        _apply_to_model(mm, tick_ops)
        for kind, first, pages in tick_ops:
            if kind != OP_WRITE:
                candidates.update(range(BASE_SLOT + (first >> PAGE_BITS),
                                        BASE_SLOT + ((first + pages - 1) >> PAGE_BITS) + 1))
        if (tick + 1) % RECLAIM_EVERY == 0:
            for slot in candidates:
                reclaimed += mm.reclaim_table(slot, RECLAIM_CLASSES) >= 0
            candidates.clear()
        trail.append(_trail_row(mm.n_pte, mm.class_counts(), mm.rss_pages, reclaimed))
    t2 = time.process_time()
    tables = [(row[0], row[1]) for row in mm.state()["pte"]]
    return Run(populate_s, t2 - t1, _model_outcome(trail, tables, mm.stats()))


# ------------------------------------------------------------------- array state (2, 3)

class ArrayState:
    """Entry kinds ``uint8[N, 512]``, per-table present/zeropage counts, per-table class
    (``NO_TABLE`` where no table exists) and the counters (``C_*``)."""

    def __init__(self, n_tables: int) -> None:
        self.ent = np.zeros((n_tables, ENTRIES), dtype=np.uint8)
        self.flat = self.ent.reshape(-1)  # a view: page index -> entry
        self.cls = np.full(n_tables, NO_TABLE, dtype=np.int64)
        self.n_anon = np.zeros(n_tables, dtype=np.int64)
        self.n_zero = np.zeros(n_tables, dtype=np.int64)
        self.ctr = np.zeros(N_COUNTERS, dtype=np.int64)
        self.ctr[NO_TABLE] = n_tables

    def census(self) -> tuple[int, ...]:
        c = self.ctr
        return _trail_row(len(self.cls) - int(c[NO_TABLE]), tuple(int(x) for x in c[:4]),
                          int(c[C_RSS]), int(c[C_RECLAIMED]))

    def outcome(self, trail: IntArray) -> Outcome:
        idx = np.flatnonzero(self.cls != NO_TABLE)
        c = self.ctr
        return Outcome(trail, np.stack([idx, self.n_anon[idx], self.n_zero[idx]], axis=1),
                       (int(c[C_ALLOCATED]), int(c[C_ZAP_FREED] + c[C_RECLAIMED]),
                        int(c[C_ZAP_FREED])))


def _np_populate(st: ArrayState) -> None:
    st.ent[:, 0] = E_ANON
    st.n_anon += 1
    st.cls[:] = PINNED
    n = len(st.cls)
    st.ctr[PINNED] += n
    st.ctr[NO_TABLE] -= n
    st.ctr[C_RSS] += n
    st.ctr[C_ALLOCATED] += n


def _np_reclass(st: ArrayState, lo: int, hi: int, old: IntArray, keep: Any) -> None:
    """Recount tables [lo, hi] and move them between classes; ``keep`` says which of them
    have a table afterwards (the others get ``NO_TABLE``)."""
    block = st.ent[lo:hi + 1]
    na = np.count_nonzero(block == E_ANON, axis=1)
    nz = np.count_nonzero(block == E_ZERO, axis=1)
    new = np.where(keep, np.where(na > 0, PINNED, np.where(nz > 0, ZERO, EMPTY)), NO_TABLE)
    st.cls[lo:hi + 1] = new
    st.ctr[:5] += np.bincount(new, minlength=5) - np.bincount(old, minlength=5)
    st.ctr[C_RSS] += na.sum() - st.n_anon[lo:hi + 1].sum()
    st.n_anon[lo:hi + 1] = na
    st.n_zero[lo:hi + 1] = nz


def _np_fault(st: ArrayState, first: int, pages: int, write: bool) -> None:
    lo, hi = first >> PAGE_BITS, (first + pages - 1) >> PAGE_BITS
    seg = st.flat[first:first + pages]
    if write:
        seg[:] = E_ANON
    else:
        seg[seg == E_NONE] = E_ZERO
    old = st.cls[lo:hi + 1].copy()
    st.ctr[C_ALLOCATED] += np.count_nonzero(old == NO_TABLE)
    _np_reclass(st, lo, hi, old, True)


def _np_dontneed(st: ArrayState, first: int, pages: int) -> None:
    lo, hi = first >> PAGE_BITS, (first + pages - 1) >> PAGE_BITS
    old = st.cls[lo:hi + 1].copy()
    exists = old != NO_TABLE
    if not exists.any():
        return  # nothing mapped: the model zaps existing tables only
    st.flat[first:first + pages] = E_NONE  # slots without a table hold only none entries
    # Tables whose whole aligned 2 MiB this one call covers are freed (R6).
    covered = np.zeros(hi - lo + 1, dtype=bool)
    covered[-(-first // ENTRIES) - lo:(first + pages) // ENTRIES - lo] = True
    st.ctr[C_ZAP_FREED] += np.count_nonzero(exists & covered)
    _np_reclass(st, lo, hi, old, exists & ~covered)


def _np_reclaim(st: ArrayState) -> None:
    idx = np.flatnonzero(st.cls <= ZERO)  # EMPTY and ZERO
    st.ent[idx] = E_NONE
    st.n_zero[idx] = 0
    st.cls[idx] = NO_TABLE
    st.ctr[C_RECLAIMED] += len(idx)
    st.ctr[NO_TABLE] += st.ctr[EMPTY] + st.ctr[ZERO]
    st.ctr[EMPTY] = st.ctr[ZERO] = 0


def run_numpy(n_tables: int, ops: IntArray) -> Run:
    """Array state, vectorised per op, a Python loop over the ops."""
    op_list = ops.tolist()
    st = ArrayState(n_tables)
    gc.collect()
    t0 = time.process_time()
    _np_populate(st)
    t1 = time.process_time()
    trail = []
    for tick, tick_ops in _ticks(op_list):
        for kind, first, pages in tick_ops:
            if kind == OP_DONTNEED:
                _np_dontneed(st, first, pages)
            else:
                _np_fault(st, first, pages, kind == OP_WRITE)
        if (tick + 1) % RECLAIM_EVERY == 0:
            _np_reclaim(st)
        trail.append(st.census())
    t2 = time.process_time()
    return Run(t1 - t0, t2 - t1, st.outcome(np.asarray(trail, dtype=np.int64)))


# numba compiles these two (nopython mode): plain loops over the same array state,
# updating the counts entry by entry instead of recounting.

def _kernel_populate(ent: Any, cls: Any, n_anon: Any, ctr: Any) -> None:
    for s in range(cls.shape[0]):
        if cls[s] == NO_TABLE:
            ctr[C_ALLOCATED] += 1
            ctr[NO_TABLE] -= 1
        else:
            ctr[cls[s]] -= 1
        if ent[s, 0] != E_ANON:
            ent[s, 0] = E_ANON
            n_anon[s] += 1
            ctr[C_RSS] += 1
        cls[s] = PINNED
        ctr[PINNED] += 1


def _kernel_ops(ent: Any, cls: Any, n_anon: Any, n_zero: Any, ctr: Any, ops: Any,
                trail: Any) -> None:
    n_tables = cls.shape[0]
    for tick in range(trail.shape[0]):
        for o in range(tick * OPS_PER_TICK, (tick + 1) * OPS_PER_TICK):
            kind = ops[o, 0]
            first = ops[o, 1]
            end = first + ops[o, 2]
            for s in range(first >> PAGE_BITS, ((end - 1) >> PAGE_BITS) + 1):
                base = s * ENTRIES
                a = max(first, base) - base
                b = min(end, base + ENTRIES) - base
                old = cls[s]
                if kind == OP_DONTNEED:
                    if old == NO_TABLE:
                        continue
                    if a == 0 and b == ENTRIES:  # whole aligned 2 MiB: zapped and freed (R6)
                        for i in range(ENTRIES):
                            ent[s, i] = E_NONE
                        ctr[C_RSS] -= n_anon[s]
                        n_anon[s] = 0
                        n_zero[s] = 0
                        cls[s] = NO_TABLE
                        ctr[old] -= 1
                        ctr[NO_TABLE] += 1
                        ctr[C_ZAP_FREED] += 1
                        continue
                    for i in range(a, b):
                        e = ent[s, i]
                        if e == E_ANON:
                            n_anon[s] -= 1
                            ctr[C_RSS] -= 1
                        elif e == E_ZERO:
                            n_zero[s] -= 1
                        ent[s, i] = E_NONE
                else:
                    if old == NO_TABLE:
                        ctr[C_ALLOCATED] += 1
                    if kind == OP_WRITE:
                        for i in range(a, b):
                            e = ent[s, i]
                            if e != E_ANON:
                                if e == E_ZERO:
                                    n_zero[s] -= 1
                                n_anon[s] += 1
                                ctr[C_RSS] += 1
                                ent[s, i] = E_ANON
                    else:
                        for i in range(a, b):
                            if ent[s, i] == E_NONE:
                                ent[s, i] = E_ZERO
                                n_zero[s] += 1
                new = PINNED if n_anon[s] > 0 else (ZERO if n_zero[s] > 0 else EMPTY)
                if new != old:
                    ctr[old] -= 1
                    ctr[new] += 1
                    cls[s] = new
        if (tick + 1) % RECLAIM_EVERY == 0:
            for s in range(n_tables):
                c = cls[s]
                if c <= ZERO:  # EMPTY (0) or ZERO (1)
                    for i in range(ENTRIES):
                        ent[s, i] = E_NONE
                    n_zero[s] = 0
                    cls[s] = NO_TABLE
                    ctr[c] -= 1
                    ctr[NO_TABLE] += 1
                    ctr[C_RECLAIMED] += 1
        trail[tick, 0] = n_tables - ctr[NO_TABLE]
        for k in range(4):
            trail[tick, 1 + k] = ctr[k]
        trail[tick, 5] = ctr[C_RSS]
        trail[tick, 6] = ctr[C_RECLAIMED]


class NumbaKernels:
    """The two kernels compiled by numba (``@njit(cache=True)``), compiled on first call."""

    def __init__(self) -> None:
        numba = importlib.import_module("numba")
        self.populate = numba.njit(cache=True)(_kernel_populate)
        self.ops = numba.njit(cache=True)(_kernel_ops)

    def cache_hits(self) -> int:
        return sum(sum(k.stats.cache_hits.values()) for k in (self.populate, self.ops))

    def run(self, n_tables: int, ops: IntArray) -> Run:
        """Array state, the whole op loop inside one compiled function."""
        st = ArrayState(n_tables)
        trail = np.zeros((len(ops) // OPS_PER_TICK, TRAIL_COLUMNS), dtype=np.int64)
        gc.collect()
        t0 = time.process_time()
        self.populate(st.ent, st.cls, st.n_anon, st.ctr)
        t1 = time.process_time()
        self.ops(st.ent, st.cls, st.n_anon, st.n_zero, st.ctr, ops, trail)
        t2 = time.process_time()
        return Run(t1 - t0, t2 - t1, st.outcome(trail))


def numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


# ----------------------------------------------------------------- numba start-up probes

PROBE_TABLES, PROBE_OPS = 8, 64


def numba_probe(mode: str) -> dict[str, Any]:
    """Run in a fresh process: the CPU seconds of ``import numba`` and of the first calls
    of both kernels on a tiny input (compile, or load from ``NUMBA_CACHE_DIR``).  ``mode``
    ``floor`` only imports what every variant imports (the start-up floor)."""
    if mode == "floor":
        return {}
    t0 = time.process_time()
    kernels = NumbaKernels()
    t1 = time.process_time()
    kernels.run(PROBE_TABLES, make_ops(PROBE_TABLES, PROBE_OPS, 0))
    t2 = time.process_time()
    return {"import_s": t1 - t0, "first_call_s": t2 - t1, "cache_hits": kernels.cache_hits()}


def run_probe(mode: str, cache_dir: str) -> tuple[float, dict[str, Any]]:
    """(wall seconds of the whole child process, what it measured)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--numba-probe", mode], env=env,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- main

def _positive(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _sizes(text: str) -> list[int]:
    return [_positive(part) for part in text.split()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--sizes", type=_sizes, default=None,
                    help='PTE tables of the address space, e.g. "1000 30000" (the default)')
    ap.add_argument("--ops", type=_positive, default=None,
                    help="ops per run (default 50000; --quick 2000)")
    ap.add_argument("--rounds", type=_positive, default=None,
                    help="interleaved rounds (default 5; --quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--numba-probe", choices=("floor", "numba"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.numba_probe:
        print(json.dumps(numba_probe(args.numba_probe)))
        return 0
    sizes = args.sizes or ([200, 2000] if args.quick else [1000, 30000])
    n_ops = args.ops or (2000 if args.quick else 50000)
    rounds = args.rounds or (1 if args.quick else 5)
    if n_ops < OPS_PER_TICK * RECLAIM_EVERY:
        print(f"--ops {n_ops}: too few for one reclaim pass; give at least "
              f"{OPS_PER_TICK * RECLAIM_EVERY}", file=sys.stderr)
        return 2
    console = Console(width=max(Console().width, 110))
    console.print(f"python {platform.python_version()}, numpy {np.__version__}, "
                  f"{platform.platform()}, {os.cpu_count()} CPUs; reproduce: "
                  f"{' '.join([sys.executable, *sys.argv])}")

    variants: dict[str, Callable[[int, IntArray], Run]] = {
        "reference": run_reference, "numpy": run_numpy}
    compile_rows: list[tuple[str, str]] = []
    if numba_installed():
        t0 = time.process_time()
        kernels = NumbaKernels()
        t1 = time.process_time()
        numba_version = importlib.import_module("numba").__version__
        kernels.run(PROBE_TABLES, make_ops(PROBE_TABLES, PROBE_OPS, args.seed))
        t2 = time.process_time()
        source = "loaded from the cache" if kernels.cache_hits() else "compiled"
        compile_rows += [
            (f"import numba {numba_version} (this process)", f"{t1 - t0:.2f} s"),
            (f"first call of both kernels, this process ({source})", f"{t2 - t1:.2f} s")]
        variants["numba"] = kernels.run
    else:
        console.print("numba not installed: pip install numba")
    variants["compiled"] = run_compiled

    op_seqs = {n: make_ops(n, n_ops, args.seed) for n in sizes}
    for n, ops in op_seqs.items():
        reach = ((ops[:, 1] + ops[:, 2] - 1) >> PAGE_BITS) - (ops[:, 1] >> PAGE_BITS) + 1
        console.print(f"N={n:,}: {len(ops):,} ops reaching {reach.mean():.2f} tables each on "
                      f"average, {len(ops) // OPS_PER_TICK:,} ticks, "
                      f"{len(ops) // OPS_PER_TICK // RECLAIM_EVERY:,} reclaim passes")
    names = list(variants)
    times: dict[tuple[str, int], list[Run]] = {(v, n): [] for v in names for n in sizes}
    expected: dict[int, Outcome] = {}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in sizes:
            for name in order:
                run = variants[name](n, op_seqs[n])
                want = expected.setdefault(n, run.outcome)
                problem = run.outcome.difference(want)
                if problem:
                    console.print(f"[red]N={n}: {name} computes something else than the "
                                  f"reference ({problem})[/red]")
                    return 1
                times[name, n].append(run)
        console.print(f"round {r + 1}/{rounds} done")

    table = Table(title=f"{n_ops - n_ops % OPS_PER_TICK} ops, {rounds} rounds (median "
                        "CPU time); every variant produced the identical census and tables")
    for col in ("variant", "N tables", "populate ms", "ops ms", "us/op", "total ms",
                "ref/variant", "variant/compiled"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for n in sizes:
        med = {v: (statistics.median(x.populate_s for x in times[v, n]),
                   statistics.median(x.ops_s for x in times[v, n])) for v in names}
        ref, fast = sum(med["reference"]), sum(med["compiled"])
        for v in names:
            pop, ops_s = med[v]
            total = pop + ops_s
            table.add_row(v, f"{n:,}", f"{pop * 1e3:.2f}", f"{ops_s * 1e3:.1f}",
                          f"{ops_s / len(op_seqs[n]) * 1e6:.2f}", f"{total * 1e3:.1f}",
                          f"{ref / total:.1f}x", f"{total / fast:.2f}x")
        table.add_section()
    console.print(table)
    final = expected[sizes[-1]].trail[-1]
    console.print(f"N={sizes[-1]:,} at the end: {final[0]:,} tables, classes (empty, zero, "
                  f"file, pinned) {tuple(final[1:5].tolist())}, RSS {final[5]:,} pages, "
                  f"{final[6]:,} tables reclaimed by the passes")

    if numba_installed():
        with tempfile.TemporaryDirectory() as cache_dir:
            floor_wall, _ = run_probe("floor", cache_dir)
            cold_wall, cold = run_probe("numba", cache_dir)
            warm_wall, warm = run_probe("numba", cache_dir)
        compile_rows += [
            ("fresh process, empty cache: import numba", f"{cold['import_s']:.2f} s"),
            ("fresh process, empty cache: first call (compile)",
             f"{cold['first_call_s']:.2f} s (cache hits {cold['cache_hits']})"),
            ("next process, same cache: import numba", f"{warm['import_s']:.2f} s"),
            ("next process, same cache: first call (cache=True load)",
             f"{warm['first_call_s']:.2f} s (cache hits {warm['cache_hits']})"),
            ("wall time of a process: no numba (start-up floor)", f"{floor_wall:.2f} s"),
            ("wall time of a process: numba, empty cache", f"{cold_wall:.2f} s"),
            ("wall time of a process: numba, warm cache", f"{warm_wall:.2f} s"),
        ]
        ct = Table(title="numba compile and start-up cost (CPU s inside the process; wall s "
                         "of the whole process)")
        ct.add_column("what")
        ct.add_column("time", justify="right")
        for row in compile_rows:
            ct.add_row(*row)
        console.print(ct)
    return 0


if __name__ == "__main__":
    sys.exit(main())
