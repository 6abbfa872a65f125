"""Real page-table traces: /proc readers, capture, the trace format, replay
fidelity of the shipped traces, and the ``trace`` workload family."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ptreclaim.cli.capture_trace import main
from ptreclaim.envs.configio import load_scenario, load_suite
from ptreclaim.envs.host import procfs
from ptreclaim.envs.host.capture import GOAL_REL, GOAL_TABLES, parse_strace
from ptreclaim.envs.sim.config import ConfigError
from ptreclaim.envs.sim.pagetable import AddressSpace
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec
from ptreclaim.envs.sim.trace import Trace, TraceError, TraceWriter, read_trace
from ptreclaim.envs.sim.workloads.trace import (
    UNWRITTEN_TAIL,
    TracePlayer,
    compile_trace,
    replay,
    resolve_trace,
    shipped_traces,
)

ROOT = Path(__file__).resolve().parents[1]
TRACES = sorted((ROOT / "data" / "traces").glob("*.npz"))
MiB = 1 << 20
#: 512 GiB-aligned: the child's region owns its PTE, PMD and PUD tables.
REGION = 0x600000000000
HAS_PROCFS = Path("/proc/self/pagemap").exists()

# A child with a known touch pattern: block i of a 32 MiB region gets pages
# 0..i; then [0, 8M) is DONTNEED'd (4 tables freed on 6.14+, R6) and
# [8M+4K, 16M) too (zaps pages 1.. of blocks 4..7, frees the 3 fully covered).
CHILD = textwrap.dedent(f"""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    base = {REGION}
    size = 32 << 20
    # MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
    assert libc.mmap(base, size, 3, 0x22 | 0x100000, -1, 0) == base
    buf = (ctypes.c_char * size).from_address(base)
    def stage(name):
        print(name, flush=True)
        sys.stdin.readline()
    stage("mapped")
    for i in range(16):
        for k in range(i + 1):
            buf[i * (2 << 20) + k * 4096] = b"x"
    stage("touched")
    assert libc.madvise(base, 8 << 20, 4) == 0
    assert libc.madvise(base + (8 << 20) + 4096, (8 << 20) - 4096, 4) == 0
    stage("zapped")
