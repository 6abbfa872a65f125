"""Tests of the live-kernel oracle (envs/kernel/ptoracle.c + oracle.py).

The replay tests need a kernel like the one the experiments were recorded on
(Linux with CONFIG_PT_RECLAIM=y); elsewhere they skip with the reason given by
``kernel_status()``.  The build and input-validation tests only need Linux and
a C compiler.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from ptreclaim.envs.kernel import oracle
from ptreclaim.envs.kernel.oracle import (
    OpResult,
    OracleError,
    OracleUnavailable,
    build_oracle,
    kernel_status,
    parse_output,
    run_normalized,
    run_script,
)
from ptreclaim.envs.sim.opscript import (
    OpScriptError,
    Script,
    parse_file,
    parse_text,
    read_expected,
)

DATA = Path(__file__).parent / "data" / "kernel"
SCRIPTS = sorted(DATA.glob("*.script"))
SOURCE = Path(oracle.__file__).with_name(oracle.SOURCE_NAME)

#: Every op that fails in the recorded experiments (RULES.md, "[FAILED: ...]"),
#: by script and 0-based op index.  All other ops must succeed.
KNOWN_FAILURES: dict[str, dict[int, str]] = {
    "E08_locked": {2: "madvise: EINVAL"},            # DONTNEED on an mlocked VMA
    "E13_guard": {4: "touch: SIGSEGV"},              # read of a guard marker
    "E25_collapse_thp_off": {3: "madvise: EINVAL"},  # COLLAPSE with THP disabled
    "E27_thp_collapse": {10: "madvise: EINVAL"},     # COLLAPSE of a read-only ext4 file
    "E28_populate": {9: "touch: SIGSEGV",            # PROT_NONE
                     12: "touch: SIGBUS"},           # beyond EOF of a truncated file
    "E34_mremap_multi": {2: "touch: SIGSEGV",        # the gap between two VMAs
                         16: "mremap: EFAULT"},      # source starts in a hole
    "E43_shmem_thp_refault": {6: "touch: SIGSEGV"},  # the page split off by munmap
    "E44_shmem_thp_collapse": {
        8: "madvise: EINVAL",    # an empty 2 MiB of the memfd stops MADV_COLLAPSE
        23: "madvise: EINVAL",   # a COW page in the table (SCAN_FAIL)
        30: "madvise: EINVAL",   # a guard marker in the table (SCAN_PTE_NON_PRESENT)
        31: "touch: SIGSEGV",    # ... which survives the collapse
        34: "madvise: EINVAL",   # a shmem VMA with no room for an aligned 2 MiB
        37: "madvise: EINVAL",   # an anon one
    },
    "E46_shmem_thp_split_vma": {16: "touch: SIGSEGV"},  # PROT_NONE
    "E52_shmem_thp_past_eof": {6: "touch: SIGBUS",      # read, window past the end
                               7: "touch: SIGBUS"},     # write fault past the end
}

#: The `maps` output recorded in RULES.md, per maps op, as "ID START_KIB END_KIB PERMS".
_E34_1 = ("1 0 2048 rw-p", "1 4096 6144 rw-p")
_E34_3 = (*_E34_1, "3 0 2048 rw-s", "3 2048 4096 rw-s")
_E41 = ("0 0 1024 rw-p", "0 1024 2048 rw-p")
KNOWN_MAPS: dict[str, list[tuple[str, ...]]] = {
    "E34_mremap_multi": [_E34_1, _E34_3, (*_E34_3, "5 0 2048 rw-s", "5 2048 4096 rw-s")],
    "E36_dontunmap_fork_file_private": [("0 16384 16388 rw-p", "1 14336 14340 rw-p")],
    "E38_guard_flag_merge": [
        ("0 0 2048 rw-p",), ("0 0 2048 rw-p",), ("0 0 2048 rw-p",),
        ("0 0 1024 rw-p", "0 1024 1028 r--p", "0 1028 2048 rw-p"),
        ("0 0 2048 rw-p",), ("0 0 3072 rw-p",),
    ],
    "E40_mremap_shrink_cross": [("0 0 2048 rw-p",)],
    "E41_vma_boundaries": [_E41, (*_E41, "1 0 2048 rw-p")],
    # the DONTUNMAP source keeps VM_ACCOUNT and merges with its new neighbour
    "E49_dontunmap_account": [("5 0 112052 rw-p", "6 79872 88688 rw-p"),
                              ("5 0 112052 rw-p", "6 79872 88688 rw-p", "7 118784 230836 rw-p")],
}


@pytest.fixture(scope="module")
def kernel() -> None:
    """Skip unless the running kernel can serve as the oracle."""
    ok, why = kernel_status()
    if not ok:
        pytest.skip(f"kernel oracle unavailable: {why}")


@pytest.fixture(scope="module")
def exe() -> Path:
    """The compiled oracle program (skips without Linux or a C compiler)."""
    if platform.system() != "Linux":
        pytest.skip("the oracle program is Linux-only")
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler")
    return build_oracle()


@functools.cache
def _replay(name: str) -> tuple[Script, tuple[OpResult, ...]]:
    """Replay one shipped experiment once per test session (shared by several tests)."""
    script = parse_file(DATA / f"{name}.script")
    return script, tuple(run_script(script))


def test_experiments_are_shipped() -> None:
    assert len(SCRIPTS) >= 40
    for path in SCRIPTS:
        assert path.with_suffix(".expected").exists(), path


@pytest.mark.kernel
def test_kernel_status_is_one_line() -> None:
    ok, why = kernel_status()
    assert isinstance(ok, bool)
    assert why and "\n" not in why


@pytest.mark.kernel
@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_experiment_replays_exactly(kernel: None, path: Path) -> None:
    script, results = _replay(path.stem)
    expected = read_expected(path.with_suffix(".expected"))
    assert len(results) == len(script.ops) == len(expected)
    got = [r.delta_kib for r in results]
    if got != expected:
        rows = enumerate(zip(script.ops, got, expected, strict=True))
        diff = [f"op {i} {op.text!r}: got {g}, expected {e}" for i, (op, g, e) in rows if g != e]
        pytest.fail("; ".join(diff))
    failures = {i: r.failed for i, r in enumerate(results) if r.failed is not None}
    assert failures == KNOWN_FAILURES.get(path.stem, {})
    # An op that fails must be one the script marks as allowed to fail.
    assert all(script.ops[i].mayfail for i in failures)


@pytest.mark.kernel
@pytest.mark.parametrize(("name", "index", "status"), [
    ("E08_locked", 2, "madvise: EINVAL"),
    ("E13_guard", 4, "touch: SIGSEGV"),
    ("E28_populate", 9, "touch: SIGSEGV"),
    ("E28_populate", 12, "touch: SIGBUS"),
    ("E34_mremap_multi", 16, "mremap: EFAULT"),
])
def test_known_failure_status(kernel: None, name: str, index: int, status: str) -> None:
    script, results = _replay(name)
    assert script.ops[index].name == status.split(":")[0]
    assert results[index].failed == status


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(KNOWN_MAPS))
def test_maps_match_recorded(kernel: None, name: str) -> None:
    script, results = _replay(name)
    maps = [r.maps for op, r in zip(script.ops, results, strict=True) if op.name == "maps"]
    assert maps == KNOWN_MAPS[name]
    assert all(not r.maps for op, r in zip(script.ops, results, strict=True) if op.name != "maps")


@pytest.mark.kernel
def test_thp_header_is_honoured(kernel: None) -> None:
    """MADV_COLLAPSE of anon memory fails with THP disabled and works with -t."""
    text = "mmap 0 anon private 4M\ntouch 0 0 4M write\nmadvise 0 0 2M COLLAPSE\n"
    off = run_script(parse_text(text))
    on = run_script(parse_text("# ptoracle-opts: -t\n" + text))
    assert off[2].failed == "madvise: EINVAL"
    assert on[2].failed is None
    assert [r.delta_kib for r in off] == [r.delta_kib for r in on] == [0, 16, 16]


@pytest.mark.kernel
def test_slot_overlapping_own_memory_is_refused(kernel: None) -> None:
    # The program's stack lies in the last slot (just below 128 TiB); sharing
    # its tables would skew the numbers, so the script is refused.  The slot
    # below is free on every run (ASLR is switched off for the program).
    with pytest.raises(OracleError, match="overlaps"):
        run_normalized("mmap 223 anon private 4096 0\n", 1)
    with pytest.raises(OpScriptError, match="from 0 to 222"):
        parse_text("mmap 223 anon private 4K\n")
    text = "mmap 222 anon private 8M 511G-8M\ntouch 222 511G-8M 8M write 2M\n"
    assert [r.delta_kib for r in run_script(parse_text(text))] == [0, 24]


def test_run_script_raises_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle, "kernel_status", lambda: (False, "no PT_RECLAIM here"))
    with pytest.raises(OracleUnavailable, match="no PT_RECLAIM here"):
        run_script(parse_text("nop\n"))


def test_parse_output() -> None:
    out = "0\tok\n#maps 1 0 2048 rw-p\n#maps 3 4 8 r--s\n12\tok\n12\tFAILED:touch:SIGSEGV\n"
    assert parse_output(out) == [
        OpResult(0, None, ()),
        OpResult(12, None, ("1 0 2048 rw-p", "3 4 8 r--s")),
        OpResult(12, "touch: SIGSEGV", ()),
    ]
    for bad in ("12\n", "x\tok\n", "4\tweird\n", "0\tok\n#maps 1 0 4 rw-p\n"):
        with pytest.raises(OracleError):
            parse_output(bad)


def test_rebuilt_when_source_changes(exe: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTRECLAIM_CACHE", str(tmp_path / "cache"))
    first = build_oracle()
    assert first.parent == tmp_path / "cache"
    stamp = first.stat().st_mtime_ns
    assert build_oracle() == first and first.stat().st_mtime_ns == stamp  # reused

    edited = tmp_path / "ptoracle.c"
    edited.write_bytes(SOURCE.read_bytes() + b"\n/* edited */\n")
    second = build_oracle(edited)
    assert second != first and second.is_file() and os.access(second, os.X_OK)
    assert build_oracle() == first  # the original is still cached
    # Only the two binaries: no temporary build directories left behind.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.name, second.name])


def test_compiles_without_warnings(exe: Path, tmp_path: Path) -> None:
    cc = os.environ.get("CC") or "cc"
    proc = subprocess.run([cc, *oracle.CFLAGS, "-c", "-o", str(tmp_path / "p.o"), str(SOURCE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.kernel
@pytest.mark.parametrize("text", [
    "bogus\n",
    "mmap 0 anon private\n",
    "mmap 0 anon private 4K 0\n",               # suffixes are not normalized form
    "mmap 0 anon private 4096 0 sparkly\n",
    "mmap 0 anon private 4096 0 foff=4096\n",   # foff= on anon
    "touch 0 0 4096 write\n",                   # normalized form always has STRIDE
    "touch 0 0 4096 poke 4096\n",
    "touch 224 0 4096 read 4096\n",             # ID out of range
    "touch 0 549755813888 4096 read 4096\n",    # past the 512 GiB slot
    "madvise 0 0 4096 SHRED\n",
    "mremap 0 0 4096 8192 dontunmap\n",
    "nop\n\nnop\n",                             # an empty line is not an op
    "thp maybe\n",
])
def test_malformed_input_exits_2(exe: Path, text: str) -> None:
    proc = subprocess.run([str(exe)], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""  # the whole input is checked before any op runs
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("ptoracle: ")


@pytest.mark.kernel
def test_unknown_option_exits_2(exe: Path) -> None:
    proc = subprocess.run([str(exe), "-x"], input="nop\n", capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
