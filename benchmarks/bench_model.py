#!/usr/bin/env python3
"""Benchmark of the page-table model (``envs/sim/pagetable.py``).

Three measurements, all printed in one run:

1. **Replay throughput**: ops per second replaying a fixed-seed corpus of generated op
   scripts (``scriptgen.generate_corpus``) with ``replay.replay``, in total and per family.
2. **Size independence** (DESIGN.md section 4: "a 128 TiB sparse mapping must be as cheap
   to hold as a 1 GiB one"): the same ops, on the same handful of populated tables, timed
   side by side on an address space holding a 1 GiB mapping and on one holding a ~127 TiB
   ``MAP_NORESERVE`` mapping.  Each op is timed in batches (``timeit``, GC off); the two
   address spaces alternate batch by batch (ABAB, then BABA), and the table shows the
   median per-op time and the ratio 128 TiB / 1 GiB.  An op whose ratio exceeds the
   threshold gets a size sweep that shows how its cost grows with the mapped size.
3. **Memory**: tables held and ``tracemalloc`` bytes (current and peak) for building each
   of the two address spaces: memory should follow populated tables, not mapped size.

The machine is shared and noisy, so only ratios measured side by side in one run mean
anything; absolute numbers are for orientation.  The run always exits 0: the verdict
line says whether every ratio stayed within the threshold.

Usage::

    .venv/bin/python benchmarks/bench_model.py            # ~1 min
    .venv/bin/python benchmarks/bench_model.py --quick    # ~5 s smoke run
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from rich.console import Console
from rich.table import Table

from ptreclaim.envs.kernel.scriptgen import FAMILIES, generate_corpus
from ptreclaim.envs.sim.opscript import GiB, MiB, Script, TiB, parse_text
from ptreclaim.envs.sim.pagetable import (
    PAGE,
    PMD_SPAN,
    PTE_SPAN,
    TASK_SIZE,
    VM_READ,
    VM_WRITE,
    AddressSpace,
)
from ptreclaim.envs.sim.replay import replay

#: Lowest address a process may map (vm.mmap_min_addr's usual default).
MMAP_MIN_ADDR = 64 * 1024
#: Populated 2 MiB slots just below the work area: the "handful of pages" of setup.
SETUP_PAGES = 8
#: First PTE slot (relative to the work area) of the touch / DONTNEED pool.
POOL_FIRST = 16
#: The pool must stay inside the work area's PMD table (256 slots above its middle).
POOL_MAX = 256 - POOL_FIRST


@dataclass(frozen=True)
class Layout:
    """One address space of the side-by-side comparison: a single anon private mapping."""

    label: str
    base: int
    size: int
    noreserve: bool

    @property
    def work(self) -> int:
        """Address where the measured ops happen: the middle of a PMD table (1 GiB) in
        the middle of the mapping, so every op sees the same table neighbourhood."""
        mid = (self.base + self.size // 2) & ~(PMD_SPAN - 1)
        return max(mid, self.base & ~(PMD_SPAN - 1)) + PMD_SPAN // 2

    def describe(self) -> str:
        flags = "anon private" + (" norsv" if self.noreserve else "")
        return f"{self.label}: [{self.base:#x}, {self.base + self.size:#x}) {flags}"


def _size_label(size: int) -> str:
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB")):
        if size >= unit:
            return f"{size / unit:g} {name}"
    return f"{size} B"


def small_layout() -> Layout:
    """1 GiB at 16 TiB (where op scripts put ID 0)."""
    return Layout("1 GiB", 16 * TiB, GiB, noreserve=False)


def huge_layout(size: int = 127 * TiB, label: str | None = None) -> Layout:
    """A sparse norsv mapping of ``size`` starting just above 0 (below 128 TiB)."""
    assert MMAP_MIN_ADDR + size <= TASK_SIZE
    return Layout(label or _size_label(size), MMAP_MIN_ADDR, size, noreserve=True)


def setup_pages(layout: Layout) -> list[int]:
    """The pages touched (written) at setup: one in each of the SETUP_PAGES 2 MiB slots
    below the work area, at a different offset in each."""
    return [layout.work - k * PTE_SPAN + k * PAGE for k in range(1, SETUP_PAGES + 1)]


def build(layout: Layout) -> AddressSpace:
    """Map ``layout`` and write its setup pages."""
    mm = AddressSpace()
    err = mm.mmap(layout.base, layout.size, noreserve=layout.noreserve)
    if err:
        raise RuntimeError(f"mmap of {layout.describe()} failed: {err}")
    for addr in setup_pages(layout):
        err = mm.touch(addr, PAGE, write=True)
        if err:
            raise RuntimeError(f"touch {addr:#x} failed: {err}")
    return mm


def snapshot(mm: AddressSpace) -> tuple[int, int, int, int, tuple[int, int, int, int]]:
    """What a state-restoring batch must leave unchanged."""
    return len(mm.vmas), len(mm.pte), len(mm.pmd), len(mm.pud), mm.class_counts()


# ------------------------------------------------------------------------ op batches

#: A batch runs ``n`` ops of one kind on an address space laid out as ``Layout``.
Batch = Callable[[AddressSpace, Layout, int], None]


def _check(err: str | None, what: str) -> None:
    if err:
        raise RuntimeError(f"{what} failed: {err}")


def touch_alloc(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(a) write one page in each of ``n`` empty 2 MiB slots: each allocates a PTE table."""
    pool = lay.work + POOL_FIRST * PTE_SPAN
    for i in range(n):
        mm.touch(pool + i * PTE_SPAN + PAGE, PAGE, True)


