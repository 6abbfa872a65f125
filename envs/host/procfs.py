"""Small readers of ``/proc/PID`` for page-table accounting of live processes.

Shared by the trace capturer (:mod:`ptreclaim.envs.host.capture`) and the live
advisor (``envs/host/sample.py``); the API below is kept stable for both:

* :func:`read_status` -- the kB fields of ``/proc/PID/status`` (``VmPTE``...);
* :func:`read_maps` -- ``/proc/PID/maps`` as :class:`MapEntry` records;
* :func:`block_presence` -- per 2 MiB-aligned block (``address >> 21``, the
  span of one PTE table) the number of present and swapped 4 KiB pages and
  whether the block is PMD-mapped (THP), read with the ``PAGEMAP_SCAN`` ioctl
  (Linux >= 6.7) or, as a fallback, the raw ``/proc/PID/pagemap`` bits;
* :func:`estimate_empty_tables` -- how many PTE tables hold no page at all.

A process that exits while it is read raises :class:`ProcessGone`; missing
permission (or a kernel without ``PAGEMAP_SCAN`` when the ioctl is forced)
raises :class:`PagemapUnavailable`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from dataclasses import dataclass

import numpy as np

from ..sim.trace import USER_TOP  # 5-level paging's user top; [vsyscall] lies above it

__all__ = [
    "BLOCK_SHIFT",
    "BlockPresence",
    "MapEntry",
    "PagemapUnavailable",
    "ProcessGone",
    "block_presence",
    "estimate_empty_tables",
    "read_maps",
    "read_status",
]

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
#: One PTE table maps a 2 MiB-aligned block of 512 pages.
BLOCK_SHIFT = 21
PAGES_PER_BLOCK = 1 << (BLOCK_SHIFT - PAGE_SHIFT)

# include/uapi/linux/fs.h (not in every libc's headers, so spelled out here).
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
_IOC_READ_WRITE = 3
PAGEMAP_SCAN = (_IOC_READ_WRITE << 30) | (96 << 16) | (ord("f") << 8) | 16

# Raw pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
_PM_PRESENT = 1 << 63
_PM_SWAPPED = 1 << 62
_PM_FILE = 1 << 61

#: Regions per PAGEMAP_SCAN call (24 bytes each): 4096 regions = 96 KiB.
_SCAN_VEC = 4096
#: Raw fallback: entries read per pread (8 bytes each: 64 Ki entries = 512 KiB).
_RAW_CHUNK = 1 << 16


class ProcessGone(Exception):
    """The process exited (or its /proc entry vanished) while it was read."""


class PagemapUnavailable(Exception):
    """``/proc/PID/pagemap`` cannot be used: no permission, or the requested
    method (``PAGEMAP_SCAN``) is not supported and no fallback was allowed."""


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


class _PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


@dataclass(frozen=True)
class MapEntry:
    """One line of ``/proc/PID/maps``: a VMA ``[start, end)``."""

    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int
    dev: str
    inode: int
    path: str  # "" for anonymous memory; "[heap]", "[stack]", a file...

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class BlockPresence:
    """Pages per 2 MiB block (``address >> 21``), for every block with at
    least one present or swapped page; all arrays are aligned and sorted by
    ``block``.

    ``present`` counts present 4 KiB pages (a PMD-mapped THP counts 512),
    ``swapped`` swap entries, ``huge`` flags PMD-mapped blocks, ``zero`` counts
    pages that map the shared zero page and ``file`` present file/shmem pages
    (both 0 from the raw fallback for ``zero``).  ``method`` says how it was
    read; ``skipped_bytes`` is the size of the VMAs the raw fallback skipped
    (larger than its cap).
    """

    block: np.ndarray  # int64
    present: np.ndarray  # int32
    swapped: np.ndarray  # int32
    huge: np.ndarray  # bool
    zero: np.ndarray  # int32
    file: np.ndarray  # int32
    method: str
    skipped_bytes: int = 0
    #: With ``bitmap=True``: (blocks, 64) uint8, bit i (numpy.packbits order)
    #: set when page i of the block is present.
    bits: np.ndarray | None = None

    @property
    def blocks(self) -> int:
        return int(self.block.size)


#: Where the proc filesystem is mounted; every reader takes ``root`` to read
#: another tree instead (the live monitor's tests build fake ones).
PROC_ROOT = "/proc"


def _proc(pid: int | str, name: str, root: str | os.PathLike[str] = PROC_ROOT) -> str:
    return os.path.join(root, str(pid), name)


def _read_text(pid: int | str, name: str, root: str | os.PathLike[str] = PROC_ROOT) -> str:
    try:
        with open(_proc(pid, name, root), encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(f"process {pid} is gone") from exc
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessGone(f"process {pid} is gone") from exc
        raise


def read_status(pid: int | str = "self", root: str | os.PathLike[str] = PROC_ROOT
                ) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` as ints in KiB (``VmPTE``,
    ``VmRSS``, ``VmSize``, ``RssAnon``...), plus ``Pid``.

    A kernel thread or zombie has no ``Vm*`` lines; a caller that needs
    ``VmPTE`` should treat its absence as "no mm" (exited).
    """
    out: dict[str, int] = {}
    for line in _read_text(pid, "status", root).splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if len(words) == 2 and words[1] == "kB":
            out[key] = int(words[0])
        elif key == "Pid" and words:
            out["Pid"] = int(words[0])
    if "Pid" not in out:
        raise ProcessGone(f"process {pid}: /proc status has no Pid line")
    return out


