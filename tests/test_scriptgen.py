"""The op-script generator: deterministic, parseable, on-topic per family, and cheap."""

from __future__ import annotations

import statistics
from collections import Counter

import numpy as np
import pytest

from ptreclaim.envs.kernel import scriptgen
from ptreclaim.envs.sim.opscript import PAGE, SLOT_SIZE, GiB, MiB, Op, Script, parse_text

PER_FAMILY = 40
TWO_M = 2 * MiB


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[Script]]:
    """PER_FAMILY parsed scripts per family (plus a THP share), from one seed."""
    out: dict[str, list[Script]] = {f: [] for f in scriptgen.FAMILIES}
    for name, text in scriptgen.generate_corpus(
            2024, PER_FAMILY * len(scriptgen.FAMILIES), thp_share=0.1):
        out[name.split("_", 1)[1]].append(parse_text(text, name))
    return out


def kinds(scripts: list[Script]) -> Counter[str]:
    """Op kinds over scripts: madvise by advice, mremap by flavour, mmap by kind/options."""
    c: Counter[str] = Counter()
    for s in scripts:
        for op in s.ops:
            c[op.name] += 1
            if op.name == "madvise":
                c[op.advice] += 1
            elif op.name == "mremap":
                if op.dst_ident is None:
                    c["mremap_grow" if op.new_length > op.length else "mremap_shrink"] += 1
                else:
                    c["mremap_move"] += 1
                    if op.dontunmap:
                        c["mremap_dontunmap"] += 1
            elif op.name == "mmap":
                c[f"mmap_{op.kind}_{op.share}"] += 1
                c.update(f"mmap_{flag}" for flag in op.flags)
                if op.fd is not None:
                    c["mmap_fd"] += 1
                if op.foff:
                    c["mmap_foff"] += 1
            elif op.name == "touch":
                c["touch_write" if op.write else "touch_read"] += 1
            if op.mayfail:
                c["mayfail"] += 1
    return c


def test_same_seed_same_corpus() -> None:
    a = scriptgen.generate_corpus(7, 24)
    b = scriptgen.generate_corpus(7, 24)
    assert a == b
    assert [n for n, _ in a][:3] == ["0000_allocator", "0001_balloon", "0002_virtio_mem"]


def test_different_seeds_differ() -> None:
    a = dict(scriptgen.generate_corpus(7, 16))
    b = dict(scriptgen.generate_corpus(8, 16))
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) == len(a)


def test_generate_depends_only_on_rng_state() -> None:
    for family in scriptgen.FAMILIES:
        one = scriptgen.generate(family, np.random.default_rng(99), 40)
        two = scriptgen.generate(family, np.random.default_rng(99), 40)
        assert one == two


def test_corpus_prefix_is_stable() -> None:
    # Each script has its own child generator: a longer corpus starts with the shorter.
    assert scriptgen.generate_corpus(3, 20)[:10] == scriptgen.generate_corpus(3, 10)