""")


@pytest.fixture()
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _advance(proc: subprocess.Popen[str], expect: str, first: bool = False) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    if not first:
        proc.stdin.write("\n")
        proc.stdin.flush()
    assert proc.stdout.readline().strip() == expect


def _region_counts(pres: procfs.BlockPresence) -> dict[int, int]:
    lo = REGION >> 21
    sel = (pres.block >= lo) & (pres.block < lo + 16)
    return {int(b) - lo: int(n) for b, n in zip(pres.block[sel], pres.present[sel], strict=True)}


# -- procfs -------------------------------------------------------------------


@pytest.mark.skipif(not HAS_PROCFS, reason="needs /proc/PID/pagemap")
@pytest.mark.parametrize("method", ["pagemap_scan", "pagemap"])
def test_child_presence_and_vmpte(child: subprocess.Popen[str], method: str) -> None:
    _advance(child, "mapped", first=True)
    pid = child.pid
    before = procfs.read_status(pid)["VmPTE"]
    assert _region_counts(procfs.block_presence(pid, method="auto")) == {}
    _advance(child, "touched")
    try:
        pres = procfs.block_presence(pid, method=method, bitmap=True)
    except procfs.PagemapUnavailable:
        pytest.skip("PAGEMAP_SCAN needs Linux >= 6.7")
    assert pres.method == method
    assert _region_counts(pres) == {i: i + 1 for i in range(16)}
    # 16 PTE tables + 1 PMD + 1 PUD table (R1), 4 KiB each.
    assert procfs.read_status(pid)["VmPTE"] - before == 4 * (16 + 2)
    # The bitmap names the pages: block 3 holds pages 0..3.
    assert pres.bits is not None
    row = int(np.flatnonzero(pres.block == (REGION >> 21) + 3)[0])
    assert list(np.flatnonzero(np.unpackbits(pres.bits[row]))) == [0, 1, 2, 3]
    _advance(child, "zapped")
    pres = procfs.block_presence(pid, method=method)
    expect = {4: 1} | {i: i + 1 for i in range(8, 16)}
    assert _region_counts(pres) == expect
    # Blocks 0-3 and 5-7 fully covered by a DONTNEED: 7 tables freed; block 4
    # keeps its table (and its first page), PMD/PUD stay.
    status = procfs.read_status(pid)
    assert status["VmPTE"] - before == 4 * (9 + 2)
    # Outside the region other tables may be empty too, so only a lower bound.
    assert procfs.estimate_empty_tables(status, pres) >= 0


@pytest.mark.skipif(not HAS_PROCFS, reason="needs /proc/PID/pagemap")
def test_more_runs_than_one_scan_returns_count_each_page_once() -> None:
    """PAGEMAP_SCAN returns at most 4,096 runs a call; the next call starts where the
    walk stopped, which may lie before the end of the last run returned. Those pages
    came twice (a block of 256 present pages read 512; the shipped redis trace holds
    counts up to 1,024): each counts once, as the raw pagemap counts it."""
    import mmap

    size = 64 << 20  # 32 blocks x 256 runs of one page: 8,192 runs, two calls at least
    m = mmap.mmap(-1, size + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf = np.frombuffer(m, dtype=np.uint8)
        base = (buf.ctypes.data + (2 << 20) - 1) & ~((2 << 20) - 1)
        off = base - buf.ctypes.data
        m.madvise(mmap.MADV_NOHUGEPAGE, off, size)
        buf[off:off + size:8192] = 1  # every other page
        counts = {}
        for method in ("pagemap_scan", "pagemap"):
            try:
                pres = procfs.block_presence("self", method=method, bitmap=True)
            except procfs.PagemapUnavailable:
                pytest.skip("PAGEMAP_SCAN needs Linux >= 6.7")
            sel = (pres.block >= base >> 21) & (pres.block < (base + size) >> 21)
            counts[method] = pres.present[sel].tolist()
            assert pres.bits is not None
            assert all(int(np.unpackbits(row).sum()) == 256 for row in pres.bits[sel])
        assert counts["pagemap_scan"] == counts["pagemap"] == [256] * 32
    finally:
        buf = None  # the view first, or the map cannot close
        m.close()


def test_procfs_errors() -> None:
    with pytest.raises(procfs.ProcessGone):
        procfs.read_status(2**22 + 12345)
    with pytest.raises(ValueError, match="method"):
        procfs.block_presence("self", method="nope")
    maps = procfs.read_maps("self")
    assert maps and all(m.start < m.end for m in maps)
    assert "VmPTE" in procfs.read_status() and procfs.read_status()["Pid"] > 0


def test_estimate_empty_tables() -> None:
    blocks = np.array([10, 11, 600], dtype=np.int64)
    z = np.zeros(3, dtype=np.int32)
    pres = procfs.BlockPresence(blocks, np.array([1, 512, 3], dtype=np.int32), z,
                                np.array([False, True, False]), z, z, "pagemap_scan")
    # 3 blocks with pages in 2 GiB ranges of one 512 GiB range: 2 PMD + 1 PUD.
    # VmPTE 40 kB = 10 tables: 10 - 3 upper - 3 occupied = 4 empty.
    assert procfs.estimate_empty_tables({"VmPTE": 40}, pres) == 4
    assert procfs.estimate_empty_tables({"VmPTE": 4}, pres) == 0


# -- capture ------------------------------------------------------------------

DRIVER = textwrap.dedent("""
    import mmap, time
    time.sleep(0.3)  # the capturer's first samples come before the sweep
    M = 1 << 20
    m = mmap.mmap(-1, 64 * M)
    for r in range(2):
        for i in range(0, 64 * M, 2 * M):
            m[i + 4096 * (r + 1)] = 1
        time.sleep(0.25)
        m.madvise(mmap.MADV_DONTNEED, 0, 16 * M)
        m.madvise(mmap.MADV_DONTNEED, 16 * M + 4096, 16 * M)
        time.sleep(0.25)
    m.close()
    time.sleep(0.25)
