"""The model against the live kernel, op by op: the comparison of one script.

:func:`compare_script` diffs the kernel's per-op VmPTE deltas
(:mod:`.oracle`) with the model's (:func:`ptreclaim.envs.sim.replay.replay`);
:func:`load_scripts` reads op scripts and adds generated ones.  The command
line is ``scripts/kernel_check.py`` (:mod:`ptreclaim.cli.kernel_check`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..sim.opscript import Script, parse_file, parse_text
from ..sim.replay import OpOutcome
from .oracle import OpResult


@dataclass(frozen=True)
class ScriptDiff:
    """The comparison of one script: ops that differ, as (index, kernel, model)."""

    name: str
    ops: int
    diffs: tuple[tuple[int, OpResult, OpOutcome], ...]

    @property
    def ok(self) -> bool:
        return not self.diffs


def compare_script(script: Script, kernel: Sequence[OpResult],
                   model: Sequence[OpOutcome]) -> ScriptDiff:
    """Op-by-op comparison: numbers must agree, and so must failing or not."""
    diffs = tuple(
        (i, k, m) for i, (k, m) in enumerate(zip(kernel, model, strict=True))
        if k.delta_kib != m.delta_kib or (k.failed is None) != (m.failed is None))
    return ScriptDiff(script.source, len(script.ops), diffs)


def load_scripts(paths: Sequence[str], generated: int, seed: int,
                 families: Sequence[str] | None = None, thp: bool = False) -> list[Script]:
    """The op scripts at ``paths``, then ``generated`` scripts of the seeded generator
    (of ``families`` only, when given; every one a THP script with ``thp``)."""
    scripts = [parse_file(p) for p in paths]
    if generated:
        from .scriptgen import generate_corpus

        corpus = generate_corpus(seed, generated, families, thp_share=1.0 if thp else 0.0)
        scripts += [parse_text(text, f"generated:{seed}:{name}") for name, text in corpus]
    return scripts


def diff_lines(script: Script, d: ScriptDiff, out: list[str]) -> None:
    """Append the lines that show the ops of ``script`` that ``d`` found different."""
    out.append(f"MISMATCH {d.name}: {len(d.diffs)} of {d.ops} ops differ")
    for i, k, m in d.diffs:
        op = script.ops[i]
        out.append(f"  line {op.lineno}: {op.text}")
        out.append(f"    kernel {k.delta_kib:>8} KiB  {k.failed or 'ok'}")
        out.append(f"    model  {m.delta_kib:>8} KiB  {m.failed or 'ok'}")
