"""The compiled core's vector paths against their portable fallbacks (issue 13).

``PteTable::chunk_bits`` and the per-kind count behind ``PteTable::recount`` and the range
writes (``byte_hist``) read 16 bytes
at a time with SSE2 where the compiler has it (every x86-64 build), and fall back to
word-at-a-time code elsewhere, which the extension built here never runs.  This builds a
small C++ program over ``pagetable.cpp`` twice, with the vector paths and with
``PTFAST_NO_SIMD`` (the fallbacks), drives the same random tables through both, and
checks every result against the table's entries read one by one (``PteTable::get``): the
two builds agree with each other and with the entries, so neither path can drift.  The
entries themselves are checked against a plain array given the same writes (single
entries, fills, range writes and ``replace_range`` with steps up to 140, which skip
chunks), so a range write that lands wrong fails too.  Each
random table is also copied into a table of its own (``OwnedPteTable``), whose entries and
counts must read the same.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FAST = Path(__file__).resolve().parents[1] / "envs" / "sim" / "fast"

HARNESS = r"""
#include "pagetable.hpp"
#include <cstdio>
#include <random>
using namespace ptfast;

// Bit k of chunk c from the entries one by one: what chunk_bits must return.
static uint64_t expected(const PteTable& t, int c, bool file) {
  uint64_t out = 0;
  for (int k = 0; k < 64; k++) {
    const uint8_t v = t.get(64 * c + k);
    if (file ? v == E_FILE : v != E_NONE) out |= uint64_t{1} << k;
  }
  return out;
}

int main() {
  std::mt19937_64 g(20261207);
  long bad = 0;
  for (int it = 0; it < 4000; it++) {
    OwnedPteTable own;  // a table with entries of its own, outside any table map
    PteTable& t = own.t;
    uint8_t ref[512] = {};  // the same writes, an entry a byte, one by one
    const int ops = (int)(g() % 12);
    for (int o = 0; o < ops; o++) {
      const uint8_t v = (uint8_t)(g() % 7);
      const long i = (long)(g() % 512), j = i + 1 + (long)(g() % (512 - i));
      // Steps 1-3 mostly; up to 140 (a step over a chunk's 64 entries skips chunks).
      const long step = g() % 4 ? 1 + (long)(g() % 3) : 1 + (long)(g() % 140);
      switch (g() % 6) {
        case 0: t.set(i, v); ref[i] = v; break;
        case 1: t.fill(v); for (long k = 0; k < 512; k++) ref[k] = v; break;
        case 2:
          t.set_range(i, j, step, v);
          for (long k = i; k < j; k += step) ref[k] = v;
          break;
        case 3: case 4: {
          // From a kind the range holds, mostly: else few entries change.
          const uint8_t from = g() % 3 ? ref[i] : (uint8_t)(g() % 7);
          t.replace_range(i, j, step, from, v);
          for (long k = i; k < j; k += step)
            if (ref[k] == from) ref[k] = v;
          break;
        }
        default:
          for (long k = i; k < j; k += 1 + (long)(g() % 40)) {
            const uint8_t x = (uint8_t)(g() % 7);
            t.set(k, x);
            ref[k] = x;
          }
      }
    }
    for (long k = 0; k < 512; k++) bad += t.get(k) != ref[k];
    for (int c = 0; c < 8; c++) {
      const uint64_t f = t.chunk_bits(c, PteTable::FILE_BITS);
      const uint64_t p = t.chunk_bits(c, PteTable::PRESENT_BITS);
      bad += f != expected(t, c, true);
      bad += p != expected(t, c, false);
      std::printf("%d %d %016llx %016llx\n", it, c, (unsigned long long)f,
                  (unsigned long long)p);
    }
    // A copy (what mremap and a clone of the simulation make) holds the same entries and
    // counts: the header and the live chunks are copied, and a chunk that is not live
    // reads as `rest` in both.
    OwnedPteTable copy(t);
    for (long k = 0; k < 512; k++) bad += copy.t.get(k) != t.get(k);
    for (int b = 0; b < 5; b++) bad += copy.t.n[b] != t.n[b];
    bad += copy.t.live != t.live || copy.t.rest != t.rest || copy.t.e == t.e;
    // The per-kind counts, kept through the range writes (which count a range's old
    // entries), then counted afresh (recount: the whole table or its live chunks).
    int want[5] = {0, 0, 0, 0, 0};
    for (long k = 0; k < 512; k++) want[PteTable::bucket(t.get(k))]++;
    for (int b = 0; b < 5; b++) bad += t.n[b] != want[b];
    t.recount();
    for (int b = 0; b < 5; b++) bad += t.n[b] != want[b];
    std::printf("%d n %d %d %d %d %d\n", it, t.n[0], t.n[1], t.n[2], t.n[3], t.n[4]);
  }
  std::printf("mismatches %ld\n", bad);
  return bad != 0;
}
"""


def _build_and_run(tmp_path: Path, name: str, flags: list[str]) -> str:
    src = tmp_path / "harness.cpp"
    src.write_text(HARNESS)
    exe = tmp_path / name
    built = subprocess.run(["g++", "-O2", "-std=c++17", "-pthread", *flags, f"-I{FAST}",
                            str(src), str(FAST / "pagetable.cpp"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, f"{name}: {run.stdout.splitlines()[-1:]} {run.stderr}"
    return run.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the core's compiler)")
def test_vector_paths_match_the_fallbacks_and_the_entries(tmp_path: Path) -> None:
    vector = _build_and_run(tmp_path, "vector", [])
    fallback = _build_and_run(tmp_path, "fallback", ["-DPTFAST_NO_SIMD"])
    assert vector.endswith("mismatches 0\n") and fallback.endswith("mismatches 0\n")
    assert vector == fallback
    assert len(vector.splitlines()) == 4000 * 9 + 1
