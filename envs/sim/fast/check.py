"""Differential checks of the compiled core against the Python reference.

The reference model (:class:`~ptreclaim.envs.sim.pagetable.AddressSpace`) is what the live
kernel checks; the compiled one (:class:`FastAddressSpace`) must leave exactly the same state
after every op.  :func:`canonical_state` turns either into the same plain structure (object
identities -- files, anon_vmas, userfaultfd contexts -- become numbers in order of first
appearance), and :func:`replay_both` replays an op script on both, comparing that state and
the op's outcome after every op.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from ..opscript import Script
from ..pagetable import AddressSpace, TableClass
from ..replay import OpOutcome, ScriptMachine
from ._fast import FastAddressSpace, FastBackingFile

#: What a reclaimer may free: every class but pinned (reclaim.DEPTHS[2]).
_FREEABLE = frozenset({TableClass.EMPTY, TableClass.ZERO, TableClass.FILE})


def _canonical_ids(vmas: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Replace the identity columns (file, anon_vma, uffd) by first-appearance numbers."""
    seen: list[dict[Any, int]] = [{}, {}, {}]
    out = []
    for v in vmas:
        ids = []
        for k, key in enumerate(v[4:7]):
            ids.append(None if key is None else seen[k].setdefault(key, len(seen[k])))
        out.append((*v[:4], *ids))
    return out


def _files_in_order(mm: AddressSpace) -> list[tuple[Any, ...]]:
    """The page-cache state of the VMAs' files (R24), in order of first appearance -- the
    order in which :func:`_canonical_ids` numbers them: (kind, size, cache, huge chunks)."""
    seen: set[int] = set()
    out = []
    for v in mm.vmas:
        f = v.file
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        out.append((f.kind, f.size, sorted((c, bytes(p)) for c, p in f.cache.items()),
                    sorted(f.huge)))
    return out


def canonical_state(mm: AddressSpace | FastAddressSpace) -> dict[str, Any]:
    """The whole state of either model as plain data (equal iff the states are equal):
    besides the address space's own, the page cache of every file its VMAs map."""
    if isinstance(mm, FastAddressSpace):
        state = mm.state()
    else:
        state = {
            "vmas": [(v.start, v.end, v.flags, v.pgoff,
                      None if v.file is None else id(v.file),
                      None if v.anon_vma is None else id(v.anon_vma),
                      None if v.uffd is None else id(v.uffd)) for v in mm.vmas],
            "pte": [(slot, bytes(t.entries), t.huge, int(t.cls), t.rss, t.young, t.age)
                    for slot, t in sorted(mm.pte.items())],
            "pmd": sorted(mm.pmd),
            "pud": sorted(mm.pud),
            "stats": dataclasses.asdict(mm.stats),
            "class_counts": mm.class_counts(),
            "rss_pages": mm.rss_pages,
            "reclaimed": sorted((s, z, int(c)) for s, (z, c) in mm.reclaimed.items()),
            "kept": sorted(mm.kept.items()),
            "kept_pages": mm.kept_pages,
            "table_version": mm.table_version,
            "class_version": mm.class_version,
            "uffd_vmas": mm.uffd_vmas,
            "file_thp": sorted(mm.file_thp),
            "files": _files_in_order(mm),
        }
    state["vmas"] = _canonical_ids(state["vmas"])
    return state


class FastScriptMachine(ScriptMachine):
    """:class:`~ptreclaim.envs.sim.replay.ScriptMachine` on the compiled model."""

    address_space = FastAddressSpace
    backing_file = FastBackingFile


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    for key in a:
        if a[key] != b[key]:
            return f"{key} differs"
    return ""


