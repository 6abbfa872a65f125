"""Op scripts: the one format shared by the page-table model and the kernel oracle.

The format is specified in ``shared/kernel/OPSCRIPT.md`` (copied into the README):
one memory operation per line, each ``ID`` owning a private 512 GiB slot.  This
module only parses and validates; :mod:`ptreclaim.envs.sim.pagetable` applies the
ops and :mod:`ptreclaim.envs.kernel.oracle` replays them on the running kernel.

A parse error is an :class:`OpScriptError` whose message names the file, the line
number and what is wrong, so a command-line tool can print it as one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .units import GiB, KiB, MiB, TiB

PAGE = 4 * KiB

#: Each script ID owns the 512 GiB range [SLOT_BASE + ID * SLOT_SIZE, + SLOT_SIZE):
#: exactly the range one PUD table maps with 4-level paging.
SLOT_BASE = 16 * TiB
SLOT_SIZE = 512 * GiB
#: Size of the sparse ``file`` / ``shmem`` backing object the oracle creates per ID
#: (``BACKING_SIZE`` in ptoracle.c).
BACKING_SIZE = 64 * GiB
#: 4-level paging gives user space 128 TiB (slots 0..223), but the oracle's own
#: stack always lies in slot 223, so the last usable ID is 222.
MAX_ID = (128 * TiB - SLOT_BASE) // SLOT_SIZE - 2

ADVICES = (
    "DONTNEED", "DONTNEED_LOCKED", "FREE", "PAGEOUT", "COLD", "WILLNEED", "REMOVE",
    "COLLAPSE", "HUGEPAGE", "NOHUGEPAGE", "POPULATE_READ", "POPULATE_WRITE",
    "DONTFORK", "DOFORK", "WIPEONFORK", "KEEPONFORK", "GUARD_INSTALL", "GUARD_REMOVE",
    "NORMAL", "RANDOM", "SEQUENTIAL",
)
PROTS = {"none": 0, "r": 1, "rw": 3, "rx": 5, "rwx": 7}
KINDS = ("anon", "file", "shmem")
SHARES = ("private", "shared")
MMAP_FLAGS = ("ro", "populate", "norsv", "fixed", "hugepage", "nohugepage")
OPS = (
    "mmap", "touch", "madvise", "munmap", "mprotect", "mremap", "mlock", "munlock",
    "punch", "truncate", "fork", "thp", "sleep", "stat", "nop", "maps",
)

_SUFFIX = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_TERM = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)([KMGT]?)")


class OpScriptError(ValueError):
    """A malformed op script; the message is one line: ``FILE:LINE: problem``."""


def slot_address(ident: int) -> int:
    """Start address of the 512 GiB slot owned by script ID ``ident``."""
    return SLOT_BASE + ident * SLOT_SIZE


def parse_number(text: str) -> int:
    """Parse ``4K``, ``0x1000``, ``2M-4K`` or ``1G+2M`` into bytes.

    Raises ``ValueError`` with a short reason when ``text`` is not a number.
    """
    pos = 0
    total = 0
    sign = 1
    while True:
        m = _TERM.match(text, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a number (use e.g. 4096, 0x1000, 4K, 2M-4K)")
        digits, suffix = m.groups()
        value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits)
        total += sign * value * _SUFFIX[suffix]
        pos = m.end()
        if pos == len(text):
            return total
        if text[pos] not in "+-":
            raise ValueError(f"{text!r} is not a number (use e.g. 4096, 0x1000, 4K, 2M-4K)")
        sign = 1 if text[pos] == "+" else -1
        pos += 1


@dataclass(frozen=True)
class Op:
    """One parsed op line.  Fields not used by an op keep their defaults."""

    name: str
    lineno: int = 0
    text: str = ""
    ident: int = 0
    off: int = 0
    length: int = 0
    kind: str = ""
    share: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)
    foff: int = 0
    fd: int | None = None
    write: bool = False
    stride: int = PAGE
    advice: str = ""
    prot: int = 0
    new_length: int = 0
    dst_ident: int | None = None
    dst_off: int = 0
    dontunmap: bool = False
    value: int = 0  # truncate size, sleep ms, thp on(1)/off(0)
    mayfail: bool = False

    def normalized(self) -> str:
        """The op as one line with every number in decimal bytes (no suffixes, no
        arithmetic, no comment, no ``mayfail``): what the kernel oracle reads."""
        n = self.name
        if n == "mmap":
            words = [n, str(self.ident), self.kind, self.share, str(self.length), str(self.off)]
            words += sorted(self.flags)
            if self.foff:
                words.append(f"foff={self.foff}")
            if self.fd is not None:
                words.append(f"fd={self.fd}")
        elif n == "touch":
            words = [n, str(self.ident), str(self.off), str(self.length),
                     "write" if self.write else "read", str(self.stride)]
        elif n == "madvise":
            words = [n, str(self.ident), str(self.off), str(self.length), self.advice]
        elif n in ("munmap", "mlock", "munlock"):
            words = [n, str(self.ident), str(self.off), str(self.length)]
        elif n == "mprotect":
            prot = next(k for k, v in PROTS.items() if v == self.prot)
            words = [n, str(self.ident), str(self.off), str(self.length), prot]
        elif n == "mremap":
            words = [n, str(self.ident), str(self.off), str(self.length), str(self.new_length)]
            if self.dst_ident is not None:
                words += [str(self.dst_ident), str(self.dst_off)]
            if self.dontunmap:
                words.append("dontunmap")
        elif n == "punch":
            words = [n, str(self.ident), str(self.off), str(self.length)]
        elif n == "truncate":
            words = [n, str(self.ident), str(self.value)]
        elif n == "thp":
            words = [n, "on" if self.value else "off"]
        elif n == "sleep":
            words = [n, str(self.value)]
        else:
            words = [n]
        return " ".join(words)


@dataclass(frozen=True)
class Script:
    """A parsed op script: its ops and whether THP is left enabled (``-t``)."""

    ops: tuple[Op, ...]
    thp: bool = False
    source: str = "<script>"

    def normalized(self) -> str:
        """The whole script in the oracle's normalized form, one op per line."""
        return "".join(op.normalized() + "\n" for op in self.ops)