def parse_maps(text: str) -> list[MapEntry]:
    """Parse the text of ``/proc/PID/maps``."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        out.append(MapEntry(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[3],
                            int(parts[4]), parts[5].strip() if len(parts) > 5 else ""))
    return out


def read_maps(pid: int | str = "self", root: str | os.PathLike[str] = PROC_ROOT
              ) -> list[MapEntry]:
    """``/proc/PID/maps`` as :class:`MapEntry` records, in address order."""
    return parse_maps(_read_text(pid, "maps", root))


def _open_pagemap(pid: int | str, root: str | os.PathLike[str] = PROC_ROOT) -> int:
    try:
        return os.open(_proc(pid, "pagemap", root), os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(f"process {pid} is gone") from exc
    except PermissionError as exc:
        raise PagemapUnavailable(f"/proc/{pid}/pagemap: permission denied (run as root or "
                                 "as the process's owner with ptrace access)") from exc


def _scan_regions(fd: int, start: int, end: int, vec: ctypes.Array[_PageRegion]) -> np.ndarray:
    """PAGEMAP_SCAN over [start, end) into ``vec``: an (n, 3) uint64 array of
    (start, end, categories) for the present or swapped runs.  Raises OSError
    from the ioctl."""
    arg = _PmScanArg()
    arg.size = ctypes.sizeof(_PmScanArg)
    arg.vec = ctypes.addressof(vec)
    arg.vec_len = _SCAN_VEC
    arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
    arg.return_mask = (PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_HUGE | PAGE_IS_PFNZERO
                       | PAGE_IS_FILE)
    chunks = []
    pos = start
    covered = start  # the end of the last run returned so far
    while pos < end:
        arg.start, arg.end, arg.walk_end = pos, end, 0
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        if n:
            raw = np.frombuffer(memoryview(vec).cast("B"), dtype=np.uint64,
                                count=3 * n).reshape(n, 3).copy()
            # When the vector fills, the walk may stop (walk_end) before the end of the
            # last run it returned, and the next call returns those pages again: a 2 MiB
            # block of 256 present pages in 256 runs read as 512 (6.18, measured by
            # tests/test_trace.py).  Each page counts once: runs are clipped to what
            # came before (they come in ascending order).
            raw[:, 0] = np.maximum(raw[:, 0], np.uint64(covered))
            raw = raw[raw[:, 0] < raw[:, 1]]
            if len(raw):
                covered = int(raw[-1, 1])
                chunks.append(raw)
        # walk_end < end: the vector filled up (or the walk stopped); go on from there.
        if arg.walk_end <= pos:
            break
        pos = arg.walk_end
    if not chunks:
        return np.zeros((0, 3), dtype=np.uint64)
    return np.concatenate(chunks)


def _regions_to_pages(regions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Split page regions at 2 MiB boundaries: per piece (block, pages, cats,
    first page index inside the block)."""
    if regions.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e, e
    s = regions[:, 0].astype(np.int64)
    t = regions[:, 1].astype(np.int64)
    cats = regions[:, 2].astype(np.int64)
    b0 = s >> BLOCK_SHIFT
    b1 = (t - 1) >> BLOCK_SHIFT
    counts = b1 - b0 + 1
    rep = np.repeat(np.arange(s.size), counts)
    # Block index of each piece: b0 of its region plus its rank inside the region.
    first = np.cumsum(counts) - counts
    blk = b0[rep] + (np.arange(rep.size) - first[rep])
    lo = np.maximum(s[rep], blk << BLOCK_SHIFT)
    hi = np.minimum(t[rep], (blk + 1) << BLOCK_SHIFT)
    return blk, (hi - lo) >> PAGE_SHIFT, cats[rep], (lo >> PAGE_SHIFT) & (PAGES_PER_BLOCK - 1)