def replay_both(script: Script, *, pt_reclaim: bool = True, reclaim_seed: int | None = None,
                seen: dict[str, int] | None = None) -> tuple[int, str]:
    """Replay ``script`` on both models; (ops compared, "" or the first difference).

    With ``reclaim_seed``, after about a third of the ops an out-of-line reclaimer frees
    the same seeded-random table (any class it may free) on both models, whose states are
    compared again and checked for invariants; ``seen`` then counts the tables freed
    (``reclaimed``) and the most page-cache pages kept at once (``kept``)."""
    ref = ScriptMachine(thp=script.thp, pt_reclaim=pt_reclaim)
    fast = FastScriptMachine(thp=script.thp, pt_reclaim=pt_reclaim)
    rng = random.Random(reclaim_seed) if reclaim_seed is not None else None
    for n, op in enumerate(script.ops):
        want: OpOutcome = ref.apply(op)
        got: OpOutcome = fast.apply(op)
        if want != got:
            return n, f"op {n + 1} ({op.name}): outcome {got} != reference {want}"
        problem = _diff(canonical_state(ref.mm), canonical_state(fast.mm))
        if problem:
            return n, f"op {n + 1} ({op.name}): {problem}"
        fast.mm.check_invariants()
        if rng is not None and rng.random() < 0.35 and ref.mm.pte:
            slot = rng.choice(ref.mm.table_slots())
            a, b = ref.mm.reclaim_table(slot, _FREEABLE), fast.mm.reclaim_table(slot, _FREEABLE)
            problem = _diff(canonical_state(ref.mm), canonical_state(fast.mm))
            if a != b or problem:
                return n, f"reclaim of slot {slot:#x} after op {n + 1}: {a} / {b} {problem}"
            ref.mm.check_invariants()
            fast.mm.check_invariants()
            if seen is not None:
                seen["reclaimed"] = seen.get("reclaimed", 0) + (a >= 0)
                seen["kept"] = max(seen.get("kept", 0), ref.mm.kept_pages)
    return len(script.ops), ""


def _fast_proc_state(fast: Any, index: int) -> dict[str, Any]:
    state = fast.core.proc_state(index)
    state["vmas"] = _canonical_ids(state["vmas"])
    return state


def compare_simulations(scenario: Any, seed: int, ticks: int | None = None, *,
                        reclaim_every: int = 7, state_every: int = 1) -> str:
    """Run ``scenario`` on the reference and on the compiled core side by side, with the
    same seeded random reclaim passes between ticks; "" when every tick record, every pass
    result, every event and (every ``state_every`` ticks) every process's whole address
    space are identical, else the first difference."""
    import numpy as np

    from ..reclaim import DEPTHS
    from ..simulator import Simulation
    from .simulation import FastSimulation

    ref = Simulation(scenario, np.random.default_rng(seed))
    fast = FastSimulation(scenario, np.random.default_rng(seed))
    actions = np.random.default_rng(seed + 99)
    n = scenario.ticks if ticks is None else ticks
    for t in range(n):
        if reclaim_every and t % reclaim_every == 0:
            depth = int(actions.integers(3))
            budget = int(actions.choice([64, 512, 4096, 1 << 30]))
            who = int(actions.integers(-1, len(ref.procs))) if ref.procs else -1
            rt = ref.procs[who] if who >= 0 and ref.procs[who].alive else None
            ft = fast.procs[who] if rt is not None else None
            min_idle = int(actions.choice([0, 1, 2, 4]))
            a = ref.reclaim(rt, DEPTHS[depth], budget, min_idle)
            b = fast.reclaim(ft, DEPTHS[depth], budget, min_idle)
            if a != b:
                return f"tick {t}: reclaim pass {b} != reference {a}"
        ra, rb = ref.step(), fast.step()
        if ra != rb:
            for f in dataclasses.fields(ra):
                if getattr(ra, f.name) != getattr(rb, f.name):
                    return (f"tick {t}: {f.name} = {getattr(rb, f.name)!r}, reference "
                            f"{getattr(ra, f.name)!r}")
        if state_every and t % state_every == 0:
            if len(ref.procs) != len(fast.procs):
                return f"tick {t}: {len(fast.procs)} processes, reference {len(ref.procs)}"
            for i, p in enumerate(ref.procs):
                problem = _diff(canonical_state(p.mm), _fast_proc_state(fast, i))
                if problem:
                    return f"tick {t}: process {p.name}: {problem}"
    if ref.events != fast.events:
        return "events differ"
    return ""
