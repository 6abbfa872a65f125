"""The fidelity report: a trace replayed on a fresh address space, the model's VmPTE
against the recorded one at every sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...pagetable import AddressSpace
from ...trace import Trace
from .replayer import TraceReplayer


@dataclass
class FidelityReport:
    """Model vs recorded VmPTE at every sample of a replayed trace.

    A sample reads ``VmPTE`` before and after its page walk; when the process
    changed its tables in between (``raced``), the kernel's value during the
    sample lies between the two.  The model's value during the sample lies
    between its value when the sample's pages were synced (``model_walk_kib``)
    and its value after the syscalls dated inside the sample's read window
    (``model_kib``; the two are equal for a version-1 trace, which recorded
    no read window).  ``error_tables`` compares ``model_kib`` with the value
    read before the walk; ``window_error_tables`` is the distance between the
    two ranges (0 when they overlap), which is what the fidelity goal judges.
    """

    t_ms: np.ndarray
    recorded_kib: np.ndarray  # VmPTE read before the page walk
    recorded_after_kib: np.ndarray  # VmPTE read after it
    model_kib: np.ndarray  # after the sample; includes the constant baseline
    baseline_tables: int
    notes: dict[int, str] = field(default_factory=dict)
    unplaced_pages: int = 0
    refused_syscalls: int = 0
    purge_implied_writes: int = 0
    #: ``DONTNEED`` range tails that implied no write (package docstring, point 3).
    purge_tails_unwritten: int = 0
    #: Syscalls dated inside a sample's read window (package docstring, point 2).
    window_syscalls: int = 0
    #: The model when each sample's pages were synced (with the baseline).
    model_walk_kib: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return int(self.t_ms.size)

    @property
    def raced(self) -> np.ndarray:
        return self.recorded_after_kib != self.recorded_kib

    @property
    def error_tables(self) -> np.ndarray:
        return (self.model_kib - self.recorded_kib) // 4

    @property
    def window_error_tables(self) -> np.ndarray:
        lo = np.minimum(self.recorded_kib, self.recorded_after_kib)
        hi = np.maximum(self.recorded_kib, self.recorded_after_kib)
        walk = self.model_kib if self.model_walk_kib is None else self.model_walk_kib
        m_lo = np.minimum(walk, self.model_kib)
        m_hi = np.maximum(walk, self.model_kib)
        return (np.where(m_hi < lo, m_hi - lo, 0) + np.where(m_lo > hi, m_lo - hi, 0)) // 4

    @property
    def rel_error(self) -> np.ndarray:
        """Window error relative to the recorded VmPTE."""
        return 4 * self.window_error_tables / np.maximum(self.recorded_kib, 1)

    def within_goal(self, rel: float, tables: int) -> np.ndarray:
        """Samples whose window error is within ``rel`` of VmPTE and within
        ``tables`` tables, except that an error of at most ``tables`` tables
        passes when VmPTE is too small for ``rel`` to allow a whole table."""
        err = np.abs(self.window_error_tables)
        small = self.recorded_kib * rel < 4 * tables
        return (err <= tables) & ((np.abs(self.rel_error) <= rel) | small)

    def summary(self, rel: float, tables: int) -> dict[str, int | float | bool]:
        ok = self.within_goal(rel, tables)
        err = self.window_error_tables
        raw = self.error_tables
        return {
            "max_abs_tables": int(np.abs(err).max()) if err.size else 0,
            "max_rel": float(np.abs(self.rel_error).max()) if err.size else 0.0,
            "max_abs_tables_before": int(np.abs(raw).max()) if raw.size else 0,
            "final_tables": int(err[-1]) if err.size else 0,
            "raced_samples": int(self.raced.sum()),
            "within_goal": int(ok.sum()),
            "all_within_goal": bool(ok.all()),
        }


def replay(trace: Trace, purge_implies_touch: bool = True) -> FidelityReport:
    """Replay ``trace`` on a fresh address space; VmPTE at every sample."""
    mm = AddressSpace(pt_reclaim=True, thp_disabled=True)
    r = TraceReplayer(trace, mm, purge_implies_touch=purge_implies_touch)
    n = trace.samples
    model = np.zeros(n, dtype=np.int64)
    walk = np.zeros(n, dtype=np.int64)
    unplaced = np.zeros(n, dtype=np.int64)
    implied = np.zeros(n, dtype=np.int64)
    for k in range(n):
        r.advance_to(k)
        model[k], walk[k], unplaced[k], implied[k] = mm.vm_pte_kib, r.walk_kib, r.unplaced, \
            r.implied
    rec = trace.vm_pte_kib.astype(np.int64)
    after = trace["vm_pte_after_kib"].astype(np.int64)
    report = FidelityReport(trace.t_ms.copy(), rec, after, model, 0, {}, r.unplaced, r.refused,
                            r.implied, r.tails, r.in_window, walk)
    # Tables the first sample cannot show: the distance from the model to the
    # kernel's range at sample 0 (0 when the two overlap), carried as a constant.
    base_kib = -4 * int(report.window_error_tables[0])
    report.baseline_tables = base_kib // 4
    report.model_kib = model + base_kib
    report.model_walk_kib = walk + base_kib
    err = report.window_error_tables
    t = trace.t_ms
    for k in range(1, n):
        why = []
        if after[k] != rec[k]:
            why.append(f"raced: VmPTE {rec[k]}->{after[k]} kB during the sample")
        if unplaced[k] != unplaced[k - 1]:
            why.append(f"{unplaced[k] - unplaced[k - 1]} present pages outside model VMAs")
        if err[k] != err[k - 1]:
            nsys = len(trace.syscalls_between(float(t[k - 1]), float(trace.t_after_ms[k])))
            more = f", {implied[k] - implied[k - 1]} purge-implied writes" if (
                implied[k] != implied[k - 1]) else ""
            why.append(f"error {err[k - 1]:+d} -> {err[k]:+d} tables over the "
                       f"{t[k] - t[k - 1]:.0f} ms gap ({nsys} syscalls{more}): faults and "
                       "zaps between samples are not seen")
            if not trace.has_syscalls:
                why.append("no syscall log: DONTNEED reclaim and munmap are only inferred "
                           "from maps and presence")
        if why:
            report.notes[k] = "; ".join(why)
    return report
