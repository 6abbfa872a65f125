"""The workload protocol: a frozen config plus a seeded generator that drives
one or more processes' address spaces tick by tick."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..config import ConfigError, build

if TYPE_CHECKING:
    from ..machine import Machine
    from ..mechanisms import Mechanism
    from ..pagetable import AddressSpace
    from ..process import Process


class Simulation(Protocol):
    """What a workload may call on the simulation running it.  The simulator
    imports the workloads, so its class is described here, not imported."""

    tick_no: int
    machine: Machine
    mechanism: Mechanism

    def spawn(self, name: str, family: str, *, sane: bool = True, cpus: int = 1) -> Process: ...

    def exit_process(self, p: Process, reason: str) -> None: ...

#: Every process gets its own address space; workloads map their memory here.
BASE = 16 << 40


def pick(rng: np.random.Generator, ok: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` distinct random indices where the boolean array ``ok`` is
    true, sorted.  Rejection sampling first (O(k) when candidates are common),
    a full scan only when it falls short."""
    n = len(ok)
    if k <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    draws = rng.integers(0, n, size=4 * k + 8)
    hits = draws[ok[draws]]
    _, first = np.unique(hits, return_index=True)
    hits = hits[np.sort(first)][:k]
    if len(hits) < k:
        cand = np.flatnonzero(ok)
        hits = rng.choice(cand, size=min(k, len(cand)), replace=False) if len(cand) else hits[:0]
    return np.sort(hits.astype(np.int64))


class Workload:
    """Base class of a workload family.

    Subclasses set ``family`` (the name used in scenario YAML), ``Config`` (a
    frozen dataclass with validated defaults), ``sane`` (ground truth: False
    for malicious page-table hogs) and ``jitter_fields`` (numeric config
    fields that a scenario's ``jitter`` may scale), and implement
    :meth:`start` and :meth:`step`.  They act on their processes only through
    :class:`~ptreclaim.envs.sim.pagetable.AddressSpace` calls, so every effect
    on page tables follows the kernel model.
    """

    family: ClassVar[str] = ""
    Config: ClassVar[type[Any]]
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, sim: Simulation, rng: np.random.Generator,
                 name: str) -> None:
        self.config = config
        self.sim = sim
        self.rng = rng
        self.name = name
        self.procs: list[Process] = []

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Create the processes and their initial mappings."""
        raise NotImplementedError

    def step(self, tick: int) -> None:
        """Emit this tick's memory operations on the runnable processes."""
        raise NotImplementedError

    def stop(self) -> None:
        """The workload ends: its processes exit (all their tables are freed)."""
        for p in self.procs:
            if p.alive:
                self.sim.exit_process(p, reason="workload ended")

    # -- helpers -------------------------------------------------------------

    def spawn(self, suffix: str = "", cpus: int = 1) -> Process:
        p = self.sim.spawn(self.name + suffix, self.family, sane=self.sane, cpus=cpus)
        self.procs.append(p)
        return p

    def runnable(self, tick: int) -> list[Process]:
        return [p for p in self.procs if p.runnable(tick)]

    def reclaim_pgtables(self, mm: AddressSpace, start: int, length: int) -> None:
        """``madvise(start, length, MADV_RECLAIM_PGTABLES)`` at a purge point: the proposed
        advice of the ``madvise`` kernel design (:mod:`..mechanisms`); under any other
        design the application does not issue it and nothing happens."""
        self.sim.mechanism.advise(mm, start, length)

    @classmethod
    def make_config(cls, params: dict[str, Any], where: str, jitter: float,
                    rng: np.random.Generator) -> Any:
        """Build the family's config from scenario params, then scale each
        jitter field by U(1 - jitter, 1 + jitter) (seeded): :meth:`base_config`, then
        :meth:`jitter_config`."""
        return cls.jitter_config(cls.base_config(params, where), where, jitter, rng)

    @classmethod
    def base_config(cls, params: dict[str, Any], where: str) -> Any:
        """The family's config from scenario params, unjittered: a pure function of the
        params (a simulation caches it per workload spec, see ``workload_instances``)."""
        return build(cls.Config, params, where)

    @classmethod
    def jitter_config(cls, config: Any, where: str, jitter: float,
                      rng: np.random.Generator) -> Any:
        """``config`` with each jitter field scaled by U(1 - jitter, 1 + jitter): one
        uniform draw per field, in ``jitter_fields`` order.  The result is validated as a
        built config is (its ``__post_init__``: the ranges and the checks between fields,
        in which a jittered field may take part)."""
        names = cls.jitter_fields
        if jitter <= 0 or not names:
            return config
        # One call for every field's factor: numpy's uniform with a size draws element by
        # element exactly as one call per field does (low + (high - low) * next_double),
        # so these are the same numbers (tests/test_workload_config.py compares them).
        factors = rng.uniform(1.0 - jitter, 1.0 + jitter, len(names)).tolist()
        changes: dict[str, Any] = {}
        for name, factor in zip(names, factors, strict=True):
            value = getattr(config, name)
            scaled = value * factor
            if isinstance(value, int):
                # Integers stay integers; a deliberate 0 stays 0, others stay >= 1.
                changes[name] = 0 if value == 0 else max(1, round(scaled))
            else:
                changes[name] = scaled
        try:
            return _replaced(config, changes)
        except ConfigError as exc:
            raise ConfigError(f"{where}: jitter {jitter} takes a parameter out of range: "
                              f"{exc}; lower the jitter") from None


def _replaced(config: Any, changes: dict[str, Any]) -> Any:
    """``dataclasses.replace(config, **changes)`` for a config dataclass whose generated
    ``__init__`` only stores its fields: the copy's fields are set directly and its
    ``__post_init__`` runs, as ``__init__`` would do (``replace`` gathers and passes every
    field by keyword, most of the cost at every env reset)."""
    if not _plain_dataclass(type(config)):
        return dataclasses.replace(config, **changes)
    new = object.__new__(type(config))
    state = new.__dict__
    state.update(config.__dict__)
    state.update(changes)
    post_init = getattr(new, "__post_init__", None)
    if post_init is not None:
        post_init()
    return new


_PLAIN: dict[type, bool] = {}


def _plain_dataclass(cls: type) -> bool:
    """Whether every attribute of a ``cls`` instance is a field its ``__init__`` takes
    (no ``__slots__``, no ``init=False`` field, no ``InitVar`` or ``ClassVar``): then a
    copy with some fields changed needs only the fields set and ``__post_init__`` run."""
    plain = _PLAIN.get(cls)
    if plain is None:
        fields = dataclasses.fields(cls)
        plain = _PLAIN[cls] = (not hasattr(cls, "__slots__") and all(f.init for f in fields)
                               and len(fields) == len(getattr(cls, "__dataclass_fields__", ())))
    return plain
