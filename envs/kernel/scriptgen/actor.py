"""The base of the generator's actors: one simulated program (or program part) each,
driving its own IDs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ptreclaim.envs.sim.opscript import PAGE

from .builder import _Builder


class _Actor:
    """A program that owns some IDs and emits a few ops per :meth:`step`."""

    n_ids = 1

    def __init__(self, b: _Builder, ids: list[int]) -> None:
        self.b = b
        self.rng = b.rng
        self.ids = ids

    def setup(self) -> None:
        """Initial mappings."""

    def step(self) -> None:
        """A few ops of steady-state behaviour."""

    # helpers shared by actors

    def act(self, table: Sequence[tuple[str, float, Callable[[], object]]]) -> None:
        """Draw one ``(name, weight, action)`` row by weight (one :func:`_weighted`
        draw, so a script depends on the weights only) and run its action."""
        what = self.rng.weighted([(name, weight) for name, weight, _ in table])
        next(action for name, _, action in table if name == what)()

    def huge(self, prob: float = 0.5) -> bool:
        """Whether to ask for THP on a new anon mapping (THP scripts only)."""
        return self.b.thp and self.rng.p(prob)

    def touch_run(self, ident: int, off: int, length: int, write: bool = True,
                  max_accesses: int = 256) -> bool:
        """Touch [off, off+length) with the smallest power-of-two stride that keeps the
        number of accesses under ``max_accesses``."""
        return self.b.touch(ident, off, length, write, _sparse_stride(length, max_accesses))


def _sparse_stride(length: int, max_accesses: int) -> int:
    """The smallest power-of-two stride (>= 4 KiB) giving at most ``max_accesses``."""
    stride = PAGE
    while -(-length // stride) > max_accesses:
        stride *= 2
    return stride