def _aggregate(blk: np.ndarray, pages: np.ndarray, present: np.ndarray, swapped: np.ndarray,
               huge: np.ndarray, zero: np.ndarray, file: np.ndarray, method: str,
               skipped: int = 0, first: np.ndarray | None = None) -> BlockPresence:
    """Sum page pieces per block (pieces may come in any order).  With
    ``first`` (the first page index of each piece inside its block) the
    present pages also go into a bitmap."""
    ublk, inv = np.unique(blk, return_inverse=True)
    n = ublk.size
    bits = None
    if first is not None:
        # Flat page indices of every present run: block row * 512 + first + k.
        sel = present.astype(bool) & (pages > 0)
        lens = pages[sel].astype(np.int64)
        starts = inv[sel].astype(np.int64) * PAGES_PER_BLOCK + first[sel]
        rank = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        flat = np.zeros(n * PAGES_PER_BLOCK, dtype=bool)
        flat[np.repeat(starts, lens) + rank] = True
        bits = np.packbits(flat.reshape(n, PAGES_PER_BLOCK), axis=1)

    def total(mask: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=pages * mask, minlength=n).astype(np.int32)

    hflag = np.bincount(inv, weights=huge.astype(np.int64), minlength=n) > 0
    return BlockPresence(ublk.astype(np.int64), total(present), total(swapped), hflag,
                         total(zero), total(file), method, skipped, bits)


def _presence_scan(fd: int, maps: list[MapEntry], bitmap: bool) -> BlockPresence:
    vec = (_PageRegion * _SCAN_VEC)()
    parts = [_scan_regions(fd, a, b, vec) for a, b in _coalesce(maps)]
    regions = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.uint64)
    blk, pages, cats, first = _regions_to_pages(regions)
    return _aggregate(blk, pages, (cats & PAGE_IS_PRESENT) != 0, (cats & PAGE_IS_SWAPPED) != 0,
                      (cats & PAGE_IS_HUGE) != 0,
                      (cats & (PAGE_IS_PFNZERO | PAGE_IS_PRESENT)) == (PAGE_IS_PFNZERO
                                                                        | PAGE_IS_PRESENT),
                      (cats & (PAGE_IS_FILE | PAGE_IS_PRESENT)) == (PAGE_IS_FILE
                                                                     | PAGE_IS_PRESENT),
                      "pagemap_scan", 0, first if bitmap else None)


def _coalesce(maps: list[MapEntry]) -> list[tuple[int, int]]:
    """Address ranges of ``maps`` with touching VMAs joined (one ioctl loop
    each); [vsyscall] and anything past the user address space is dropped."""
    out: list[tuple[int, int]] = []
    for m in sorted(maps, key=lambda e: e.start):
        if m.end > USER_TOP:
            continue
        if out and out[-1][1] == m.start:
            out[-1] = (out[-1][0], m.end)
        else:
            out.append((m.start, m.end))
    return out


def _presence_raw(fd: int, maps: list[MapEntry], cap: int, bitmap: bool) -> BlockPresence:
    """Raw pagemap: 8 bytes per page, read in chunks; VMAs larger than ``cap``
    bytes are skipped (reading a 1 TiB reservation would read 2 GiB)."""
    blocks: list[np.ndarray] = []
    pres: list[np.ndarray] = []
    swap: list[np.ndarray] = []
    fil: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    skipped = 0
    for m in maps:
        if m.end > USER_TOP:
            continue
        if m.size > cap:
            skipped += m.size
            continue
        pos = m.start
        while pos < m.end:
            n = min(_RAW_CHUNK, (m.end - pos) >> PAGE_SHIFT)
            try:
                data = os.pread(fd, 8 * n, (pos >> PAGE_SHIFT) * 8)
            except ProcessLookupError as exc:
                raise ProcessGone("process is gone") from exc
            ent = np.frombuffer(data, dtype=np.uint64)
            if ent.size == 0:
                break
            p = (ent & np.uint64(_PM_PRESENT)) != 0
            s = (ent & np.uint64(_PM_SWAPPED)) != 0
            f = p & ((ent & np.uint64(_PM_FILE)) != 0)
            hit = np.flatnonzero(p | s)
            if hit.size:
                addr = pos + (hit.astype(np.int64) << PAGE_SHIFT)
                blocks.append(addr >> BLOCK_SHIFT)
                idx.append(addr >> PAGE_SHIFT)
                pres.append(p[hit])
                swap.append(s[hit])
                fil.append(f[hit])
            pos += ent.size << PAGE_SHIFT
    if not blocks:
        e = np.zeros(0, dtype=np.int64)
        return _aggregate(e, e, e, e, e.astype(bool), e, e, "pagemap", skipped,
                          e if bitmap else None)
    blk = np.concatenate(blocks)
    ones = np.ones(blk.size, dtype=np.int64)
    first = (np.concatenate(idx) & (PAGES_PER_BLOCK - 1)) if bitmap else None
    return _aggregate(blk, ones, np.concatenate(pres), np.concatenate(swap),
                      np.zeros(blk.size, dtype=bool), np.zeros(blk.size, dtype=bool),
                      np.concatenate(fil), "pagemap", skipped, first)