def test_unknown_family_rejected() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        scriptgen.generate("nope", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown family"):
        scriptgen.generate_corpus(0, 2, ["allocator", "nope"])


def test_every_family_documented() -> None:
    assert set(scriptgen.FAMILIES) == {"allocator", "balloon", "virtio_mem", "hog", "kdump",
                                       "file", "layout", "mixed"}
    for family in scriptgen.FAMILIES:
        assert len(scriptgen.family_doc(family)) > 20


def test_every_family_parses_with_about_n_ops(corpus: dict[str, list[Script]]) -> None:
    for family, scripts in corpus.items():
        assert len(scripts) == PER_FAMILY
        lengths = [len(s.ops) for s in scripts]
        assert statistics.median(lengths) >= 0.8 * scriptgen.DEFAULT_N_OPS, family
        assert max(lengths) <= scriptgen.DEFAULT_N_OPS + 16, family


def test_n_ops_is_honoured() -> None:
    for family in scriptgen.FAMILIES:
        s = parse_text(scriptgen.generate(family, np.random.default_rng(1), n_ops=150))
        assert 100 <= len(s.ops) <= 170, family


def test_touch_budget(corpus: dict[str, list[Script]]) -> None:
    for scripts in corpus.values():
        for s in scripts:
            touches = sum(-(-op.length // op.stride) for op in s.ops if op.name == "touch")
            assert touches <= scriptgen.TOUCH_BUDGET, s.source
            assert scriptgen.page_cost(s) <= scriptgen.TOUCH_BUDGET, s.source


def _ranges(op: Op) -> list[tuple[int, int]]:
    if op.name in ("mmap", "touch", "madvise", "munmap", "mprotect", "mlock", "munlock"):
        return [(op.off, op.length)]
    if op.name == "mremap":
        out = [(op.off, max(op.length, op.new_length))]
        if op.dst_ident is not None:
            out.append((op.dst_off, op.new_length))
        return out
    return []


def test_ranges_stay_in_their_slot(corpus: dict[str, list[Script]]) -> None:
    for scripts in corpus.values():
        for s in scripts:
            for op in s.ops:
                assert 0 <= op.ident <= scriptgen.MAX_IDENT
                assert op.dst_ident is None or op.dst_ident <= scriptgen.MAX_IDENT
                for off, length in _ranges(op):
                    assert length > 0, (s.source, op.text)
                    assert off >= 0 and off + length <= SLOT_SIZE, (s.source, op.text)


def test_no_sleep_and_regular_forks(corpus: dict[str, list[Script]]) -> None:
    for family, scripts in corpus.items():
        assert not any(op.name == "sleep" for s in scripts for op in s.ops)
        with_fork = sum(any(op.name == "fork" for op in s.ops) for s in scripts)
        assert with_fork >= 0.7 * len(scripts), family


def test_mostly_aligned_numbers(corpus: dict[str, list[Script]]) -> None:
    offs = [op.off for scripts in corpus.values() for s in scripts for op in s.ops
            if op.name in ("madvise", "munmap", "mprotect", "mmap", "mremap")]
    assert sum(o % PAGE == 0 for o in offs) / len(offs) > 0.99
    related = sum(o % TWO_M in (0,) or o % TWO_M < 64 * 1024 or TWO_M - o % TWO_M <= 64 * 1024
                  for o in offs)
    assert related / len(offs) > 0.5


def test_thp_scripts() -> None:
    text = scriptgen.generate("allocator", np.random.default_rng(5), thp=True)
    assert text.startswith("# ptoracle-opts: -t\n")
    assert parse_text(text).thp
    plain = scriptgen.generate_corpus(11, 40)
    assert not any(parse_text(t).thp for _, t in plain)  # off by default
    share = scriptgen.generate_corpus(11, 200, thp_share=0.25)
    thp = [parse_text(t) for _, t in share if t.startswith("# ptoracle-opts: -t")]
    assert 20 <= len(thp) <= 80
    c = kinds(thp)
    assert c["mmap_hugepage"] + c["HUGEPAGE"] > 0 and c["COLLAPSE"] + c["thp"] > 0
    # COLLAPSE can fail for many reasons: always mayfail
    assert all(op.mayfail for s in thp for op in s.ops if op.advice == "COLLAPSE")


def test_thp_scripts_collapse_shmem_then_refault() -> None:
    """THP scripts collapse shmem and then touch it again, right away or after an op
    that unmaps or splits the huge folio (R24); the model PMD-maps file THPs in them."""
    from ptreclaim.envs.sim.replay import ScriptMachine

    corpus = scriptgen.generate_corpus(31, 120, thp_share=1.0)
    sequences = 0
    between: Counter[str] = Counter()
    with_file_thp = 0
    for name, text in corpus:
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        for i, line in enumerate(lines):
            if "# shmem THP" not in line:
                continue
            assert " COLLAPSE mayfail" in line, line
            sequences += 1
            for later in lines[i + 1:i + 6]:
                if "# refault" in later:
                    break
                words = later.split()
                between[words[4] if words[0] == "madvise" else words[0]] += 1
        machine = ScriptMachine(thp=True)
        seen = False
        for op in parse_text(text, name).ops:
            machine.apply(op)
            seen = seen or bool(machine.mm.file_thp)
        with_file_thp += seen
    assert sequences >= 15  # 25 with this seed: about one script in five
    assert {"DONTNEED", "mprotect", "fork", "munmap", "mremap", "thp"} <= set(between)
    assert between["COLD"] + between["PAGEOUT"] > 0 and between["punch"] + between["REMOVE"] > 0
    assert with_file_thp >= 0.08 * len(corpus)  # 15 of 120 with this seed


FAMILY_OPS = {
    "allocator": {"touch_write", "DONTNEED", "FREE", "mmap_norsv", "mmap_fixed", "munmap",
                  "mprotect", "mremap_grow", "mremap_shrink", "fork"},
    "balloon": {"DONTNEED", "touch_write", "fork", "punch"},
    "virtio_mem": {"DONTNEED", "touch_write", "POPULATE_WRITE", "punch", "REMOVE",
                   "mmap_shmem_shared", "mmap_file_shared"},
    "hog": {"mmap_norsv", "touch_write", "touch_read", "DONTNEED", "fork"},
    "kdump": {"touch_read", "touch_write", "DONTNEED", "fork"},
    "file": {"mmap_file_shared", "mmap_file_private", "mmap_shmem_shared", "mmap_fd",
             "mmap_foff", "touch_read", "touch_write", "punch", "truncate", "REMOVE",
             "PAGEOUT", "DONTNEED", "fork"},
    "layout": {"mprotect", "mlock", "munlock", "DONTFORK", "DOFORK", "WIPEONFORK",
               "KEEPONFORK", "HUGEPAGE", "NOHUGEPAGE", "RANDOM", "SEQUENTIAL", "NORMAL",
               "GUARD_INSTALL", "GUARD_REMOVE", "mmap_fixed", "munmap", "mremap_grow",
               "mremap_shrink", "mremap_move", "mremap_dontunmap", "fork", "mayfail"},
    "mixed": {"touch_write", "DONTNEED", "mprotect", "munmap", "mremap_move", "mlock",
              "GUARD_INSTALL", "fork", "mayfail"},
}


@pytest.mark.parametrize("family", scriptgen.FAMILIES)
def test_family_exercises_its_ops(family: str, corpus: dict[str, list[Script]]) -> None:
    c = kinds(corpus[family])
    missing = {k for k in FAMILY_OPS[family] if c[k] == 0}
    assert not missing, (family, missing)


def test_jemalloc_purges_are_small_and_unaligned() -> None:
    lengths, aligned = [], 0
    for _, text in scriptgen.generate_corpus(5, 120, ["allocator"]):
        if "# jemalloc on" not in text:
            continue
        for op in parse_text(text).ops:
            if op.name == "madvise" and op.advice == "DONTNEED":
                lengths.append(op.length)
                first = -(-op.off // TWO_M) * TWO_M
                aligned += first + TWO_M <= op.off + op.length
    assert len(lengths) > 200
    assert 32 * 1024 <= statistics.median(lengths) <= 64 * 1024
    assert aligned / len(lengths) < 0.06


def test_balloon_inflates_pages_and_reports_aligned_blocks(
        corpus: dict[str, list[Script]]) -> None:
    dontneeds = [op for s in corpus["balloon"] for op in s.ops
                 if op.name == "madvise" and op.advice == "DONTNEED"]
    assert sum(op.length == PAGE for op in dontneeds) > 0.3 * len(dontneeds)
    reports = [op for op in dontneeds if op.length in (TWO_M, 4 * MiB)]
    # guest RAM starts 2 MiB aligned; a 4 MiB report is aligned in guest-physical terms
    assert reports and all(op.off % TWO_M == 0 for op in reports)


def test_virtio_mem_blocks_are_aligned(corpus: dict[str, list[Script]]) -> None:
    sizes: Counter[int] = Counter()
    for s in corpus["virtio_mem"]:
        for op in s.ops:
            if op.name == "madvise" and op.advice in ("DONTNEED", "REMOVE") and \
                    op.length >= TWO_M and op.off % TWO_M == 0:
                sizes[op.length] += 1
    assert {TWO_M, 128 * MiB} <= set(sizes) or len(sizes) >= 4


def test_hog_maps_huge_and_touches_sparsely(corpus: dict[str, list[Script]]) -> None:
    big = [op for s in corpus["hog"] for op in s.ops
           if op.name == "mmap" and op.length >= 64 * GiB]
    assert big and all("norsv" in op.flags for op in big)
    strides = Counter(op.stride for s in corpus["hog"] for op in s.ops if op.name == "touch")
    assert strides[TWO_M] > 0 and strides[GiB] > 0


def test_kdump_reads_after_dontneed(corpus: dict[str, list[Script]]) -> None:
    ok = 0
    for s in corpus["kdump"]:
        names = [(op.name, op.advice, op.write) for op in s.ops]
        first_dn = names.index(("madvise", "DONTNEED", False)) if \
            ("madvise", "DONTNEED", False) in names else len(names)
        ok += any(n == ("touch", "", False) for n in names[first_dn:])
    assert ok >= 0.8 * len(corpus["kdump"])


def test_mixed_has_failing_ops_marked(corpus: dict[str, list[Script]]) -> None:
    c = kinds(corpus["mixed"])
    assert c["mayfail"] > 0.02 * sum(len(s.ops) for s in corpus["mixed"])


def test_number_format_round_trips() -> None:
    from ptreclaim.envs.sim.opscript import parse_number

    rng = np.random.default_rng(0)
    values = [0, PAGE, TWO_M - PAGE, GiB - TWO_M, GiB + TWO_M + 12 * 1024, 511 * GiB,
              SLOT_SIZE - PAGE] + [int(x) * PAGE for x in rng.integers(1, 2**27, 500)]
    for v in values:
        assert parse_number(scriptgen._fmt(v)) == v, v