def dontneed_2m(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(b) MADV_DONTNEED of the ``n`` aligned 2 MiB slots of (a): each frees its table."""
    pool = lay.work + POOL_FIRST * PTE_SPAN
    for i in range(n):
        mm.madvise(pool + i * PTE_SPAN, PTE_SPAN, "DONTNEED")


def dontneed_4k(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(c) MADV_DONTNEED of one 4 KiB page in a populated table (the table stays)."""
    addr = setup_pages(lay)[0]
    for _ in range(n):
        mm.madvise(addr, PAGE, "DONTNEED")


def mprotect_pair(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(d) mprotect one page in the middle to r and back to rw (split, then merge)."""
    addr = lay.work + 3 * PAGE
    for _ in range(n):
        mm.mprotect(addr, PAGE, VM_READ)
        mm.mprotect(addr, PAGE, VM_READ | VM_WRITE)


def hole_pair(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(e) munmap an aligned 2 MiB hole (no table of its own) in the middle of the
    mapping, then mmap it again (split and floor/ceiling checks, then a three-way merge)."""
    addr = lay.work + 2 * PTE_SPAN
    for _ in range(n):
        mm.munmap(addr, PTE_SPAN)
        mm.mmap(addr, PTE_SPAN, noreserve=lay.noreserve)


def fork(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(f) fork(): the child copies the populated tables of the anon VMA."""
    for _ in range(n):
        mm.fork()


def remap_all(mm: AddressSpace, lay: Layout, n: int) -> None:
    """(g, extra) munmap the whole mapping, mmap it again and rewrite the setup pages:
    the teardown/rebuild of a sparse mapping with the same populated tables."""
    for _ in range(n):
        mm.munmap(lay.base, lay.size)
        mm.mmap(lay.base, lay.size, noreserve=lay.noreserve)
        for addr in setup_pages(lay):
            mm.touch(addr, PAGE, True)


@dataclass
class OpBench:
    """One row of the side-by-side table."""

    key: str
    title: str
    run: Batch
    extra: bool = False  # not in the required list: reported, but outside the verdict
    samples: dict[str, list[float]] = field(default_factory=dict)  # layout -> s per op

    def median_us(self, label: str) -> float:
        return statistics.median(self.samples[label]) * 1e6

    def min_us(self, label: str) -> float:
        return min(self.samples[label]) * 1e6


@dataclass
class Group:
    """Ops timed together: each group leaves the address space as it found it.

    ``fixed_n`` bounds the batch size (the touch/DONTNEED pool has POOL_MAX slots).
    """

    ops: list[OpBench]
    fixed_n: int | None = None


def make_groups() -> list[Group]:
    return [
        Group([OpBench("a", "touch (write) allocating a PTE table", touch_alloc),
               OpBench("b", "DONTNEED aligned 2 MiB (frees the table)", dontneed_2m)],
              fixed_n=POOL_MAX),
        Group([OpBench("c", "DONTNEED 4 KiB, unaligned", dontneed_4k)]),
        Group([OpBench("d", "mprotect 4 KiB r + back rw (split+merge)", mprotect_pair)]),
        Group([OpBench("e", "munmap + mmap a 2 MiB hole", hole_pair)]),
        Group([OpBench("f", "fork", fork)]),
        Group([OpBench("g", "munmap + mmap whole mapping + re-touch", remap_all,
                       extra=True)]),
    ]


def time_batch(fn: Callable[[], object]) -> float:
    """Seconds for one call of ``fn`` (timeit: perf_counter, GC disabled)."""
    return timeit.Timer(fn).timeit(number=1)


def run_group(mm: AddressSpace, lay: Layout, group: Group, n: int) -> list[float]:
    """Time each op of ``group`` once as a batch of ``n``; seconds per op."""
    return [time_batch(partial(op.run, mm, lay, n)) / n for op in group.ops]


def calibrate(mms: dict[str, AddressSpace], layouts: Sequence[Layout], group: Group,
              target: float) -> dict[str, int]:
    """Batch size per layout so that one batch of the group's slowest op takes about
    ``target`` seconds (at least 1 op; at most ``fixed_n`` when set)."""
    sizes = {}
    for lay in layouts:
        mm = mms[lay.label]
        run_group(mm, lay, group, 1)  # warm up
        per_op = max(max(run_group(mm, lay, group, 1)), 1e-7)
        n = max(1, min(10_000, math.ceil(target / per_op)))
        if group.fixed_n is not None:
            n = min(n, group.fixed_n)
        sizes[lay.label] = n
    return sizes


def verify(mms: dict[str, AddressSpace], layouts: Sequence[Layout], groups: Sequence[Group]
           ) -> None:
    """Run every group once with error checking and make sure it restores the state
    (otherwise the repeated batches would not measure the same thing)."""
    for lay in layouts:
        mm = mms[lay.label]
        before = snapshot(mm)
        pool = lay.work + POOL_FIRST * PTE_SPAN
        _check(mm.touch(pool + PAGE, PAGE, True), "touch (a)")
        assert len(mm.pte) == before[1] + 1, "touch (a) did not allocate a table"
        _check(mm.madvise(pool, PTE_SPAN, "DONTNEED"), "DONTNEED 2M (b)")
        assert snapshot(mm) == before, "DONTNEED 2M (b) did not free the table"
        _check(mm.madvise(setup_pages(lay)[0], PAGE, "DONTNEED"), "DONTNEED 4K (c)")
        _check(mm.touch(setup_pages(lay)[0], PAGE, True), "re-touch (c)")
        addr = lay.work + 3 * PAGE
        _check(mm.mprotect(addr, PAGE, VM_READ), "mprotect r (d)")
        assert len(mm.vmas) == 3, "mprotect (d) did not split"
        _check(mm.mprotect(addr, PAGE, VM_READ | VM_WRITE), "mprotect rw (d)")
        addr = lay.work + 2 * PTE_SPAN
        _check(mm.munmap(addr, PTE_SPAN), "munmap (e)")
        assert len(mm.vmas) == 2, "munmap (e) did not split"
        _check(mm.mmap(addr, PTE_SPAN, noreserve=lay.noreserve), "mmap (e)")
        assert snapshot(mm) == before, f"{lay.label}: an op did not restore the state"
        assert mm.fork().tables == mm.tables, "fork (f) child holds other tables"
        for group in groups:
            for op in group.ops:
                op.run(mm, lay, 1)
        assert snapshot(mm) == before, f"{lay.label}: a batch did not restore the state"
        mm.check_invariants()


def bench_sizes(console: Console, repeats: int, target: float, threshold: float,
                sweep: bool) -> None:
    """Section 2: every op timed on the 1 GiB and the 128 TiB address space, interleaved."""
    layouts = [small_layout(), huge_layout(label="128 TiB")]
    console.rule("[bold]2. Cost per op: 1 GiB vs 128 TiB mapping, side by side")
    for lay in layouts:
        console.print(f"  {lay.describe()}; ops at {lay.work:#x}")
    mms = {lay.label: build(lay) for lay in layouts}
    groups = make_groups()
    verify(mms, layouts, groups)
    gc.collect()
    for group in groups:
        sizes = calibrate(mms, layouts, group, target)
        for op in group.ops:
            op.samples = {lay.label: [] for lay in layouts}
        for rep in range(repeats):
            order = layouts if rep % 2 == 0 else layouts[::-1]
            for lay in order:
                for op, t in zip(group.ops,
                                 run_group(mms[lay.label], lay, group, sizes[lay.label]),
                                 strict=True):
                    op.samples[lay.label].append(t)
    small, huge = (lay.label for lay in layouts)
    table = Table(title=f"µs per op, median of {repeats} interleaved batches "
                        "(min in brackets)", title_justify="left")
    table.add_column("op")
    table.add_column(f"{small}", justify="right")
    table.add_column(f"{huge}", justify="right")
    table.add_column("ratio 128T/1G", justify="right")
    table.add_column("ratio of mins", justify="right")
    worst: list[OpBench] = []
    for group in groups:
        for op in group.ops:
            ratio = op.median_us(huge) / op.median_us(small)
            ratio_min = op.min_us(huge) / op.min_us(small)
            over = ratio > threshold
            if over:
                worst.append(op)
            style = "bold red" if over else ""
            name = f"({op.key}) {op.title}" + (" [extra]" if op.extra else "")
            table.add_row(name, f"{op.median_us(small):.2f} [{op.min_us(small):.2f}]",
                          f"{op.median_us(huge):.2f} [{op.min_us(huge):.2f}]",
                          f"[{style}]{ratio:.2f}x[/]" if style else f"{ratio:.2f}x",
                          f"{ratio_min:.2f}x")
    console.print(table)
    required = [op for op in worst if not op.extra]
    extras = [op for op in worst if op.extra]
    if not required:
        console.print(f"[bold green]VERDICT: PASS[/] -- every required op (a)-(f) costs "
                      f"within {threshold:g}x at 128 TiB of its cost at 1 GiB.")
    else:
        keys = ", ".join(f"({op.key}) {op.title}" for op in required)
        console.print(f"[bold red]VERDICT: FAIL[/] -- over {threshold:g}x at 128 TiB: {keys}. "
                      "Their cost grows with the mapped size (contract: DESIGN.md section 4).")
    if extras:
        keys = ", ".join(f"({op.key})" for op in extras)
        console.print(f"  extra rows over {threshold:g}x (not part of the verdict): {keys}")
    if sweep and worst:
        size_sweep(console, worst)


def size_sweep(console: Console, ops: Sequence[OpBench]) -> None:
    """How the ops over the threshold grow with the mapped size (one norsv mapping from
    64 KiB, same populated tables): a linear growth points at a loop over the range."""
    sizes = [GiB, 16 * GiB, 256 * GiB, 4 * TiB, 32 * TiB, 127 * TiB]
    layouts = [huge_layout(s) for s in sizes]
    mms = {lay.label: build(lay) for lay in layouts}
    table = Table(title="Size sweep of the ops over the threshold: µs per op (min of 5)",
                  title_justify="left")
    table.add_column("op")
    for lay in layouts:
        table.add_column(lay.label, justify="right")
    for op in ops:
        best = {lay.label: math.inf for lay in layouts}
        for rep in range(5):
            for lay in layouts if rep % 2 == 0 else layouts[::-1]:
                t = time_batch(partial(op.run, mms[lay.label], lay, 1))
                best[lay.label] = min(best[lay.label], t)
        table.add_row(f"({op.key}) {op.title}",
                      *(f"{best[lay.label] * 1e6:.1f}" for lay in layouts))
    console.print(table)


# ------------------------------------------------------------------------ memory


def bench_memory(console: Console) -> None:
    """Section 3: tables held and tracemalloc bytes of building each address space."""
    console.rule("[bold]3. Memory after setup (mmap + the same handful of written pages)")
    layouts = [small_layout(), huge_layout(label="128 TiB")]
    build(small_layout())  # warm up lazily created objects before measuring
    table = Table()
    for col in ("address space", "VMAs", "PTE", "PMD", "PUD", "tables",
                "tracemalloc current B", "tracemalloc peak B"):
        table.add_column(col, justify="left" if col == "address space" else "right")
    peaks = []
    for lay in layouts:
        gc.collect()
        tracemalloc.start()
        mm = build(lay)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks.append(peak)
        table.add_row(lay.label, str(len(mm.vmas)), str(len(mm.pte)), str(len(mm.pmd)),
                      str(len(mm.pud)), str(mm.tables), f"{current:,}", f"{peak:,}")
        del mm
    console.print(table)
    console.print(f"  peak ratio 128T/1G: {peaks[1] / peaks[0]:.2f}x")


# ------------------------------------------------------------------------ replay


def bench_replay(console: Console, seed: int, count: int, repeats: int) -> None:
    """Section 1: replay a fixed-seed corpus; best of ``repeats`` per script."""
    console.rule(f"[bold]1. Replay of generated op scripts (seed {seed}, {count} scripts, "
                 f"all families, best of {repeats})")
    t0 = time.perf_counter()
    corpus = generate_corpus(seed, count)
    scripts: list[tuple[str, str, Script]] = [
        (name, name.split("_", 1)[1], parse_text(text, name)) for name, text in corpus]
    console.print(f"  generated and parsed in {time.perf_counter() - t0:.2f} s (not timed)")
    best = [math.inf] * len(scripts)
    for _ in range(repeats):
        for i, (_name, _family, script) in enumerate(scripts):
            t = time.perf_counter()
            replay(script)
            best[i] = min(best[i], time.perf_counter() - t)
    table = Table()
    for col in ("family", "scripts", "ops", "seconds", "ops/s", "µs/op", "slowest script"):
        table.add_column(col, justify="left" if col in ("family", "slowest script") else "right")
    families = [f for f in FAMILIES if any(fam == f for _, fam, _ in scripts)]
    for family in [*families, "TOTAL"]:
        idx = [i for i, (_, fam, _) in enumerate(scripts) if family in (fam, "TOTAL")]
        ops = sum(len(scripts[i][2].ops) for i in idx)
        secs = sum(best[i] for i in idx)
        slow = max(idx, key=lambda i: best[i])
        style = "bold" if family == "TOTAL" else ""
        table.add_row(family, str(len(idx)), f"{ops:,}", f"{secs:.3f}", f"{ops / secs:,.0f}",
                      f"{secs / ops * 1e6:.1f}", f"{scripts[slow][0]} ({best[slow] * 1e3:.1f} ms)",
                      style=style)
    console.print(table)


# ------------------------------------------------------------------------ main


def environment(console: Console, command: str) -> None:
    """Interpreter, machine and the command that reproduces the run."""
    console.rule("[bold]Environment")
    console.print(f"  python   {platform.python_implementation()} {sys.version.split()[0]}")
    console.print(f"  machine  {platform.platform()}, {os.cpu_count()} CPUs")
    console.print(f"  command  {command}  (from the repository root)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="~5 s smoke run")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--scripts", type=int, default=None, metavar="N",
                   help="scripts in the replay corpus (default 200; --quick: 24)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved batches per op (default 15; --quick: 5)")
    p.add_argument("--threshold", type=float, default=1.5,
                   help="largest acceptable ratio 128T/1G (default 1.5)")
    args = p.parse_args(argv)
    if args.scripts is None:
        args.scripts = 24 if args.quick else 200
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    if args.scripts < 1 or args.repeats < 1:
        p.error("--scripts and --repeats must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 130, highlight=False)
    start = time.perf_counter()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_model.py", *argv])
    environment(console, command)
    bench_replay(console, args.seed, args.scripts, 1 if args.quick else 3)
    bench_sizes(console, args.repeats, 0.0005 if args.quick else 0.002, args.threshold,
                sweep=not args.quick)
    bench_memory(console)
    elapsed = time.perf_counter() - start
    console.print(f"\ntotal wall time {elapsed:.1f} s; reproduce with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
