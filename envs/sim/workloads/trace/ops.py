"""The model operations of a replay (:data:`Op`): what they are, and how one is applied
to an address space."""

from __future__ import annotations

from typing import Any

from ...pagetable import AddressSpace, AnonVma, BackingFile, Vma

#: A stand-in size for files of file mappings: the trace does not know their
#: sizes, and a mapping past EOF would fault SIGBUS in the model.
_FILE_SIZE = 1 << 46


class _Files:
    """Backing files of one replayed process, by key (a path)."""

    def __init__(self) -> None:
        self.by_key: dict[str, BackingFile] = {}
        self.keys: dict[int, str] = {}  # id(BackingFile) -> key

    def get(self, key: str) -> BackingFile:
        f = self.by_key.get(key)
        if f is None:
            kind = "shmem" if key.startswith(("/memfd:", "/dev/shm/", "/SYSV")) else "file"
            f = self.by_key[key] = BackingFile(kind, _FILE_SIZE)
            self.keys[id(f)] = key
        return f

    def key_of(self, v: Vma) -> str | None:
        if v.file is None:
            return None
        if v.file.anon:
            return "shm-anon"
        return self.keys.get(id(v.file), "?")


#: One model operation of a replay: a name and plain-data arguments (files by key).
Op = tuple[str, tuple[Any, ...]]


def _apply(mm: AddressSpace, files: _Files, name: str, args: tuple[Any, ...]) -> str | None:
    """Apply one replay operation to ``mm`` (see :func:`compile_trace`)."""
    if name == "touch":
        return mm.touch(*args)
    if name == "madvise":
        return mm.madvise(*args)
    if name == "munmap":
        return mm.munmap(*args)
    if name == "mprotect":
        return mm.mprotect(*args)
    if name == "mremap":
        old, old_len, new_len, new_addr, dontunmap = args
        return mm.mremap(old, old_len, new_len, new_addr, dontunmap)
    if name == "mmap":
        addr, length, key, shared, prot, foff, noreserve, fixed, populate = args
        file = files.get(key) if key is not None else None
        return mm.mmap(addr, length, kind="anon" if file is None else file.kind, shared=shared,
                       prot=prot, file=file, foff=foff, noreserve=noreserve, fixed=fixed,
                       populate=populate)
    if name == "install":  # a VMA exactly as the kernel has it (no merging)
        start, end, flags, pgoff, key, anon_vma = args
        if key == "shm-anon":
            file = BackingFile("shmem", end - start, anon=True)
        else:
            file = files.get(key) if key is not None else None
        if file is not None:
            file.mappers.add(mm)
        mm.vmas.append(Vma(start, end, flags, pgoff, file, AnonVma() if anon_vma else None))
        return None
    raise ValueError(f"unknown replay operation {name!r}")