""")


@pytest.mark.skipif(shutil.which("strace") is None or not HAS_PROCFS,
                    reason="needs strace and /proc")
def test_record_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "drv.py"
    script.write_text(DRIVER)
    out = tmp_path / "t.npz"
    rc = main(["record", "-q", "-o", str(out), "--interval-ms", "40", "--",
               sys.executable, str(script)])
    assert rc == 0
    trace = read_trace(out)
    assert trace.samples >= 10 and trace.has_syscalls
    ops = trace["sys_op"]
    madv = trace["sys_args"][ops == 2]
    # The two DONTNEEDs of each round, with their exact arguments.
    assert sum(1 for a in madv if a[1] == 16 * MiB and a[2] == 4) >= 2
    peak = int(trace.vm_pte_kib.max())
    assert peak - int(trace.vm_pte_kib[0]) >= 4 * 32  # 32 tables for the sweep
    report = replay(trace)
    assert report.summary(GOAL_REL, GOAL_TABLES)["all_within_goal"], report.window_error_tables
    png = tmp_path / "t.png"
    assert main(["check", str(out), "--png", str(png), "--rows", "5"]) == 0
    assert png.stat().st_size > 1000
    assert "within the goal" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == trace.samples and info["syscalls"]["madvise"] >= 4


def test_parse_strace_threads() -> None:
    log = textwrap.dedent("""\
        100  1000.000100 mmap(NULL, 8192, 0x3, 0x22, -1, 0) = 0x7f0000000000 <0.000010>
        101  1000.000200 madvise(0x7f0000001000, 4096, 0x4 <unfinished ...>
        100  1000.000250 munmap(0x7f0000000000, 4096) = 0 <0.000020>
        101  1000.000400 <... madvise resumed>) = 0 <0.000300>
        100  1000.000500 mmap(NULL, 4096, 0x1, 0x2, 3</usr/lib/libc.so.6>, 0x1000) = 0x7f01 <0.0>
        100  1000.000600 mprotect(0x7f01, 4096, 0) = -1 ENOMEM (Cannot allocate memory) <0.000001>
        102  1000.000700 brk(NULL <unfinished ...>
        100  1000.000800 +++ exited with 0 +++
    """)
    w = TraceWriter({})
    w.add_maps([(0x1000, 0x2000, 0, 0, 3, "")])
    z = np.zeros(0, dtype=np.int64)
    w.add_sample(0.0, 4, 4, 4, z, z, z, z, z, z.astype(bool), np.zeros((0, 64), np.uint8))
    assert parse_strace(log, w, offset_s=999.0, t0=0.0) == 5
    t = w.finish()
    names = [("mmap", "munmap", "madvise", "mremap", "brk", "mprotect")[o] for o in t["sys_op"]]
    assert names == ["mmap", "munmap", "madvise", "mmap", "mprotect"]  # by completion time
    assert t["sys_tid"][2] == 101 and t["sys_args"][2][1] == 4096
    assert t.syscall_path(3) == "/usr/lib/libc.so.6" and t["sys_args"][3][5] == 0x1000
    assert t["sys_ret"][4] == -12
    assert abs(t["sys_t_ms"][2] - 1000.5) < 1e-3  # 1.0002 s + 0.3 ms, after the offset


# -- format -------------------------------------------------------------------


def _tiny_trace() -> TraceWriter:
    w = TraceWriter({"command": ["x"]})
    w.add_maps([(0x200000, 0x600000, 0, 0, 3, "")])
    bits = np.zeros((2, 64), dtype=np.uint8)
    bits[:, 0] = 0x80
    one = np.ones(2, dtype=np.int32)
    z = np.zeros(2, dtype=np.int32)
    w.add_sample(0.0, 16, 16, 8, np.array([1, 2]), one, z, z, z, z.astype(bool), bits)
    w.add_sample(100.0, 16, 16, 4, np.array([1]), one[:1], z[:1], z[:1], z[:1],
                 z[:1].astype(bool), bits[:1])
    return w


def test_roundtrip_and_deterministic_bytes(tmp_path: Path) -> None:
    t = _tiny_trace().finish()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    t.save(a)
    _tiny_trace().finish().save(b)
    assert a.read_bytes() == b.read_bytes()
    back = read_trace(a)
    assert back.samples == 2 and back.meta["command"] == ["x"]
    # Only changes are stored: block 2 vanishes at sample 1.
    assert [(blk, st.present) for blk, st in back.changes(1)] == [(2, 0)]
    assert list(back.blocks_at(0)) == [1, 2] and list(back.blocks_at(1)) == [1]
    assert [r.end for r in back.maps(0)] == [0x600000]


def _rewrite(src: Path, dst: Path, **changes: np.ndarray) -> None:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(dst, **arrays)  # type: ignore[arg-type]


def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.npz"
    _tiny_trace().finish().save(good)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    meta = json.loads(np.load(good)["meta"].tobytes())
    newer = tmp_path / "newer.npz"
    _rewrite(good, newer, meta=np.frombuffer(json.dumps({**meta, "version": 99}).encode(),
                                             dtype=np.uint8))
    damaged = tmp_path / "damaged.npz"
    _rewrite(good, damaged, vm_pte_kib=np.array([1], dtype=np.int64))
    deep = tmp_path / "deep.npz"
    _rewrite(good, deep, meta=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("meta.npy", b"garbage")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(buf.getvalue())
    cases = {
        tmp_path / "missing.npz": "no such trace file",
        text: "not a ptreclaim trace",
        foreign: "not a ptreclaim trace",
        cut: "truncated or damaged",
        garbage: "truncated or damaged",
        newer: "version 99",
        damaged: "damaged trace: vm_pte_kib has 1 values",
        deep: "nests deeper than Python's JSON reader",
    }
    for path, message in cases.items():
        with pytest.raises(TraceError, match=message) as err:
            read_trace(path)
        assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
        assert main(["check", str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and message.split(":")[0] in captured.err
        assert "Traceback" not in captured.err
    assert main(["record", "-o", str(tmp_path / "x.npz")]) == 2  # no --pid, no command
    with pytest.raises(SystemExit) as exc:  # argparse usage errors exit 2 too
        main(["record", "--interval-ms", "x", "-o", "y"])
    assert exc.value.code == 2
    assert main(["record", "-o", str(tmp_path / "x.npz"), "--", "no-such-cmd-xyz"]) == 2
    assert main(["record", "-o", str(good), "--", "true"]) == 2  # exists: needs --force
    assert "pass --force" in capsys.readouterr().err
    assert good.read_bytes()[:2] == b"PK"  # untouched


def _meta(**changes: object) -> np.ndarray:
    meta = {"format": "ptreclaim-trace", "version": 2, "command": ["x"], **changes}
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def _one_syscall(t_ms: float) -> dict[str, np.ndarray]:
    return {"sys_t_ms": np.array([t_ms]), "sys_op": np.array([0], dtype=np.uint8),
            "sys_args": np.zeros((1, 6), dtype=np.int64), "sys_ret": np.array([0]),
            "sys_tid": np.array([1], dtype=np.int32), "sys_path": np.array([-1], dtype=np.int32)}


#: Impossible values in a trace that is otherwise valid (_tiny_trace: 2 samples,
#: change rows for blocks [1, 2, 2] with [1, 1, 0] present pages, one VMA
#: [0x200000, 0x600000)), and what the one-line error names.
IMPOSSIBLE: dict[str, tuple[dict[str, np.ndarray], str]] = {
    # NaN compares false: "sample times go backwards" missed it.
    "t_nan": ({"t_ms": np.array([0.0, np.nan])}, r"t_ms\[1\] is nan; times are finite"),
    "t_after_inf": ({"t_after_ms": np.array([np.inf, 100.0])}, r"t_after_ms\[0\] is inf"),
    "sys_t_nan": (_one_syscall(np.nan), r"sys_t_ms\[0\] is nan"),
    "block_negative": ({"chg_block": np.array([-1, 2, 2])},
                       r"chg_block\[0\] is -1; blocks are addresses >> 21 .* 0 to 34359738367"),
    "block_huge": ({"chg_block": np.array([1, 2 ** 62, 2])}, rf"chg_block\[1\] is {2 ** 62};"),
    "present_9999": ({"chg_present": np.array([9999, 1, 0], dtype=np.int16)},
                     r"chg_present\[0\] is 9999; page counts of a 2 MiB block \(512 pages\) "
                     r"are 0 to 1024"),
    "swapped_negative": ({"chg_swapped": np.array([0, -1, 0], dtype=np.int16)},
                         r"chg_swapped\[1\] is -1"),
    "maps_inverted": ({"maps_start": np.array([0x600000]), "maps_end": np.array([0x200000])},
                      r"maps row 0 ends at 0x200000, not after its start 0x600000"),
    "maps_empty_vma": ({"maps_end": np.array([0x200000])}, r"maps row 0 ends at 0x200000"),
    "maps_unaligned": ({"maps_start": np.array([0x200001])},
                       r"maps_start\[0\] is 0x200001; VMA bounds are page-aligned"),
    "maps_above_user_space": ({"maps_end": np.array([1 << 60])},
                              r"maps_end\[0\] is \d+; VMA bounds are page-aligned addresses "
                              r"from 0 to 2\*\*56"),
    "interval_negative": ({"meta": _meta(interval_ms=-1)},
                          r"meta interval_ms is -1, expected a positive number of milliseconds"),
    "interval_string": ({"meta": _meta(interval_ms="100")}, r"meta interval_ms is '100'"),
    "final_interval_zero": ({"meta": _meta(final_interval_ms=0)}, r"meta final_interval_ms is 0"),
    "command_int": ({"meta": _meta(command=5)},
                    r"meta command is 5, expected a list of strings"),
}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_values_are_one_clear_error(case: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.npz"
    _tiny_trace().finish().save(good)
    changes, want = IMPOSSIBLE[case]
    bad = tmp_path / f"{case}.npz"
    _rewrite(good, bad, **changes)
    with pytest.raises(TraceError, match=f"{bad}: damaged trace: {want}") as err:
        read_trace(bad)
    assert "\n" not in str(err.value) and str(err.value).endswith("; re-record it")
    assert main(["info", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""


def test_impossible_values_exit_2_from_the_scripts(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    _tiny_trace().finish().save(good)
    # Counts up to twice a block's 512 pages are read: the capturer can count a
    # page twice (the shipped redis_jemalloc holds rows of 1024 present pages).
    double = tmp_path / "double.npz"
    _rewrite(good, double, chg_present=np.array([1024, 1, 0], dtype=np.int16))
    assert read_trace(double).samples == 2
    for case, script, field in (("t_nan", "capture_trace.py", "t_ms[1]"),
                                ("present_9999", "whatif.py", "chg_present[0]")):
        bad = tmp_path / f"{case}.npz"
        _rewrite(good, bad, **IMPOSSIBLE[case][0])
        args = ["info", str(bad)] if script == "capture_trace.py" else \
            [str(bad), "--mechanisms", "none", "--ticks", "5", "--out", str(tmp_path / "w"), "-q"]
        p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
        assert p.stderr.startswith(f"{script}: error: {bad}: damaged trace: {field} is ")
    assert not (tmp_path / "w").exists()


# -- shipped traces -------------------------------------------------------------


#: The shipped traces, as data/traces/README.md and record.sh list them.
SHIPPED = ["churn_glibc_trim", "churn_jemalloc", "numpy_jemalloc_decay", "redis_jemalloc"]


def test_traces_are_shipped() -> None:
    assert sorted(p.stem for p in TRACES) == shipped_traces() == SHIPPED
    record = (ROOT / "data" / "traces" / "record.sh").read_text()
    readme = (ROOT / "data" / "traces" / "README.md").read_text()
    for p in TRACES:
        assert p.stat().st_size < 1 << 20, f"{p.name} is over 1 MB"
        assert p.with_suffix(".info.json").is_file() and p.with_suffix(".fidelity.png").is_file()
        assert json.loads(p.with_suffix(".info.json").read_text())["samples"] == \
            read_trace(p).samples
        assert f"{p.stem}()" in record and f"`{p.stem}" in readme
    # The new trace records its read windows (format 2); the older ones are version 1.
    assert read_trace(TRACES[SHIPPED.index("numpy_jemalloc_decay")]).has_read_windows


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.stem)
def test_shipped_trace_fidelity(path: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """The fidelity goal holds at every sample of every shipped trace, and
    ``capture_trace.py check`` says so (exit status 0)."""
    assert main(["check", str(path), "--rows", "0", "--png", str(tmp_path / "f.png")]) == 0
    trace = read_trace(path)
    n = trace.samples
    assert f"{n}/{n} samples within the goal" in " ".join(capsys.readouterr().out.split())
    assert trace.has_syscalls and trace.samples >= 100
    report = replay(trace)
    s = report.summary(GOAL_REL, GOAL_TABLES)
    assert s["all_within_goal"], (s, {k: v for k, v in report.notes.items()
                                      if not report.within_goal(GOAL_REL, GOAL_TABLES)[k]})
    assert s["max_abs_tables"] <= GOAL_TABLES and abs(s["final_tables"]) <= GOAL_TABLES
    assert abs(report.baseline_tables) <= 2  # the first sample explains the initial state
    # Every syscall the kernel accepted, the model accepted; every page had a VMA.
    assert report.refused_syscalls == 0 and report.unplaced_pages == 0


# -- replay rules on small synthetic traces -----------------------------------------

KiB = 1 << 10
BLOCK0 = REGION >> 21  # block index of REGION
#: VmPTE of the upper tables above REGION (one PMD and one PUD table), in KiB.
UPPER = 8


def _synthetic(samples: list[tuple[float, float, int, int, dict[int, range]]],
               syscalls: list[tuple[float, str, tuple[int, ...], int]],
               maps: dict[int, list[tuple[int, int]]] | None = None,
               version: int = 2) -> Trace:
    """A trace of one private anonymous rw region at REGION: per sample
    (t_ms, t_after_ms, VmPTE before, VmPTE after, {block offset: present
    pages}), the syscalls (t_ms, op, args, ret), and per sample index the
    maps ranges (offsets from REGION) when they change (default: 32 MiB)."""
    w = TraceWriter({"command": ["synthetic"]})
    ranges = [(0, 32 * MiB)]
    for k, (t, t_after, pte, pte_after, pages) in enumerate(samples):
        ranges = (maps or {}).get(k, ranges)
        w.add_maps([(REGION + a, REGION + b, 0, 0, 3, "") for a, b in ranges])
        blocks = sorted(pages)
        bits = np.zeros((len(blocks), 64), dtype=np.uint8)
        for i, b in enumerate(blocks):
            mask = np.zeros(512, dtype=bool)
            mask[pages[b]] = True
            bits[i] = np.packbits(mask)
        n = np.array([len(pages[b]) for b in blocks], dtype=np.int32)
        z = np.zeros(len(blocks), dtype=np.int32)
        w.add_sample(t, pte, pte_after, 0, np.array(blocks, dtype=np.int64) + BLOCK0, n, z, z,
                     z, z.astype(bool), bits, t_after_ms=t_after if version >= 2 else None)
    for t, op, args, ret in syscalls:
        w.add_syscall(t, op, args, ret)
    return w.finish(syscalls=True, version=version)


def _dontneed(t: float, offset: int, length: int) -> tuple[float, str, tuple[int, ...], int]:
    return (t, "madvise", (REGION + offset, length, 4), 0)


ALL = range(512)


def test_purge_tail_of_a_range_implies_no_write() -> None:
    """A DONTNEED reaching a table-less block writes there first, except in
    the block where a range from an earlier block ends within UNWRITTEN_TAIL."""
    calls = [
        # A jemalloc extent of 8 MiB and its padding page: block 4 gets 4 KiB, unwritten.
        _dontneed(40, 0, 8 * MiB + 4 * KiB),
        # A range whose tail reaches 1 MiB into block 10: written.
        _dontneed(50, 16 * MiB, 5 * MiB),
        # A range starting inside block 12 (its head is written) and covering block 13.
        _dontneed(60, 24 * MiB + 1 * MiB, 3 * MiB),
        # A tail of exactly UNWRITTEN_TAIL in block 17: unwritten.
        _dontneed(70, 32 * MiB, 2 * MiB + UNWRITTEN_TAIL),
    ]
    full = {0: ALL, 1: ALL, 2: ALL, 3: ALL, 8: ALL, 9: ALL, 16: ALL}
    # The kernel: 7 tables, then the two the process wrote after sample 0 (10, 12).
    trace = _synthetic([(0.0, 1.0, 4 * 7 + UPPER, 4 * 7 + UPPER, full),
                        (100.0, 101.0, 4 * 2 + UPPER, 4 * 2 + UPPER, {})],
                       calls, maps={0: [(0, 40 * MiB)]})
    report = replay(trace)
    assert report.purge_implied_writes == 2 and report.purge_tails_unwritten == 2
    assert report.model_kib.tolist() == [4 * 7 + UPPER, 4 * 2 + UPPER]
    assert report.summary(GOAL_REL, GOAL_TABLES)["max_abs_tables"] == 0
    mm = AddressSpace()
    TracePlayer(compile_trace(trace), mm).advance_to(1)
    assert sorted(b - BLOCK0 for b in mm.pte) == [10, 12]
    # Without the inference the two written tables are missing.
    assert replay(trace, purge_implies_touch=False).model_kib[1] == UPPER
    # One page more in block 17 and its tail is written too.
    longer = _synthetic([(0.0, 1.0, 4 * 7 + UPPER, 4 * 7 + UPPER, full),
                         (100.0, 101.0, 4 * 3 + UPPER, 4 * 3 + UPPER, {})],
                        [*calls[:3], _dontneed(70, 32 * MiB, 2 * MiB + UNWRITTEN_TAIL + 4 * KiB)],
                        maps={0: [(0, 40 * MiB)]})
    assert replay(longer).purge_implied_writes == 3


def test_syscalls_inside_a_read_window_count_at_that_sample() -> None:
    """A syscall dated between a sample's two VmPTE reads is applied within
    that sample, after its pages; the fidelity check compares the model's
    range over the sample with the kernel's."""
    blocks = {0: ALL, 1: ALL, 2: ALL, 3: ALL}
    new = {4: ALL, 5: ALL, 6: ALL, 7: ALL}
    samples = [
        (0.0, 5.0, 4 * 4 + UPPER, 4 * 4 + UPPER, blocks),
        # Faults in blocks 4-7 after the first read, seen by the walk; a DONTNEED
        # of blocks 0-3 dated inside the window, after the walk (it still shows
        # them): the second read saw both, the first neither.
        (100.0, 110.0, 4 * 4 + UPPER, 4 * 4 + UPPER, blocks | new),
        # Block 1 written again after the zap.
        (200.0, 205.0, 4 * 5 + UPPER, 4 * 5 + UPPER, {1: ALL} | new),
    ]
    calls = [_dontneed(105.0, 0, 8 * MiB)]
    report = replay(_synthetic(samples, calls))
    assert report.window_syscalls == 1
    assert report.model_walk_kib is not None
    assert report.model_walk_kib.tolist() == [16 + UPPER, 32 + UPPER, 20 + UPPER]
    assert report.model_kib.tolist() == [16 + UPPER, 16 + UPPER, 20 + UPPER]
    assert report.window_error_tables.tolist() == [0, 0, 0]
    # The same trace without read windows (format 1): the call counts one sample
    # late, and the model is 4 tables high at sample 1.
    v1 = replay(_synthetic(samples, calls, version=1))
    assert v1.window_syscalls == 0 and v1.model_kib.tolist() == [16 + UPPER, 32 + UPPER,
                                                                 20 + UPPER]
    assert v1.window_error_tables.tolist() == [0, 4, 0]
    # The compiled program runs the window's calls within the sample, as the replay.
    mm = AddressSpace()
    player = TracePlayer(compile_trace(_synthetic(samples, calls)), mm)
    got = []
    for k in range(3):
        player.advance_to(k)
        got.append(mm.vm_pte_kib)
    assert got == report.model_kib.tolist()


def test_maps_read_during_an_unmap_leave_it_to_the_log() -> None:
    """A munmap dated after a sample's read window, whose VMA the sample's maps
    no longer show, frees its tables when it completes, not when maps were read."""
    samples = [
        (0.0, 5.0, 4 * 2 + UPPER, 4 * 2 + UPPER, {0: ALL, 9: ALL}),
        # The munmap of [16M, 32M) is under way: the VMA is gone from the maps
        # (and from the walk), its table not yet freed.
        (100.0, 105.0, 4 * 2 + UPPER, 4 * 2 + UPPER, {0: ALL}),
        (200.0, 205.0, 4 * 1 + UPPER, 4 * 1 + UPPER, {0: ALL}),
    ]
    calls = [(130.0, "munmap", (REGION + 16 * MiB, 16 * MiB), 0)]
    maps = {1: [(0, 16 * MiB)]}
    report = replay(_synthetic(samples, calls, maps=maps))
    assert report.model_kib.tolist() == [8 + UPPER, 8 + UPPER, 4 + UPPER]
    assert report.summary(GOAL_REL, GOAL_TABLES)["max_abs_tables"] == 0
    # Format 1 did not record when the walk ended, so there the maps win.
    assert replay(_synthetic(samples, calls, maps=maps, version=1)).model_kib.tolist() == [
        8 + UPPER, 4 + UPPER, 4 + UPPER]


def test_version_1_traces_are_read(tmp_path: Path) -> None:
    """A file in format version 1 (no t_after_ms) is read; its read windows
    are empty."""
    trace = _tiny_trace().finish()
    v2 = tmp_path / "v2.npz"
    trace.save(v2)
    assert read_trace(v2).has_read_windows
    with np.load(v2, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "t_after_ms"}
    meta = json.loads(arrays["meta"].tobytes())
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "version": 1}).encode(), dtype=np.uint8)
    v1 = tmp_path / "v1.npz"
    np.savez(v1, **arrays)  # type: ignore[arg-type]
    old = read_trace(v1)
    assert not old.has_read_windows and old.meta["version"] == 1
    assert old.t_after_ms.tolist() == old.t_ms.tolist() == [0.0, 100.0]
    # A version-2 file without its window array is damaged, not version 1.
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(v1, **arrays)  # type: ignore[arg-type]
    with pytest.raises(TraceError, match="arrays missing: t_after_ms"):
        read_trace(v1)


