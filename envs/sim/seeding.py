"""``numpy.random.default_rng(seed)`` for an integer seed, at a quarter of its cost.

Every env reset makes a generator for its simulation and one per workload instance
(``simulator.workload_builds``), ~4.6 per reset on the training suite, each from a drawn
integer seed.  ``numpy.random.default_rng(seed)`` takes ~9-10 µs here, ~8.8 of them in
``SeedSequence``'s Python-level work (turning the integer into words, the pool, the output
words).  :func:`default_rng` gives the same generator bit for bit -- the same
``PCG64`` state, the same draws -- from the same words computed in the compiled core
(``_fast.seed_state``), in ~2 µs.  ``tests/test_seeding.py`` compares the two.  Without
the compiled core (the reference simulator needs none) it is numpy's own.

The generator's ``bit_generator.seed_seq`` is an :class:`IntSeed`, which answers as
numpy's ``SeedSequence(seed)`` does: the same words for any ``generate_state``, the same
children from ``spawn`` (through a real ``SeedSequence``, made when first asked), the
same ``entropy``; and it pickles as that ``SeedSequence``, so a pickle holds numpy's
classes only.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISpawnableSeedSequence

try:
    from .fast._fast import seed_state
except ImportError:  # the compiled core is not built: numpy's own generators, the same ones
    seed_state = None  # type: ignore[assignment]

_WORDS64 = 1 << 64


class IntSeed(ISpawnableSeedSequence):
    """``numpy.random.SeedSequence(entropy)`` for an integer ``entropy`` in [0, 2**64),
    with no spawn key and the default pool of four words."""

    __slots__ = ("_seq", "entropy")

    def __init__(self, entropy: int | np.integer[Any]) -> None:
        if seed_state is None:
            raise RuntimeError("IntSeed needs the compiled core (envs/sim/fast); "
                               "reinstall ptreclaim to build it")
        e = operator.index(entropy)
        if not 0 <= e < _WORDS64:
            raise ValueError(f"IntSeed takes an integer in [0, 2**64), got {e}")
        self.entropy = e
        self._seq: np.random.SeedSequence | None = None

    spawn_key: tuple[int, ...] = ()
    pool_size = 4

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        """``SeedSequence(entropy).generate_state(n_words, dtype)``: uint32 or uint64."""
        if dtype is np.uint64 or dtype is np.uint32:  # PCG64 asks for (4, np.uint64)
            return seed_state(self.entropy, n_words, dtype is np.uint64)
        out = np.dtype(dtype)
        if out == np.dtype(np.uint32) or out == np.dtype(np.uint64):
            return seed_state(self.entropy, n_words, out == np.dtype(np.uint64))
        raise ValueError("only support uint32 or uint64")

    def _real(self) -> np.random.SeedSequence:
        if self._seq is None:
            self._seq = np.random.SeedSequence(self.entropy)
        return self._seq

    @property
    def n_children_spawned(self) -> int:
        return 0 if self._seq is None else self._seq.n_children_spawned

    def spawn(self, n_children: int) -> list[np.random.SeedSequence]:
        """``SeedSequence(entropy).spawn(n_children)``, counting children across calls as
        one ``SeedSequence`` does."""
        return self._real().spawn(n_children)

    def __reduce__(self) -> tuple[Any, ...]:
        spawned = self.n_children_spawned
        make = np.random.SeedSequence if not spawned else functools.partial(
            np.random.SeedSequence, n_children_spawned=spawned)
        return (make, (self.entropy,))

    def __repr__(self) -> str:
        return f"IntSeed({self.entropy})"


def default_rng(seed: int | np.integer[Any]) -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` for an integer ``seed`` in [0, 2**64) (a Python
    or NumPy integer), bit for bit; any other seed goes to numpy's own, and so does every
    seed when the compiled core is not built (the reference simulator runs without it)."""
    if seed_state is None:
        return np.random.default_rng(seed)
    try:
        seq = IntSeed(seed)
    except (TypeError, ValueError):
        return np.random.default_rng(seed)
    # numpy's stubs name SeedSequence; PCG64 takes any ISeedSequence, as numpy documents.
    return np.random.Generator(np.random.PCG64(seq))  # type: ignore[arg-type]