class _Line:
    """Tokens of one line with helpers that raise located errors."""

    def __init__(self, source: str, lineno: int, words: list[str]) -> None:
        self.source, self.lineno, self.words = source, lineno, words

    def fail(self, problem: str) -> OpScriptError:
        return OpScriptError(f"{self.source}:{self.lineno}: {problem}")

    def need(self, lo: int, hi: int, usage: str) -> None:
        if not lo <= len(self.words) <= hi:
            got = len(self.words) - 1
            raise self.fail(f"'{self.words[0]}' takes {usage}; got {got} argument(s)")

    def number(self, i: int, what: str) -> int:
        try:
            value = parse_number(self.words[i])
        except ValueError as exc:
            raise self.fail(f"{what}: {exc}") from None
        if value < 0:
            raise self.fail(f"{what} must not be negative, got {self.words[i]}")
        return value

    def ident(self, i: int, what: str = "ID") -> int:
        word = self.words[i]
        if not word.isdigit() or int(word) > MAX_ID:
            raise self.fail(f"{what} must be an integer from 0 to {MAX_ID}, got {word!r}")
        return int(word)

    def choice(self, i: int, what: str, allowed: tuple[str, ...] | dict[str, int]) -> str:
        word = self.words[i]
        if word not in allowed:
            raise self.fail(f"{what} must be one of {', '.join(allowed)}; got {word!r}")
        return word

    def within_slot(self, off: int, length: int) -> None:
        if off + length > SLOT_SIZE:
            raise self.fail("range ends past its ID's 512 GiB slot (offset + length > 512G)")