# -- the trace workload -----------------------------------------------------------


def _one(trace: str, **params: object) -> ScenarioConfig:
    spec = WorkloadSpec("trace", {"trace": trace, **params})
    return ScenarioConfig(name="one", workloads=(spec,), ticks=10, jitter=0.0)


def test_workload_replays_the_trace_scaled() -> None:
    trace = resolve_trace("churn_glibc_trim")
    report = replay(trace)
    sc = _one("churn_glibc_trim", speed=4.0, end="idle")
    ticks = int(np.ceil(trace.duration_ms / (100 * 4.0))) + 1
    sim = Simulation(sc, np.random.default_rng(0))
    peak = 0
    for _ in range(ticks):
        rec = sim.step()
        peak = max(peak, rec.pt_pages)
    (p,) = sim.procs
    assert p.alive  # end: idle keeps the finished process
    assert p.mm.vm_pte_kib == report.model_kib[-1] - 4 * report.baseline_tables
    # Four times faster: the whole trace in a quarter of its time, same peak.
    assert peak * 4 >= int(report.model_kib.max()) - 4 * report.baseline_tables - 4 * 8
    p.mm.check_invariants()
    exit_sc = _one("churn_glibc_trim", speed=4.0, end="exit")
    sim = Simulation(exit_sc, np.random.default_rng(0))
    for _ in range(ticks):
        sim.step()
    assert not sim.procs[0].alive


