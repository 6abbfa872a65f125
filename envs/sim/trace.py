"""The page-table trace format: what a live process did, compact and versioned.

A trace is one ``.npz`` file (numpy's zip of arrays, always read with
``allow_pickle=False``) holding, on one monotonic clock in milliseconds since
the capture started:

* **samples** (``n``): ``t_ms`` (when the sample began: just before
  ``VmPTE`` was read), ``vm_pte_kib`` (``VmPTE`` read before the page walk),
  ``vm_pte_after_kib`` (read again after it: a difference means the process
  changed its tables during the sample), ``t_after_ms`` (just before that
  second read: the end of the sample's read window), ``vm_rss_kib``;
* **block presence**, stored as per-sample *changes*: for every 2 MiB-aligned
  block (``address >> 21``) whose state differs from the previous sample, its
  new present/swapped/zero-page/file page counts, PMD-mapped flag and a
  512-bit bitmap of present pages (64 bytes); a block that lost all its pages
  appears once with zeros.  ``chg_offsets[k]:chg_offsets[k+1]`` are sample
  ``k``'s rows;
* **maps snapshots**, stored only when ``/proc/PID/maps`` changed:
  ``maps_sample[m]`` is the first sample that saw snapshot ``m``, whose rows
  are ``maps_offsets[m]:maps_offsets[m+1]`` (start, end, offset, inode, perms
  bits ``r=1 w=2 x=4 s=8``, path index into ``paths``);
* **syscalls** (optional): ``sys_t_ms`` (completion time), ``sys_op`` (index
  into :data:`SYSCALLS`), ``sys_args`` (six int64 arguments as the kernel got
  them), ``sys_ret`` (the return value, ``-errno`` on failure), ``sys_tid``,
  ``sys_path`` (for a file mmap, index into ``paths`` of the fd's file, else -1);
* ``meta``: a UTF-8 JSON object with ``format`` (``"ptreclaim-trace"``),
  ``version`` (:data:`VERSION`), the command, kernel, interval, method,
  capture overhead and notes.

Versions: 2 (written now) added ``t_after_ms``.  Version 1 files are still
read; they did not record when a sample's page walk ended, so their
``t_after_ms`` is ``t_ms`` (a read window of zero length: a syscall that
completed during the walk counts as after the sample, as it always did for
them).

Reading a file that is not a trace, was cut short, has a version this code
does not read, or holds impossible values (a NaN time, a block outside the
user address space, a VMA that ends before it starts, a negative interval)
raises :class:`TraceError` with one line that names the file, the array or
``meta`` field, and the fix.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, quote
from .fileio import write_text_atomic

__all__ = [
    "FORMAT",
    "READABLE_VERSIONS",
    "SYSCALLS",
    "VERSION",
    "BlockState",
    "Trace",
    "TraceError",
    "TraceWriter",
    "read_trace",
]

FORMAT = "ptreclaim-trace"
VERSION = 2
#: Format versions :func:`read_trace` accepts (see the module docstring).
READABLE_VERSIONS = (1, 2)
#: Memory syscalls a trace records, in code order (``sys_op`` indexes this).
SYSCALLS = ("mmap", "munmap", "madvise", "mremap", "brk", "mprotect")
PERM_R, PERM_W, PERM_X, PERM_S = 1, 2, 4, 8
BITMAP_BYTES = 64  # 512 pages per 2 MiB block
PAGES_PER_BLOCK = 8 * BITMAP_BYTES
#: Top of the user address space with 5-level paging: the capturer stores no
#: VMA above it ([vsyscall] lies there), so no maps row or block may lie above.
USER_TOP = 1 << 56
#: Largest page count :func:`read_trace` accepts in one block row: a 2 MiB
#: block has 512 pages, but the capturer summed PAGEMAP_SCAN runs and counted
#: a page twice when one ioctl's walk stopped inside a run it had returned
#: (fixed 2026-12-06 in ``envs/host/procfs.py``; the shipped redis_jemalloc,
#: recorded before, has rows of 1024 present pages; its bitmaps, which the
#: replay uses, hold at most 512).
MAX_BLOCK_COUNT = 2 * PAGES_PER_BLOCK

# Array name -> (dtype kind, dimensions): checked on read so that a foreign
# .npz with the right names but wrong contents is still rejected cleanly.
_ARRAYS: dict[str, tuple[str, int]] = {
    "t_ms": ("f", 1), "vm_pte_kib": ("i", 1), "vm_pte_after_kib": ("i", 1),
    "t_after_ms": ("f", 1), "vm_rss_kib": ("i", 1),
    "chg_offsets": ("i", 1), "chg_block": ("i", 1), "chg_present": ("i", 1),
    "chg_swapped": ("i", 1), "chg_zero": ("i", 1), "chg_file": ("i", 1),
    "chg_huge": ("b", 1), "chg_bits": ("u", 2),
    "maps_sample": ("i", 1), "maps_offsets": ("i", 1), "maps_start": ("i", 1),
    "maps_end": ("i", 1), "maps_offset": ("i", 1), "maps_inode": ("i", 1),
    "maps_perms": ("u", 1), "maps_path": ("i", 1), "paths": ("U", 1),
    "sys_t_ms": ("f", 1), "sys_op": ("u", 1), "sys_args": ("i", 2), "sys_ret": ("i", 1),
    "sys_tid": ("i", 1), "sys_path": ("i", 1),
}
#: Arrays a version-1 file lacks (:func:`read_trace` derives them).
_SINCE_V2 = frozenset({"t_after_ms"})


class TraceError(ConfigError):
    """A trace file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class BlockState:
    """The pages of one 2 MiB block at one sample."""

    present: int
    swapped: int
    zero: int
    file: int
    huge: bool
    bits: bytes  # 64 bytes, numpy.packbits order (page 0 is the high bit of byte 0)

    def pages(self) -> np.ndarray:
        """Indices (0..511) of the present pages."""
        return np.flatnonzero(np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8)))