def _parse_line(line: _Line) -> Op:
    w = line.words
    name = w[0]
    mayfail = False
    if len(w) > 1 and w[-1] == "mayfail":
        mayfail = True
        w = line.words = w[:-1]

    def mk(**fields: Any) -> Op:
        return Op(name=name, lineno=line.lineno, mayfail=mayfail, **fields)

    if name == "mmap":
        if len(w) < 5:
            raise line.fail("'mmap' takes ID KIND SHARE SIZE [OFF] [opts]")
        ident = line.ident(1)
        kind = line.choice(2, "KIND", KINDS)
        share = line.choice(3, "SHARE", SHARES)
        size = line.number(4, "SIZE")
        rest = w[5:]
        off = 0
        if rest and rest[0][0].isdigit():
            off = line.number(5, "OFF")
            rest = rest[1:]
        flags: set[str] = set()
        foff, fd = 0, None
        for word in rest:
            if word in MMAP_FLAGS:
                flags.add(word)
            elif word.startswith("foff="):
                try:
                    foff = parse_number(word[5:])
                except ValueError as exc:
                    raise line.fail(f"foff: {exc}") from None
            elif word.startswith("fd="):
                if not word[3:].isdigit() or int(word[3:]) > MAX_ID:
                    raise line.fail(f"fd= takes an ID from 0 to {MAX_ID}, got {word!r}")
                fd = int(word[3:])
            else:
                raise line.fail(
                    f"unknown mmap option {word!r} "
                    f"(allowed: {', '.join(MMAP_FLAGS)}, foff=N, fd=ID)")
        if kind == "anon" and (foff or fd is not None):
            raise line.fail("foff= and fd= apply to file and shmem mappings only")
        line.within_slot(off, size)
        return mk(ident=ident, kind=kind, share=share, length=size, off=off,
                  flags=frozenset(flags), foff=foff, fd=fd)
    if name == "touch":
        line.need(5, 6, "ID OFF LEN write|read [STRIDE]")
        access = line.choice(4, "access", ("write", "read"))
        stride = line.number(5, "STRIDE") if len(w) == 6 else PAGE
        if stride == 0:
            raise line.fail("STRIDE must be positive")
        off, length = line.number(2, "OFF"), line.number(3, "LEN")
        line.within_slot(off, length)
        return mk(ident=line.ident(1), off=off, length=length, write=access == "write",
                  stride=stride)
    if name == "madvise":
        line.need(5, 5, "ID OFF LEN ADVICE")
        off, length = line.number(2, "OFF"), line.number(3, "LEN")
        line.within_slot(off, length)
        return mk(ident=line.ident(1), off=off, length=length,
                  advice=line.choice(4, "ADVICE", ADVICES))
    if name in ("munmap", "mlock", "munlock"):
        line.need(4, 4, "ID OFF LEN")
        off, length = line.number(2, "OFF"), line.number(3, "LEN")
        line.within_slot(off, length)
        return mk(ident=line.ident(1), off=off, length=length)
    if name == "mprotect":
        line.need(5, 5, "ID OFF LEN none|r|rw|rx|rwx")
        off, length = line.number(2, "OFF"), line.number(3, "LEN")
        line.within_slot(off, length)
        return mk(ident=line.ident(1), off=off, length=length,
                  prot=PROTS[line.choice(4, "PROT", PROTS)])
    if name == "mremap":
        dontunmap = len(w) > 1 and w[-1] == "dontunmap"
        if dontunmap:
            w = line.words = w[:-1]
        if len(w) not in (5, 7):
            raise line.fail("'mremap' takes ID OFF OLDLEN NEWLEN [DSTID DSTOFF] [dontunmap]")
        off, old, new = line.number(2, "OFF"), line.number(3, "OLDLEN"), line.number(4, "NEWLEN")
        line.within_slot(off, max(old, new))
        dst_ident, dst_off = None, 0
        if len(w) == 7:
            dst_ident, dst_off = line.ident(5, "DSTID"), line.number(6, "DSTOFF")
            line.within_slot(dst_off, new)
        elif dontunmap:
            raise line.fail("dontunmap needs a destination (DSTID DSTOFF)")
        return mk(ident=line.ident(1), off=off, length=old, new_length=new,
                  dst_ident=dst_ident, dst_off=dst_off, dontunmap=dontunmap)
    if name == "punch":
        line.need(4, 4, "ID FOFF LEN")
        return mk(ident=line.ident(1), off=line.number(2, "FOFF"),
                  length=line.number(3, "LEN"))
    if name == "truncate":
        line.need(3, 3, "ID SIZE")
        return mk(ident=line.ident(1), value=line.number(2, "SIZE"))
    if name == "thp":
        line.need(2, 2, "on|off")
        return mk(value=int(line.choice(1, "thp", ("on", "off")) == "on"))
    if name == "sleep":
        line.need(2, 2, "MS")
        return mk(value=line.number(1, "MS"))
    if name in ("fork", "stat", "nop", "maps"):
        line.need(1, 1, "no arguments")
        return mk()
    raise line.fail(f"unknown op {name!r} (known: {', '.join(OPS)})")


def parse_text(text: str, source: str = "<script>") -> Script:
    """Parse op-script text; ``source`` names it in error messages."""
    ops: list[Op] = []
    thp = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if lineno == 1 and raw.strip().startswith("#"):
            header = raw.strip().lstrip("#").strip()
            if header.startswith("ptoracle-opts:"):
                opts = header.split(":", 1)[1].split()
                unknown = [o for o in opts if o != "-t"]
                if unknown:
                    raise OpScriptError(
                        f"{source}:1: unknown ptoracle option(s) {' '.join(unknown)} (only -t)")
                thp = "-t" in opts
        body = raw.split("#", 1)[0].strip()
        if not body:
            continue
        op = _parse_line(_Line(source, lineno, body.split()))
        ops.append(replace(op, text=body))
    return Script(ops=tuple(ops), thp=thp, source=source)


def parse_file(path: str | Path) -> Script:
    """Read and parse an op script file.

    Raises :class:`OpScriptError` (one line) for a malformed line, and also when
    the file cannot be read.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OpScriptError(f"{p}: cannot read op script: {reason}") from None
    return parse_text(text, source=str(p))


def read_expected(path: str | Path) -> list[int]:
    """Read an ``.expected`` file: one VmPTE delta (KiB) per op line.

    Raises :class:`OpScriptError` (one line) for a line that is no integer,
    and also when the file cannot be read (missing, a folder, not UTF-8).
    """
    p = Path(path)
    fix = ("an .expected file is UTF-8 text, one integer KiB delta per op line, as "
           "`kernel_check.py kernel SCRIPT` prints them")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OpScriptError(f"{p}: not UTF-8 text (byte {exc.start}); {fix}") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            reason = "no such file"
        elif isinstance(exc, IsADirectoryError):
            reason = "is a folder"
        else:
            reason = exc.strerror or str(exc)
        raise OpScriptError(f"{p}: cannot read the expected deltas ({reason}); {fix}") from None
    values = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        word = raw.split("\t", 1)[0].strip()
        if not word:
            continue
        try:
            values.append(int(word))
        except ValueError:
            raise OpScriptError(
                f"{p}:{lineno}: expected an integer KiB delta, got {word!r}") from None
    return values
