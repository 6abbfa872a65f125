"""Replay of captured page-table traces of real processes.

Source
------
Traces recorded on this machine with ``scripts/capture_trace.py record``
(:mod:`ptreclaim.envs.host.capture`; format in :mod:`ptreclaim.envs.sim.trace`):
the process's maps, its per-2 MiB-block page presence (``PAGEMAP_SCAN``)
and its memory syscalls (strace), on one clock.  The shipped ones live in
``data/traces/`` (installed as the ``ptreclaim.data`` package).

How a trace drives the model
----------------------------
1. The first sample's maps become the initial VMAs (as the kernel split
   them: every private anonymous VMA gets its own anon_vma so neighbours the
   kernel kept apart stay apart), and its present pages are faulted in.
2. For each later sample ``k``, in time order (``t_ms[k]``: the sample began
   and read ``VmPTE``; ``t_after_ms[k]``: it read ``VmPTE`` again after its
   page walk; a syscall is dated by its completion):

   a. the syscalls dated after sample ``k-1``'s read window and up to
      ``t_ms[k]`` are applied to the model as the kernel got them
      (mmap/munmap/madvise/mremap/brk/mprotect, with the kernel's return
      value for placement), so VMAs change and ``MADV_DONTNEED`` zaps and
      reclaims tables exactly by the model's rules;
   b. the model's VMAs are reconciled with the sample's maps (stack growth
      and anything the syscall log lacks) -- except the ranges that a logged
      ``mmap``/``munmap``/``mremap``/``brk``/``mprotect`` dated after
      ``t_ms[k]`` and before the next sample changes: such a call may have
      been under way while the maps were read (``munmap`` and a ``brk``
      shrink drop the VMA first and free the tables last), and the log
      applies it when it completes;
   c. each block whose pages changed, or that a syscall zapped, is synced
      with the sample: pages that appeared in the trace (or that a modelled
      zap took while the kernel still shows them) are faulted in -- the
      first appearance of a page in a block faults its table -- and pages
      that left the trace without a modelled zap are dropped without freeing
      tables (as lazy-free reclaim or swap-out would);
   d. the syscalls dated inside the sample's read window
      (``t_ms[k]``, ``t_after_ms[k]``] are applied: the second ``VmPTE``
      read saw them, the page walk may not have.  Their zaps are judged
      against the next sample's pages (pages it still shows were faulted
      again), and pages that had no VMA at c are retried after them.

   The fidelity report compares the model's range over the sample (after c,
   after d) with the kernel's (the two reads), so a syscall counts where the
   kernel's reads saw it, not one sample late.  strace dates a call's end
   when it gets to it, which can be milliseconds late on a busy machine, so
   a version-1 trace (no ``t_after_ms``: its window is empty and d never
   runs) also skips the exception in b and trusts the maps, as before: its
   ``churn_glibc_trim`` has a ``brk`` shrink dated 5 ms after the sample
   whose freed tables the first read already saw.  Evidence (``check`` on
   the trace as recorded, then with its windows dropped):
   ``numpy_jemalloc_decay`` 394/394 samples within the goal (max 3 tables)
   against 392/394 (max 10: ``DONTNEED`` calls dated 1-2 ms into a sample
   that both reads or the second saw); three more numpy re-recordings
   390/390, 354/354, 394/394 against 390/390, 353/354, 391/394; two glibc
   ``malloc_trim`` re-recordings max 4 and 5 tables against 104 and 200
   without b's exception (a 230 MiB ``brk`` shrink dated 20 and 78 ms after
   the sample, the VMA already gone from its maps, its tables still in both
   reads).  Read windows there last 6-10 ms (median; numpy) to 26-41 ms
   (churn, whose walks are long) and hold 7 % (numpy) to 32 % (churn) of
   the syscalls.

   What is faulted depends on the trace and the VMAs only, so
   :func:`compile_trace` turns a trace into a fixed list of model
   operations once, and every replay runs that list.
3. Allocators purge pages they dirtied: a ``MADV_DONTNEED`` that reaches a
   block with no table in the replay, and would not free that block's table
   (partial cover, or a VMA boundary inside: R6, R9), means the process wrote
   there after the last sample and the kernel kept the table; the replay
   writes the first purged page there before the call (counted as
   "purge-implied writes" in the fidelity report) -- except in the block
   where a range that began in an earlier block ends, when it covers at most
   :data:`UNWRITTEN_TAIL` (128 pages, 512 KiB) of it (counted as "tails").
   The tail of a purged range is the end of the allocator's last extent:
   size-class slack and, in jemalloc (``cache_oblivious``), a padding page,
   which the process never wrote.  numpy under jemalloc shows it plainly:
   its arrays of 8-48 MiB are large extents whose size class is a multiple
   of 2 MiB, plus the padding page, so a purge ends 1-6 pages into a block
   the array never reached, and the next sample holds no page there.
   Evidence, writes made with this rule / with a write at every such block
   / with none (samples within the goal):

   ======================== ================ ================ ==============
   trace                    this rule        every block      no writes
   ======================== ================ ================ ==============
   numpy_jemalloc_decay     6 w, 394/394     91 w, 142/394    393/394
   churn_jemalloc           8 w, 151/151     15 w, 151/151    151/151
   churn_glibc_trim         65 w, 155/155    65 w, 155/155    155/155
   redis_jemalloc           0 w, 295/295     0 w, 295/295     295/295
   ======================== ================ ================ ==============

   and on 20 re-recordings (``record.sh`` commands; not shipped): numpy
   (9 traces) 99-153 of about 400 samples within the goal with every block
   written, all but 3 samples with this rule; churn under jemalloc (6) needs
   the writes (100/148, 118/131 without any) and keeps most of them: 21-89
   writes, 13-39 tails, every sample within the goal but one (4 tables, also
   missed with every block written).  Replaying 8 jemalloc traces (numpy
   and churn) with one candidate write flipped at a time: of the writes into
   a range's tail block, 299 of those covering at most 128 pages raised the
   error and 1 lowered it; of those covering more, 40 lowered it and 3
   raised it (the rest changed nothing).  The wrong ones cover up to 86
   pages (one 131), the right ones 135 and more (one 30); a threshold of
   96-128 pages gave the least error on all 24 traces.
   A block whose next sample holds pages does not matter (the sync faults
   it anyway); one whose next sample holds none is exactly where the churn
   traces need the write, so that is no criterion.
4. What the first sample cannot show -- tables emptied before capture began
   -- is the difference between the recorded and the modelled VmPTE at
   sample 0, carried as a constant ``baseline_tables``.

What sampling cannot see: pages faulted *and* dropped between two samples
(a table the kernel keeps that the model never allocated), and the order of
faults relative to syscalls within one interval.  The fidelity report
(:func:`replay`) names these per sample instead of hiding them.

The workload family ``trace`` replays one trace as one process, with
``speed`` (trace time per simulated time), ``offset_s`` (skip the start) and
``end`` (exit, stay idle, or loop with a fresh process), so several replays
compose into a scenario.  A replayed process that the OOM killer takes stays
dead; one throttled by a hard limit catches up when it runs again.

The package: :mod:`.library` (finding and loading traces), :mod:`.ops` (the model
operations of a replay), :mod:`.replayer` (the rules above, as :class:`TraceReplayer`),
:mod:`.program` (:func:`compile_trace` and :class:`TracePlayer`), :mod:`.fidelity`
(:func:`replay` and :class:`FidelityReport`), and here the workload family,
:class:`TraceWorkload` (defined in the package itself: the workload registry takes the
classes a family's module defines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from ...config import ConfigError, check_ranges, ranged
from ..base import Workload
from .fidelity import FidelityReport, replay
from .library import resolve_trace, shipped_traces
from .ops import Op as Op
from .program import TracePlayer, compile_trace
from .replayer import MAP_ANONYMOUS as MAP_ANONYMOUS
from .replayer import MAP_NORESERVE as MAP_NORESERVE
from .replayer import MAP_POPULATE as MAP_POPULATE
from .replayer import MAP_SHARED as MAP_SHARED
from .replayer import MREMAP_DONTUNMAP as MREMAP_DONTUNMAP
from .replayer import UNWRITTEN_TAIL, TraceReplayer

__all__ = ["UNWRITTEN_TAIL", "FidelityReport", "TraceConfig", "TracePlayer", "TraceReplayer",
           "TraceWorkload", "compile_trace", "replay", "resolve_trace", "shipped_traces"]


@dataclass(frozen=True)
class TraceConfig:
    """Parameters of one trace replay."""

    #: A shipped trace name, or a path to a .npz trace.
    trace: str = "redis_jemalloc"
    #: Trace milliseconds per simulated millisecond.
    speed: float = ranged(1.0, 0.0, 1000.0, lo_open=True)
    #: Skip this much of the trace's start.
    offset_s: float = ranged(0.0, 0.0, 1e6)
    #: What the replayed process does at the trace's end.
    end: Literal["exit", "idle", "loop"] = "exit"

    def __post_init__(self) -> None:
        check_ranges(self, "trace.")
        trace = resolve_trace(self.trace)
        if self.offset_s * 1000.0 >= trace.duration_ms:
            raise ConfigError(f"trace.offset_s: {self.offset_s} s is past the end of trace "
                              f"{self.trace!r} ({trace.duration_ms / 1000:.1f} s)")


class TraceWorkload(Workload):
    """One process that replays a captured trace (see the module docstring)."""

    family: ClassVar[str] = "trace"
    Config = TraceConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = ("speed",)

    def start(self) -> None:
        self.trace = resolve_trace(self.config.trace)
        self._begin(self.sim.tick_no)

    def _begin(self, tick: int) -> None:
        self.proc = self.spawn(f".{len(self.procs)}" if self.procs else "")
        self.replayer = TracePlayer(compile_trace(self.trace), self.proc.mm)
        self.t_first = self.config.offset_s * 1000.0
        first = int(np.searchsorted(self.trace.t_ms, self.t_first, side="right")) - 1
        self.replayer.advance_to(max(0, first))
        self.tick0 = tick
        self.done = False

    def step(self, tick: int) -> None:
        if self.done or not self.proc.runnable(tick):
            return  # a throttled process catches up when it runs again
        tick_ms = self.sim.machine.config.tick_ms
        t = self.t_first + (tick - self.tick0 + 1) * tick_ms * self.config.speed
        k = int(np.searchsorted(self.trace.t_ms, t, side="right")) - 1
        self.replayer.advance_to(k)
        if k >= self.trace.samples - 1:
            if self.config.end == "idle":
                self.done = True
            elif self.config.end == "exit":
                self.sim.exit_process(self.proc, "trace ended")
                self.done = True
            else:  # loop: the process exits and a fresh one starts the trace again
                self.sim.exit_process(self.proc, "trace ended (looping)")
                self._begin(tick + 1)