@dataclass(frozen=True)
class MapsRow:
    """One VMA of a maps snapshot."""

    start: int
    end: int
    offset: int
    inode: int
    perms: int  # PERM_* bits
    path: str

    @property
    def shared(self) -> bool:
        return bool(self.perms & PERM_S)


@dataclass
class Trace:
    """A loaded (or freshly captured) trace; see the module docstring."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    source: str = "<trace>"
    _maps_cache: dict[int, list[MapsRow]] = field(default_factory=dict, repr=False)
    #: Data derived from the (read-only) arrays by other modules, e.g. the
    #: compiled replay program; it lives and dies with the trace.
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def samples(self) -> int:
        return int(self.arrays["t_ms"].size)

    @property
    def t_ms(self) -> np.ndarray:
        return self.arrays["t_ms"]

    @property
    def vm_pte_kib(self) -> np.ndarray:
        return self.arrays["vm_pte_kib"]

    @property
    def t_after_ms(self) -> np.ndarray:
        """End of each sample's read window (see the module docstring)."""
        return self.arrays["t_after_ms"]

    @property
    def duration_ms(self) -> float:
        t = self.arrays["t_ms"]
        return float(t[-1]) if t.size else 0.0

    @property
    def has_syscalls(self) -> bool:
        return bool(self.meta.get("syscalls", False))

    @property
    def has_read_windows(self) -> bool:
        """Whether ``t_after_ms`` was recorded (format version 2 on)."""
        return int(self.meta.get("version", VERSION)) >= 2

    @property
    def syscall_count(self) -> int:
        return int(self.arrays["sys_t_ms"].size)

    def maps_index(self, sample: int) -> int:
        """Index of the maps snapshot in force at ``sample``."""
        return int(np.searchsorted(self.arrays["maps_sample"], sample, side="right")) - 1

    def maps(self, snapshot: int) -> list[MapsRow]:
        """The rows of maps snapshot ``snapshot``."""
        cached = self._maps_cache.get(snapshot)
        if cached is not None:
            return cached
        a = self.arrays
        lo, hi = int(a["maps_offsets"][snapshot]), int(a["maps_offsets"][snapshot + 1])
        paths = a["paths"]
        rows = [MapsRow(int(a["maps_start"][i]), int(a["maps_end"][i]),
                        int(a["maps_offset"][i]), int(a["maps_inode"][i]),
                        int(a["maps_perms"][i]), str(paths[a["maps_path"][i]]))
                for i in range(lo, hi)]
        self._maps_cache[snapshot] = rows
        return rows

    def changes(self, sample: int) -> Iterator[tuple[int, BlockState]]:
        """(block, new state) for every block that changed at ``sample``."""
        a = self.arrays
        lo, hi = int(a["chg_offsets"][sample]), int(a["chg_offsets"][sample + 1])
        for i in range(lo, hi):
            yield int(a["chg_block"][i]), BlockState(
                int(a["chg_present"][i]), int(a["chg_swapped"][i]), int(a["chg_zero"][i]),
                int(a["chg_file"][i]), bool(a["chg_huge"][i]), a["chg_bits"][i].tobytes())

    def syscall_path(self, i: int) -> str | None:
        """The file a file mmap ``i`` mapped, or None."""
        k = int(self.arrays["sys_path"][i])
        return None if k < 0 else str(self.arrays["paths"][k])

    def syscalls_between(self, t0: float, t1: float) -> range:
        """Indices of the syscalls that completed in (t0, t1]."""
        t = self.arrays["sys_t_ms"]
        return range(int(np.searchsorted(t, t0, side="right")),
                     int(np.searchsorted(t, t1, side="right")))

    def blocks_per_sample(self) -> np.ndarray:
        """Blocks holding pages at each sample (from the change lists)."""
        out = np.zeros(self.samples, dtype=np.int64)
        live: set[int] = set()
        for k in range(self.samples):
            for block, st in self.changes(k):
                if st.present or st.swapped:
                    live.add(block)
                else:
                    live.discard(block)
            out[k] = len(live)
        return out

    def blocks_at(self, sample: int) -> np.ndarray:
        """Sorted blocks holding present or swapped pages at ``sample``."""
        live: set[int] = set()
        for k in range(sample + 1):
            for block, st in self.changes(k):
                if st.present or st.swapped:
                    live.add(block)
                else:
                    live.discard(block)
        return np.asarray(sorted(live), dtype=np.int64)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace atomically (a temporary file, then ``os.replace``)."""
        buf = io.BytesIO()
        meta = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode("utf-8"),
                             dtype=np.uint8)
        # Fixed zip timestamps come from numpy itself; same arrays -> same bytes.
        arrays: dict[str, Any] = {"meta": meta, **self.arrays}
        np.savez_compressed(buf, **arrays)
        write_text_atomic(path, buf.getvalue())


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Load a trace file; raise :class:`TraceError` (one line) when it is
    missing, truncated, not a trace, or of another format version."""
    p = Path(path)
    name = str(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TraceError(f"{name}: no such trace file; check the path") from None
    except IsADirectoryError:
        raise TraceError(f"{name}: is a directory, expected a .npz trace file") from None
    except OSError as exc:
        raise TraceError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if not data.startswith(b"PK"):
        raise TraceError(f"{name}: not a ptreclaim trace (not an .npz/zip file); "
                         "record one with scripts/capture_trace.py record")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            names = set(z.files)
            if "meta" not in names:
                raise TraceError(f"{name}: not a ptreclaim trace (an .npz without 'meta'); "
                                 "record one with scripts/capture_trace.py record")
            raw_meta = z["meta"]
            if not isinstance(raw_meta, np.ndarray):  # a zip member that is no .npy
                raise ValueError("'meta' is not a numpy array")
            meta = _parse_meta(name, raw_meta)
            expected = set(_ARRAYS) - (_SINCE_V2 if meta["version"] == 1 else set())
            missing = sorted(expected - names)
            if missing:
                raise TraceError(f"{name}: truncated or damaged trace: arrays missing: "
                                 f"{', '.join(missing[:4])}; re-record it")
            arrays = {k: z[k] for k in _ARRAYS if k in expected}
            bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
            if bad:
                raise ValueError(f"array {bad[0]!r} is not a numpy array")
    except TraceError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TraceError(f"{name}: truncated or damaged trace ({first}); re-record it "
                         "with scripts/capture_trace.py record") from None
    if meta["version"] == 1:
        arrays["t_after_ms"] = arrays["t_ms"]  # no read window recorded
    _check_arrays(name, arrays)
    return Trace(meta, arrays, source=name)


def _parse_meta(name: str, raw: np.ndarray) -> dict[str, Any]:
    try:
        meta = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise TraceError(f"{name}: not a ptreclaim trace ('meta' is not JSON)") from None
    except RecursionError:
        raise TraceError(f"{name}: not a ptreclaim trace ('meta' nests deeper than Python's "
                         "JSON reader allows; a capture writes a flat object)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TraceError(f"{name}: not a ptreclaim trace (format is "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    version = meta.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise TraceError(f"{name}: trace format version {version!r}, but this ptreclaim reads "
                         f"versions {readable}; re-record it or use a matching ptreclaim")
    for key in ("interval_ms", "final_interval_ms"):
        value = meta.get(key)
        # No float() of an int: one of 400 digits does not convert.
        if key in meta and (isinstance(value, bool) or not isinstance(value, (int, float))
                            or (isinstance(value, float) and not math.isfinite(value))
                            or value <= 0):
            raise TraceError(f"{name}: damaged trace: meta {key} is {quote(value)}, expected "
                             "a positive number of milliseconds; re-record it")
    command = meta.get("command")
    if command is not None and not (isinstance(command, list)
                                    and all(isinstance(c, str) for c in command)):
        raise TraceError(f"{name}: damaged trace: meta command is {quote(command)}, expected "
                         "a list of strings (the command line); re-record it")
    return meta


def _check_arrays(name: str, a: dict[str, np.ndarray]) -> None:
    """Dtypes, shapes and cross-references, so a damaged file fails here in
    one line instead of deep inside a replay."""
    for key, (kind, ndim) in _ARRAYS.items():
        arr = a[key]
        ok_kind = arr.dtype.kind == kind or (kind == "i" and arr.dtype.kind == "u") or (
            kind == "u" and arr.dtype.kind == "i") or (kind == "b" and arr.dtype.kind in "iu")
        if not ok_kind or arr.ndim != ndim:
            raise TraceError(f"{name}: damaged trace: array {key!r} has dtype {arr.dtype} and "
                             f"{arr.ndim} dimension(s); re-record it")
    n = a["t_ms"].size
    problems = []
    if n == 0:
        problems.append("no samples")
    for key in ("vm_pte_kib", "vm_pte_after_kib", "t_after_ms", "vm_rss_kib"):
        if a[key].size != n:
            problems.append(f"{key} has {a[key].size} values for {n} samples")
    for key in ("t_ms", "t_after_ms", "sys_t_ms"):
        bad = np.flatnonzero(~np.isfinite(a[key]))
        if bad.size:
            # NaN compares false with everything: the order checks below miss it.
            problems.append(f"{key}[{bad[0]}] is {a[key][bad[0]]}; times are finite "
                            "milliseconds since the capture started")
    if n and np.any(np.diff(a["t_ms"]) < 0):
        problems.append("sample times go backwards")
    elif a["t_after_ms"].size == n and n and (
            np.any(a["t_after_ms"] < a["t_ms"]) or np.any(a["t_after_ms"][:-1] > a["t_ms"][1:])):
        problems.append("a sample's read window ends before it starts or after the next "
                        "sample starts")
    off = a["chg_offsets"]
    k = a["chg_block"].size
    if off.size != n + 1 or off[0] != 0 or off[-1] != k or np.any(np.diff(off) < 0):
        problems.append("chg_offsets do not index the change rows")
    for key in ("chg_present", "chg_swapped", "chg_zero", "chg_file", "chg_huge"):
        if a[key].size != k:
            problems.append(f"{key} has {a[key].size} rows, expected {k}")
    if a["chg_bits"].shape != (k, BITMAP_BYTES):
        problems.append(f"chg_bits has shape {a['chg_bits'].shape}, expected ({k}, 64)")
    top = USER_TOP >> 21
    _check_range(problems, a, "chg_block", 0, top - 1,
                 f"blocks are addresses >> 21 in the user address space (below 2**56): 0 "
                 f"to {top - 1}")
    for key in ("chg_present", "chg_swapped", "chg_zero", "chg_file"):
        _check_range(problems, a, key, 0, MAX_BLOCK_COUNT,
                     f"page counts of a 2 MiB block ({PAGES_PER_BLOCK} pages) are 0 to "
                     f"{MAX_BLOCK_COUNT} (a capture may count a page twice)")
    m = a["maps_sample"].size
    moff = a["maps_offsets"]
    rows = a["maps_start"].size
    if m == 0 or a["maps_sample"][0] != 0:
        problems.append("no maps snapshot at sample 0")
    if moff.size != m + 1 or (moff.size and (moff[0] != 0 or moff[-1] != rows)):
        problems.append("maps_offsets do not index the maps rows")
    for key in ("maps_end", "maps_offset", "maps_inode", "maps_perms", "maps_path"):
        if a[key].size != rows:
            problems.append(f"{key} has {a[key].size} rows, expected {rows}")
    if rows and (a["maps_path"].min() < 0 or a["maps_path"].max() >= a["paths"].size):
        problems.append("maps_path points outside paths")
    for key in ("maps_start", "maps_end"):
        _check_range(problems, a, key, 0, USER_TOP,
                     "VMA bounds are page-aligned addresses from 0 to 2**56")
        unaligned = np.flatnonzero(a[key] % 4096)
        if unaligned.size:
            problems.append(f"{key}[{unaligned[0]}] is {int(a[key][unaligned[0]]):#x}; VMA "
                            "bounds are page-aligned (multiples of 4096)")
    if a["maps_end"].size == rows:
        inverted = np.flatnonzero(a["maps_end"] <= a["maps_start"])
        if inverted.size:
            i = inverted[0]
            problems.append(f"maps row {i} ends at {int(a['maps_end'][i]):#x}, not after its "
                            f"start {int(a['maps_start'][i]):#x}; a VMA has start < end")
    s = a["sys_t_ms"].size
    if a["sys_args"].shape != (s, 6) or a["sys_ret"].size != s or a["sys_op"].size != s \
            or a["sys_tid"].size != s or a["sys_path"].size != s:
        problems.append("syscall arrays disagree in length")
    if s and (a["sys_op"].max() >= len(SYSCALLS) or np.any(np.diff(a["sys_t_ms"]) < 0)
              or a["sys_path"].max() >= a["paths"].size):
        problems.append("syscall codes, times or paths out of range")
    if problems:
        raise TraceError(f"{name}: damaged trace: {problems[0]}; re-record it")


def _check_range(problems: list[str], a: dict[str, np.ndarray], key: str, lo: int, hi: int,
                 allowed: str) -> None:
    """Note the first value of integer array ``key`` outside ``lo..hi``."""
    arr = a[key]
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if bad.size:
        problems.append(f"{key}[{bad[0]}] is {int(arr[bad[0]])}; {allowed}")


class TraceWriter:
    """Builds a :class:`Trace` sample by sample (the capturer's side).

    :meth:`add_sample` takes full per-block state and stores only what
    changed since the previous sample; :meth:`add_maps` stores a snapshot
    only when it differs from the last one.
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = {"format": FORMAT, "version": VERSION, **meta}
        self._t: list[float] = []
        self._pte: list[int] = []
        self._pte_after: list[int] = []
        self._t_after: list[float] = []
        self._rss: list[int] = []
        self._prev: dict[int, tuple[int, int, int, int, bool, bytes]] = {}
        self._chg: list[tuple[int, int, int, int, int, bool, bytes]] = []
        self._chg_offsets: list[int] = [0]
        self._maps_sample: list[int] = []
        self._maps_rows: list[tuple[int, int, int, int, int, int]] = []
        self._maps_offsets: list[int] = [0]
        self._last_maps: tuple[tuple[int, int, int, int, int, str], ...] | None = None
        self._paths: dict[str, int] = {}
        self._sys: list[tuple[float, int, tuple[int, ...], int, int, int]] = []

    @property
    def samples(self) -> int:
        return len(self._t)

    def add_maps(self, rows: list[tuple[int, int, int, int, int, str]]) -> bool:
        """Record the maps (start, end, offset, inode, perms bits, path) seen
        by the *next* sample; returns whether it was stored (it changed)."""
        key = tuple(rows)
        if key == self._last_maps:
            return False
        self._last_maps = key
        self._maps_sample.append(len(self._t))
        for start, end, off, inode, perms, path in rows:
            pid = self._paths.setdefault(path, len(self._paths))
            self._maps_rows.append((start, end, off, inode, perms, pid))
        self._maps_offsets.append(len(self._maps_rows))
        return True

    def add_sample(self, t_ms: float, vm_pte_kib: int, vm_pte_after_kib: int, vm_rss_kib: int,
                   block: np.ndarray, present: np.ndarray, swapped: np.ndarray,
                   zero: np.ndarray, file: np.ndarray, huge: np.ndarray,
                   bits: np.ndarray, t_after_ms: float | None = None) -> None:
        """Add one sample with the full per-block state (sorted by block);
        ``t_after_ms`` is when ``VmPTE`` was read again after the page walk
        (default ``t_ms``: no read window)."""
        if not self._maps_sample:
            raise ValueError("add_maps() must come before the first sample")
        cur = {int(b): (int(p), int(s), int(z), int(f), bool(h), bits[i].tobytes())
               for i, (b, p, s, z, f, h) in enumerate(zip(block, present, swapped, zero, file,
                                                          huge, strict=True))}
        empty = (0, 0, 0, 0, False, bytes(BITMAP_BYTES))
        for b in sorted(set(cur) | set(self._prev)):
            new = cur.get(b, empty)
            if self._prev.get(b, empty) != new:
                self._chg.append((b, *new))
        self._chg_offsets.append(len(self._chg))
        self._prev = cur
        self._t.append(float(t_ms))
        self._pte.append(int(vm_pte_kib))
        self._pte_after.append(int(vm_pte_after_kib))
        self._t_after.append(float(t_ms if t_after_ms is None else t_after_ms))
        self._rss.append(int(vm_rss_kib))

    def add_syscall(self, t_ms: float, op: str, args: tuple[int, ...], ret: int,
                    tid: int = 0, path: str | None = None) -> None:
        """Add one completed memory syscall (``op`` in :data:`SYSCALLS`);
        ``path`` names the file of a file mmap's fd."""
        # Registers are 64-bit: store them as the signed values the kernel sees.
        full = tuple(((int(x) + (1 << 63)) % (1 << 64)) - (1 << 63) for x in args)
        full += (0,) * (6 - len(full))
        pid = -1 if path is None else self._paths.setdefault(path, len(self._paths))
        self._sys.append((float(t_ms), SYSCALLS.index(op), full[:6], int(ret), int(tid), pid))

    def finish(self, **meta: Any) -> Trace:
        """The trace so far (``meta`` entries are added to its metadata)."""
        self.meta.update(meta)
        chg = self._chg
        sys_sorted = sorted(self._sys, key=lambda r: r[0])  # stable: equal times keep order
        paths = sorted(self._paths, key=self._paths.__getitem__)
        arrays: dict[str, np.ndarray] = {
            "t_ms": np.asarray(self._t, dtype=np.float64),
            "vm_pte_kib": np.asarray(self._pte, dtype=np.int64),
            "vm_pte_after_kib": np.asarray(self._pte_after, dtype=np.int64),
            "t_after_ms": np.asarray(self._t_after, dtype=np.float64),
            "vm_rss_kib": np.asarray(self._rss, dtype=np.int64),
            "chg_offsets": np.asarray(self._chg_offsets, dtype=np.int64),
            "chg_block": np.asarray([c[0] for c in chg], dtype=np.int64),
            "chg_present": np.asarray([c[1] for c in chg], dtype=np.int16),
            "chg_swapped": np.asarray([c[2] for c in chg], dtype=np.int16),
            "chg_zero": np.asarray([c[3] for c in chg], dtype=np.int16),
            "chg_file": np.asarray([c[4] for c in chg], dtype=np.int16),
            "chg_huge": np.asarray([c[5] for c in chg], dtype=np.bool_),
            "chg_bits": (np.frombuffer(b"".join(c[6] for c in chg), dtype=np.uint8)
                         .reshape(len(chg), BITMAP_BYTES)),
            "maps_sample": np.asarray(self._maps_sample, dtype=np.int64),
            "maps_offsets": np.asarray(self._maps_offsets, dtype=np.int64),
            "maps_start": np.asarray([r[0] for r in self._maps_rows], dtype=np.int64),
            "maps_end": np.asarray([r[1] for r in self._maps_rows], dtype=np.int64),
            "maps_offset": np.asarray([r[2] for r in self._maps_rows], dtype=np.int64),
            "maps_inode": np.asarray([r[3] for r in self._maps_rows], dtype=np.int64),
            "maps_perms": np.asarray([r[4] for r in self._maps_rows], dtype=np.uint8),
            "maps_path": np.asarray([r[5] for r in self._maps_rows], dtype=np.int32),
            "paths": np.asarray(paths if paths else [""], dtype=np.str_),
            "sys_t_ms": np.asarray([r[0] for r in sys_sorted], dtype=np.float64),
            "sys_op": np.asarray([r[1] for r in sys_sorted], dtype=np.uint8),
            "sys_args": np.asarray([r[2] for r in sys_sorted], dtype=np.int64).reshape(-1, 6),
            "sys_ret": np.asarray([r[3] for r in sys_sorted], dtype=np.int64),
            "sys_tid": np.asarray([r[4] for r in sys_sorted], dtype=np.int32),
            "sys_path": np.asarray([r[5] for r in sys_sorted], dtype=np.int32),
        }
        return Trace(dict(self.meta), arrays)