@pytest.mark.parametrize("name", ["redis_jemalloc", "numpy_jemalloc_decay"])
def test_compiled_program_matches_the_replay(name: str) -> None:
    """The workload runs a compiled program; it must equal the direct replay
    (a version-1 trace, and one with read windows)."""
    trace = resolve_trace(name)
    report = replay(trace)
    mm = AddressSpace()
    player = TracePlayer(compile_trace(trace), mm)
    got = []
    for k in range(trace.samples):
        player.advance_to(k)
        got.append(mm.vm_pte_kib)
    assert got == list(report.model_kib - 4 * report.baseline_tables)
    mm.check_invariants()


def test_heldout_scenario_composes_and_is_deterministic() -> None:
    sc = load_scenario(ROOT / "configs" / "scenarios" / "heldout_real_traces.yaml")
    assert {w.family for w in sc.workloads} == {"trace"}
    assert {w.params["trace"] for w in sc.workloads} <= set(shipped_traces())
    assert sc.name in [s.name for s in load_suite(ROOT / "configs" / "suites" / "test.yaml")]

    def run(seed: int) -> list[tuple[int, int, int]]:
        sim = Simulation(sc, np.random.default_rng(seed))
        out = [(r.pt_pages, r.user_pages, r.reclaimable_tables) for r in
               (sim.step() for _ in range(80))]
        for p in sim.alive:
            p.mm.check_invariants()
        return out

    a = run(3)
    assert a == run(3)
    assert a[-1][0] > 200 and a[-1][2] > 0  # real tables, some reclaimable
    # Jitter scales the speeds: another seed replays at other speeds.
    assert a != run(4)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a shipped trace"):
        Simulation(_one("nope"), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="offset_s"):
        Simulation(_one("redis_jemalloc", offset_s=1e5), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="speed"):
        Simulation(_one("redis_jemalloc", speed=0), np.random.default_rng(0))


def test_sim_modules_stay_pure(tmp_path: Path) -> None:
    code = ("import sys; import ptreclaim.envs.sim.trace, ptreclaim.envs.sim.workloads.trace;"
            "print(' '.join(sorted(m for m in ('gymnasium', 'matplotlib', 'rich', 'yaml')"
            " if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert out.strip() == ""
