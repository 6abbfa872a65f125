"""Seeded generator of realistic op scripts (format: ``shared/kernel/OPSCRIPT.md``).

The scripts imitate what real programs do to their page tables -- allocators purging
memory, hypervisors ballooning guest RAM, virtio-mem plugging blocks, page-table hogs,
kdump reading a ballooned guest, file/shmem users and VMA-layout churn -- so that the
page-table model can be checked against the live-kernel oracle on many more cases than
the hand-written experiments, and so that workloads can be sampled from the same mix.

Every script is a pure function of the ``numpy.random.Generator`` it is given:
:func:`generate_corpus` gives each script its own child generator (spawned from one
``SeedSequence``), so the same seed yields the same corpus byte for byte.

While generating, a small conservative model of the address space (VMAs as segments,
their protection, locks, guard markers, backing files and their sizes) decides for each
op whether it surely succeeds on the kernel.  Any op it cannot vouch for -- including
the ones made to fail on purpose -- ends with ``mayfail``.  The model never merges
segments and splits them at every op boundary, so its segments are always a refinement
of the kernel's VMAs: "inside one segment" implies "inside one VMA".

Families (:data:`FAMILIES`, one line each from :func:`family_doc`): ``allocator``
(jemalloc, glibc malloc, an mmap/munmap runtime, a JVM heap), ``balloon``,
``virtio_mem``, ``hog``, ``kdump``, ``file``, ``layout`` and ``mixed`` (all of them in one
process plus ops that fail on purpose).  THP scripts (``# ptoracle-opts: -t``) are an
option, off by default.

Cost bound: each script touches at most :data:`TOUCH_BUDGET` pages in total (touch
accesses plus populate-like ops, see :func:`page_cost`), fills at most
:data:`PAGE_CACHE_BUDGET` of ext4 page cache, and stays within an estimated
:data:`WORK_BUDGET` of kernel time, so it replays on the kernel in well under a second
even when it maps hundreds of GiB (``norsv``: untouched memory is free).

The package: :mod:`.common` (budgets, limits, the seeded draws), :mod:`.builder` (the
conservative model that emits the op lines; :func:`page_cost`), the actors by family
group (:mod:`.actor`, their base; :mod:`.allocators`; :mod:`.guests`: ``balloon``,
``virtio_mem``, ``kdump``; :mod:`.hog`; :mod:`.files`; :mod:`.layout`: ``layout`` and the
ops that fail on purpose), :mod:`.thp` (THP-only ops) and :mod:`.corpus` (the families,
:func:`generate`, :func:`generate_corpus`).
"""

from __future__ import annotations

from .builder import page_cost
from .common import DEFAULT_N_OPS, MAX_IDENT, PAGE_CACHE_BUDGET, TOUCH_BUDGET, WORK_BUDGET
from .common import _fmt as _fmt
from .corpus import FAMILIES, family_doc, generate, generate_corpus
from .thp import _collapse_refault as _collapse_refault

__all__ = ["DEFAULT_N_OPS", "FAMILIES", "MAX_IDENT", "PAGE_CACHE_BUDGET", "TOUCH_BUDGET",
           "WORK_BUDGET", "family_doc", "generate", "generate_corpus", "page_cost"]
