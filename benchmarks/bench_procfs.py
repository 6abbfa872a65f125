"""Benchmark the live-host readers: page presence and the advisor's sample.

Prints, from one run and measured side by side (interleaved rounds, so machine
noise hits every variant alike):

1. CPU time of one per-2 MiB-block presence read of a child process holding a
   sparse 32 GiB mapping with one written page per 2 MiB (16384 blocks), by
   the ``PAGEMAP_SCAN`` ioctl and by the raw ``/proc/PID/pagemap`` bits, and
   their ratio (what the capturer and ``host.py --scan-top`` pay);
2. CPU time of one advisor sample (``host.py``: host files, every process's
   status, PSI, zoneinfo) with mapping counts, without them (``--no-maps``),
   and with a ``PAGEMAP_SCAN`` pass over the top page-table consumer.

Reproduce: ``.venv/bin/python benchmarks/bench_procfs.py`` (``--quick`` for a
smoke run).  Needs Linux >= 6.7 for ``PAGEMAP_SCAN``; as root or the owner of
the child.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ptreclaim.envs import features
from ptreclaim.envs.host import procfs
from ptreclaim.envs.host import sample as host

#: The child: a MAP_NORESERVE reservation with one written page per 2 MiB
#: block, so every block holds a PTE table and one present page.
CHILD = """
import mmap, sys
blocks = int(sys.argv[1])
m = mmap.mmap(-1, blocks << 21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)
for i in range(blocks):
    m[i << 21] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def cpu_ms(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, a smaller child")
    args = ap.parse_args()
    rounds = 3 if args.quick else 15
    blocks = 2048 if args.quick else 16384
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(blocks)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            print("bench_procfs: the child did not start", file=sys.stderr)
            return 1
        pid = child.pid
        maps = procfs.read_maps(pid)
        root = Path(procfs.PROC_ROOT)
        notes = host.Notes()
        procs = host.sample_processes(root)
        top = features.top_consumers(procs.procs, 1)
        variants: dict[str, Callable[[], object]] = {
            "presence: PAGEMAP_SCAN": lambda: procfs.block_presence(pid, maps,
                                                                    method="pagemap_scan"),
            "presence: raw pagemap": lambda: procfs.block_presence(pid, maps, method="pagemap"),
            "advisor sample": lambda: (host.read_host(root, notes),
                                       host.sample_processes(root, want_maps=True)),
            "advisor sample --no-maps": lambda: (host.read_host(root, notes),
                                                 host.sample_processes(root,
                                                                          want_maps=False)),
            "advisor sample --scan-top 1": lambda: (
                host.read_host(root, notes), host.sample_processes(root, want_maps=True),
                host.scan_empty_tables(root, top, notes)),
        }
        first = procfs.block_presence(pid, maps, method="pagemap_scan")
        assert len(first.block) >= blocks, "the child's blocks are not all present"
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():  # interleaved: noise hits all alike
                times[name].append(cpu_ms(fn))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait()
    table = Table(title=f"CPU ms per call, median of {rounds} interleaved rounds "
                        f"(child: {blocks} blocks of one page, {len(procs.procs)} processes)")
    table.add_column("variant")
    table.add_column("median ms", justify="right")
    table.add_column("min ms", justify="right")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        table.add_row(name, f"{med[name]:.1f}", f"{min(v):.1f}")
    console = Console()
    console.print(table)
    scan, raw = med["presence: PAGEMAP_SCAN"], med["presence: raw pagemap"]
    console.print(f"PAGEMAP_SCAN / raw pagemap CPU: {scan / raw:.2f} "
                  f"(raw costs {raw / scan:.1f}x)")
    base = med["advisor sample"]
    no_maps, scan_top = med["advisor sample --no-maps"], med["advisor sample --scan-top 1"]
    console.print(f"advisor sample --no-maps / default: {no_maps / base:.2f}; "
                  f"--scan-top 1 / default: {scan_top / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
