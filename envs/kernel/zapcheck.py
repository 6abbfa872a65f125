"""The refcount design's rule, checked on the live kernel.

Qi Zheng's 2021 series (``refcount`` in :mod:`ptreclaim.envs.sim.mechanisms`) frees a PTE
table when the zap that clears its last non-none entry runs.  Which tables that is after a
given zap depends only on the entries the zap leaves, and those the live kernel shows: the
oracle program (``ptoracle -z``) reports, after every ``madvise`` and ``munmap``, how many
pages of each 2 MiB slot of the range still hold a non-none entry (``PAGEMAP_SCAN``:
present -- the zero page included --, swapped, or a guard marker).

:func:`check_script` replays a script on the kernel and on the model (the 6.18 kernel, so
that both hold the same tables: the VmPTE deltas must agree too) and, after each zap
(``MADV_DONTNEED``, ``MADV_DONTNEED_LOCKED``, ``munmap``), compares

* for every slot of the range, whether the model holds any non-none entry with whether the
  kernel does (the counts themselves differ where a read of a file mapping faulted around:
  the kernel maps the cached neighbours of the page, the model only the page, a
  simplification that never changes a table count; :attr:`ZapAnswer.count_diffs`);
* the tables the refcount design would free, as the model decides it
  (:func:`~ptreclaim.envs.sim.mechanisms.refcount_frees` of the tables the zap walked), with
  the kernel's answer: those of the same tables that a VMA still overlaps and whose every
  page the kernel reports none.

The model does not free anything here: it stays the measured kernel.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..sim.mechanisms import refcount_frees
from ..sim.opscript import SLOT_SIZE, Op, Script, slot_address
from ..sim.pagetable import E_NONE, ENTRIES, PTE_SHIFT, PTE_SPAN, AddressSpace
from ..sim.replay import ScriptMachine
from .check import load_scripts
from .oracle import OpResult, OracleError, OracleUnavailable, kernel_status, run_script

#: The ops after which the rule is compared (the zaps ``ptoracle -z`` reports on).
ZAP_ADVICES = ("DONTNEED", "DONTNEED_LOCKED")


@dataclass(frozen=True)
class ZapAnswer:
    """Kernel and model after one zap: per 2 MiB slot ``(ID, slot KiB)`` of the op's range
    the pages with a non-none entry, and the slots the refcount design frees."""

    index: int
    op: str
    kernel_delta: int
    model_delta: int
    kernel_used: dict[tuple[int, int], int]
    model_used: dict[tuple[int, int], int]
    kernel_frees: tuple[tuple[int, int], ...]
    model_frees: tuple[tuple[int, int], ...]

    @property
    def ok(self) -> bool:
        """VmPTE, which slots hold anything, and the refcount design's frees all agree."""
        empty_k = {k: v == 0 for k, v in self.kernel_used.items()}
        empty_m = {k: v == 0 for k, v in self.model_used.items()}
        return (self.kernel_delta == self.model_delta and empty_k == empty_m
                and self.kernel_frees == self.model_frees)

    @property
    def count_diffs(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Slots whose non-none page counts differ: (kernel, model)."""
        keys = set(self.kernel_used) | set(self.model_used)
        return {k: (self.kernel_used.get(k, -1), self.model_used.get(k, -1)) for k in keys
                if self.kernel_used.get(k, -1) != self.model_used.get(k, -1)}


def is_zap(op: Op) -> bool:
    """Whether ``op`` is one of the zaps compared."""
    return op.name == "munmap" or (op.name == "madvise" and op.advice in ZAP_ADVICES)


def _key(slot: int) -> tuple[int, int]:
    """(script ID, KiB from the ID's slot) of a PTE slot index."""
    addr = slot << PTE_SHIFT
    ident = (addr - slot_address(0)) // SLOT_SIZE
    return ident, (addr - slot_address(ident)) >> 10


def _slots_of(op: Op) -> range:
    """The PTE slot indices of the 2 MiB-aligned range around ``op``'s range (as the
    oracle program rounds it)."""
    start = slot_address(op.ident) + op.off
    return range(start >> PTE_SHIFT, (start + op.length + PTE_SPAN - 1) >> PTE_SHIFT)


def _used(mm: AddressSpace, slot: int) -> int:
    t = mm.pte.get(slot)
    if t is None:
        return 0
    return ENTRIES if t.huge else ENTRIES - t.entries.count(E_NONE)


def _kernel_used(res: OpResult) -> dict[tuple[int, int], int]:
    out = {}
    for entry in res.zap:
        ident, kib, used = (int(x) for x in entry.split())
        out[ident, kib] = used
    return out


def compare_zaps(script: Script, kernel: list[OpResult]) -> list[ZapAnswer]:
    """Replay ``script`` on the model next to the kernel's results (``run_script(...,
    zap=True)``) and compare the refcount rule after every zap."""
    machine = ScriptMachine(thp=script.thp)
    mm = machine.mm
    touched: list[int] = []
    mm.zap_listener = lambda _mm, slots, _dontneed: touched.extend(slots)
    out = []
    for i, (op, res) in enumerate(zip(script.ops, kernel, strict=True)):
        touched.clear()
        outcome = machine.apply(op)
        if not is_zap(op) or op.length == 0:
            continue
        slots = _slots_of(op)
        model_used = {_key(s): _used(mm, s) for s in slots}
        kernel_used = _kernel_used(res)
        walked = sorted(set(touched))
        model_frees = {_key(s) for s in refcount_frees(mm, walked)}
        # The kernel's answer, over the same tables (the model holds the ones the kernel
        # does: VmPTE agrees op by op): those under a VMA whose every page it reports none.
        kernel_frees = {_key(s) for s in walked if s in mm.pte and _under_vma(mm, s)
                        and kernel_used.get(_key(s), -1) == 0}
        out.append(ZapAnswer(i, op.text, res.delta_kib, outcome.delta_kib, kernel_used,
                             model_used, tuple(sorted(kernel_frees)),
                             tuple(sorted(model_frees))))
    return out


def _under_vma(mm: AddressSpace, slot: int) -> bool:
    base = slot << PTE_SHIFT
    return bool(mm.vmas_overlapping(base, base + PTE_SPAN))


def check_script(script: Script) -> list[ZapAnswer]:
    """Replay ``script`` on the live kernel with ``-z`` and compare (raises
    :class:`~.oracle.OracleUnavailable` where the kernel cannot serve)."""
    return compare_zaps(script, run_script(script, zap=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: check scripts (and generated ones); one line per script, the ops that
    disagree, then a total.  Exit status 0 when everything agrees, 1 when something does
    not, 2 for an unusable script, 3 when the kernel cannot serve."""
    parser = argparse.ArgumentParser(
        prog="python -m ptreclaim.envs.kernel.zapcheck",
        description="The refcount design's frees after each zap: model against PAGEMAP_SCAN.")
    parser.add_argument("scripts", nargs="*", help="op scripts (tests/data/kernel/*.script)")
    parser.add_argument("--generated", type=int, default=0, metavar="N",
                        help="also N scripts of the seeded generator")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)
    ok, why = kernel_status()
    if not ok:
        print(f"oracle unavailable: {why}", file=sys.stderr)
        return 3
    try:
        scripts = load_scripts(args.scripts, args.generated, args.seed)
    except ValueError as exc:  # OpScriptError: one line naming the file and line
        print(exc, file=sys.stderr)
        return 2
    zaps = frees = bad = counts = 0
    for script in scripts:
        try:
            answers = check_script(script)
        except (OracleUnavailable, OracleError) as exc:
            print(f"{script.source}: {exc}", file=sys.stderr)
            return 3 if isinstance(exc, OracleUnavailable) else 1
        wrong = [a for a in answers if not a.ok]
        zaps += len(answers)
        frees += sum(len(a.model_frees) for a in answers)
        counts += sum(bool(a.count_diffs) for a in answers)
        bad += len(wrong)
        print(f"{script.source}: {len(answers)} zaps, "
              f"{sum(len(a.model_frees) for a in answers)} refcount frees, "
              + (f"{len(wrong)} DISAGREE" if wrong else "agree"))
        for a in wrong:
            print(f"  op {a.index} {a.op}: kernel frees {a.kernel_frees}, model "
                  f"{a.model_frees}; VmPTE {a.kernel_delta} / {a.model_delta} KiB; "
                  f"counts (kernel, model) {a.count_diffs}")
    print(f"{len(scripts)} scripts, {zaps} zaps, {frees} refcount frees, {bad} disagree; "
          f"{counts} zaps with other non-none counts (file fault-around)")
    return 1 if bad else 0


__all__ = ["ZAP_ADVICES", "ZapAnswer", "check_script", "compare_zaps", "is_zap", "main"]


if __name__ == "__main__":
    sys.exit(main())