def block_presence(pid: int | str = "self", maps: list[MapEntry] | None = None,
                   method: str = "auto", raw_cap_bytes: int = 64 << 30,
                   bitmap: bool = False, root: str | os.PathLike[str] = PROC_ROOT
                   ) -> BlockPresence:
    """Present/swapped pages per 2 MiB block of process ``pid``.

    ``method``: ``"auto"`` uses ``PAGEMAP_SCAN`` and falls back to the raw
    pagemap when the ioctl is unsupported (ENOTTY/EINVAL); ``"pagemap_scan"``
    or ``"pagemap"`` forces one.  ``PAGEMAP_SCAN`` returns only present and
    swapped runs, so a huge sparse mapping costs what its present pages cost;
    the raw fallback reads 8 bytes per mapped page in chunks and skips VMAs
    larger than ``raw_cap_bytes`` (reported in ``skipped_bytes``).  ``maps``
    defaults to a fresh :func:`read_maps`.

    The raw fallback cannot see PMD mappings (``huge`` is all False) nor the
    zero page (``zero`` is 0).  ``bitmap=True`` also fills ``bits`` (which
    pages are present), as the trace capturer needs.
    """
    if method not in ("auto", "pagemap_scan", "pagemap"):
        raise ValueError(f"method must be auto, pagemap_scan or pagemap, not {method!r}")
    if maps is None:
        maps = read_maps(pid, root)
    fd = _open_pagemap(pid, root)
    try:
        if method != "pagemap":
            try:
                return _presence_scan(fd, maps, bitmap)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise ProcessGone(f"process {pid} is gone") from exc
                if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                    raise
                if method == "pagemap_scan":
                    raise PagemapUnavailable(
                        f"PAGEMAP_SCAN is not supported here ({os.strerror(exc.errno)}); "
                        "it needs Linux >= 6.7, use method='pagemap'") from exc
        try:
            return _presence_raw(fd, maps, raw_cap_bytes, bitmap)
        except PermissionError as exc:
            raise PagemapUnavailable(f"/proc/{pid}/pagemap: permission denied") from exc
    finally:
        os.close(fd)


def upper_tables(blocks: np.ndarray) -> int:
    """PMD + PUD tables needed above PTE tables at ``blocks`` (``addr >> 21``):
    one PMD table per distinct 1 GiB range, one PUD table per 512 GiB range."""
    if blocks.size == 0:
        return 0
    return int(np.unique(blocks >> 9).size + np.unique(blocks >> 18).size)


def estimate_empty_tables(status: dict[str, int], presence: BlockPresence) -> int:
    """Estimate the PTE tables of a process that map no page at all.

    ``VmPTE`` counts PTE, PMD and PUD tables at 4 KiB each (RULES.md R1), so
    the PTE tables are ``VmPTE / 4`` less the upper tables.  The upper tables
    are estimated from the blocks that hold pages (one PMD per 1 GiB, one PUD
    per 512 GiB that has any): this undercounts upper tables that only sit
    above empty PTE tables, so the result is an upper bound by at most a few
    tables for a process whose empty tables lie in other GiBs.  Every block
    with a present or swapped page has a table, except a PMD-mapped file or
    shmem THP (an anon THP keeps its deposited table, counted in VmPTE: R21),
    so those blocks are subtracted.  Floored at 0.
    """
    tables = status.get("VmPTE", 0) // 4
    occupied = presence.block
    pte_tables = tables - upper_tables(occupied)
    huge_file = presence.huge & (presence.file > 0)
    with_table = int(occupied.size - np.count_nonzero(huge_file))
    return max(0, pte_tables - with_table)
