"""The live-kernel oracle: replay an op script on the running kernel.

The work is done by ``ptoracle.c`` (shipped next to this module), a small C
program that reads a script in normalized form on stdin and prints the
process's VmPTE delta after every op.  This module compiles it on demand into a
cache directory, runs it and parses its output into :class:`OpResult` values.

The numbers are only meaningful on a kernel like the one the rules were
measured on (Linux with ``CONFIG_PT_RECLAIM=y``, 4-level paging, 4 KiB pages);
:func:`kernel_status` says whether the running kernel qualifies and, if not,
why, in one line.

Typical use::

    from ptreclaim.envs.kernel.oracle import run_script
    from ptreclaim.envs.sim.opscript import parse_file

    for op, res in zip(script.ops, run_script(parse_file("E01.script"))):
        print(res.delta_kib, res.failed or "ok", op.text)
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ptreclaim.envs.sim.opscript import OpScriptError, Script, parse_file, parse_text, read_expected

__all__ = [
    "OpResult",
    "OracleError",
    "OracleUnavailable",
    "build_oracle",
    "cache_dir",
    "kernel_status",
    "parse_output",
    "run_normalized",
    "run_script",
]

SOURCE_NAME = "ptoracle.c"
CFLAGS: tuple[str, ...] = ("-O2", "-Wall", "-Wextra")
#: Link variants tried in order.  A static non-PIE binary keeps the program's
#: own address space small, and its image near 4 MiB, far below the script slots
#: (a PIE image near 85 TiB would sit in slot 138).  Where no static libc is
#: installed, a non-PIE dynamic binary with eager binding (``-z now``) still does
#: no lazy symbol resolution -- and so no first-time writes -- during a run.
LINK_VARIANTS: tuple[tuple[str, ...], ...] = (("-static",), ("-no-pie", "-Wl,-z,now"))
#: Exit statuses of the C program (see the comment at the top of ptoracle.c).
EXIT_MALFORMED = 2
EXIT_UNAVAILABLE = 3
EXIT_UNREPLAYABLE = 4

#: A tiny script whose answer pins down the features the oracle relies on:
#: 8 MiB touched every 2 MiB = 4 PTE + 1 PMD + 1 PUD table = 24 KiB, and an
#: aligned 2 MiB DONTNEED frees one PTE table only with CONFIG_PT_RECLAIM.
#: The 4 KiB file mapping checks that a usable ext4 directory exists.
_PROBE = """\
mmap 0 anon private 8M
touch 0 0 8M write 2M
madvise 0 0 2M DONTNEED
mmap 1 file shared 4K
"""
_PROBE_EXPECTED = [0, 24, 20, 20]


class OracleUnavailable(RuntimeError):
    """The running kernel (or machine) cannot serve as the oracle; one-line reason."""


class OracleError(RuntimeError):
    """The oracle program misbehaved: compile failure, crash, or unexpected output."""


@dataclass(frozen=True)
class OpResult:
    """What the kernel reported for one op.

    ``delta_kib`` is the process's VmPTE minus the baseline taken before the
    first op (for ``fork``: the child's delta against a reference child).
    ``failed`` is ``None`` or ``"OP: ERRNAME"`` (``"madvise: EINVAL"``,
    ``"touch: SIGSEGV"``).  ``maps`` holds, for a ``maps`` op, one entry
    ``"ID START_KIB END_KIB PERMS"`` per VMA inside a script slot, with
    addresses relative to that ID's slot.  ``zap`` holds, with ``zap=True`` and
    for a ``madvise`` or ``munmap`` op, one entry ``"ID SLOT_KIB USED"`` per
    2 MiB slot the op's range overlaps: the pages left with a non-none entry
    (``PAGEMAP_SCAN``: present, swapped or a guard marker).
    """

    delta_kib: int
    failed: str | None = None
    maps: tuple[str, ...] = ()
    zap: tuple[str, ...] = ()


def _one_line(text: str, limit: int = 400) -> str:
    """Collapse a multi-line message (compiler or program stderr) into one line."""
    line = " | ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def cache_dir() -> Path:
    """Where compiled oracle binaries live: ``$PTRECLAIM_CACHE``, else
    ``$XDG_CACHE_HOME/ptreclaim``, else ``~/.cache/ptreclaim``."""
    explicit = os.environ.get("PTRECLAIM_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ptreclaim"


def _compiler() -> str:
    return os.environ.get("CC") or "cc"


@functools.lru_cache(maxsize=8)
def _compiler_identity(cc: str) -> str:
    """``cc --version`` output; part of the binary's cache key."""
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OracleUnavailable(f"no usable C compiler {cc!r}: {exc}") from None
    if proc.returncode != 0:
        raise OracleUnavailable(f"C compiler {cc!r} --version failed: {_one_line(proc.stderr)}")
    return proc.stdout.strip()


def _default_source() -> bytes:
    return Path(__file__).with_name(SOURCE_NAME).read_bytes()


def build_oracle(source: Path | None = None) -> Path:
    """Compile the oracle program if needed and return the executable's path.

    The binary is named by a hash of the source, the compiler's ``--version``
    and the flags, so an edited source (or another compiler) gets a fresh
    build while an unchanged one is reused.  ``source`` defaults to the
    ``ptoracle.c`` shipped with this package.  The build goes to a private
    temporary directory next to the target and is moved into place with
    ``os.replace``, so concurrent builders never expose a half-written file.

    Raises :class:`OracleUnavailable` when there is no C compiler and
    :class:`OracleError` when compilation fails.
    """
    src = source.read_bytes() if source is not None else _default_source()
    cc = _compiler()
    ident = _compiler_identity(cc)
    flags = repr((CFLAGS, LINK_VARIANTS)).encode()
    key = hashlib.sha256(src + b"\0" + ident.encode() + b"\0" + flags).hexdigest()[:16]
    dest = cache_dir() / f"ptoracle-{key}"
    if dest.is_file() and os.access(dest, os.X_OK):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
            # Compile exactly the bytes that were hashed, even if the package
            # file is edited meanwhile (or lives inside a zip).
            src_path = Path(tmp) / SOURCE_NAME
            src_path.write_bytes(src)
            out = Path(tmp) / "ptoracle"
            errors = []
            for variant in LINK_VARIANTS:
                cmd = [cc, *CFLAGS, *variant, "-o", str(out), str(src_path)]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if proc.returncode == 0:
                    break
                errors.append(f"{' '.join(variant)}: {_one_line(proc.stderr, 200)}")
            else:
                raise OracleError(f"cannot compile {SOURCE_NAME} with {cc}: {'; '.join(errors)}")
            os.replace(out, dest)
    except OSError as exc:
        raise OracleError(f"cannot build the oracle in {dest.parent}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise OracleError(f"compiling {SOURCE_NAME} with {cc} timed out") from None
    return dest


def parse_output(stdout: str) -> list[OpResult]:
    """Parse the program's stdout: ``#maps`` and ``#zap`` lines, then
    ``DELTA<TAB>STATUS`` per op.

    Raises :class:`OracleError` for a line that fits none of these shapes.
    """
    results: list[OpResult] = []
    pending: list[str] = []
    zaps: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("#maps "):
            pending.append(line[len("#maps "):])
            continue
        if line.startswith("#zap "):
            zaps.append(line[len("#zap "):])
            continue
        delta_text, tab, status = line.partition("\t")
        try:
            delta = int(delta_text)
        except ValueError:
            delta = None
        if not tab or delta is None:
            raise OracleError(f"unparsable oracle output line {line!r}")
        failed: str | None
        if status == "ok":
            failed = None
        elif status.startswith("FAILED:") and status.count(":") == 2:
            op_name, err = status[len("FAILED:"):].split(":")
            failed = f"{op_name}: {err}"
        else:
            raise OracleError(f"unknown status in oracle output line {line!r}")
        results.append(OpResult(delta, failed, tuple(pending), tuple(zaps)))
        pending = []
        zaps = []
    if pending or zaps:
        raise OracleError("oracle output ends with #maps or #zap lines that belong to no op")
    return results


def run_normalized(
    normalized: str,
    n_ops: int,
    *,
    thp: bool = False,
    timeout: float = 60,
    file_dir: str | os.PathLike[str] | None = None,
    zap: bool = False,
) -> list[OpResult]:
    """Run the oracle program on already-normalized text; no kernel check.

    With ``zap`` the program also reports, after each ``madvise`` and ``munmap``,
    the pages left with a non-none entry in each 2 MiB slot of the op's range
    (:attr:`OpResult.zap`).

    This is the step :func:`run_script` and :func:`kernel_status` share.  It
    raises :class:`OracleUnavailable` when the program says the machine cannot
    serve (exit 3) and :class:`OracleError` for anything else unexpected,
    including a result count different from ``n_ops``.
    """
    exe = build_oracle()
    cmd = [str(exe)]
    if thp:
        cmd.append("-t")
    if zap:
        cmd.append("-z")
    if file_dir is not None:
        cmd += ["-d", os.fspath(file_dir)]
    try:
        proc = subprocess.run(cmd, input=normalized, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OracleError(f"oracle program timed out after {timeout:g} s") from None
    except OSError as exc:
        raise OracleUnavailable(f"cannot run the oracle program {exe}: {exc}") from None
    stderr = _one_line(proc.stderr)
    if proc.returncode == EXIT_UNAVAILABLE:
        raise OracleUnavailable(stderr or "oracle program says this machine cannot serve")
    if proc.returncode == EXIT_MALFORMED:
        raise OracleError(f"oracle program rejected its input: {stderr}")
    if proc.returncode == EXIT_UNREPLAYABLE:
        raise OracleError(f"oracle cannot replay this script: {stderr}")
    if proc.returncode != 0:
        raise OracleError(f"oracle program exited with status {proc.returncode}: {stderr}")
    results = parse_output(proc.stdout)
    if len(results) != n_ops:
        raise OracleError(
            f"oracle program printed {len(results)} results for {n_ops} ops; stderr: {stderr}")
    return results


def _kernel_config() -> tuple[str | None, str]:
    """The running kernel's config text and where it came from, if readable."""
    release = platform.release()
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
            continue
        return text, str(path)
    return None, ""


@functools.lru_cache(maxsize=1)
def kernel_status() -> tuple[bool, str]:
    """Whether the running kernel can serve as the oracle, and if not, why.

    Returns ``(True, description)`` or ``(False, one-line reason)``.  Checks, in
    order: Linux; a VmPTE line in ``/proc/self/status``; ``CONFIG_PT_RECLAIM``
    in the kernel config when the config is readable; a C compiler; that the
    program builds and runs; and a probe script whose numbers need 4-level
    paging, VmPTE accounting and PT_RECLAIM (the only check when the config is
    unreadable).  The answer is cached for the life of the process.
    """
    if platform.system() != "Linux":
        return False, f"not Linux ({platform.system()}): the oracle needs /proc and Linux mm"
    try:
        status = Path("/proc/self/status").read_text()
    except OSError as exc:
        return False, f"cannot read /proc/self/status: {exc.strerror}"
    if "\nVmPTE:" not in status:
        return False, "no VmPTE line in /proc/self/status"
    config, config_source = _kernel_config()
    if config is not None and "CONFIG_PT_RECLAIM=y" not in config.splitlines():
        return False, f"CONFIG_PT_RECLAIM is not enabled ({config_source})"
    cc = _compiler()
    if shutil.which(cc) is None:
        return False, f"no C compiler ({cc!r} not found; set CC)"
    try:
        probe = parse_text(_PROBE, source="<probe>")
        got = [r.delta_kib for r in run_normalized(probe.normalized(), len(probe.ops), timeout=30)]
    except (OracleUnavailable, OracleError) as exc:
        return False, str(exc)
    if got != _PROBE_EXPECTED:
        if got[1] != _PROBE_EXPECTED[1]:
            why = (f"VmPTE accounting differs (8 MiB touched every 2 MiB cost {got[1]} KiB, "
                   f"expected {_PROBE_EXPECTED[1]}; 5-level paging or non-4K pages?)")
        elif got[1] - got[2] != 4:
            why = "an aligned 2 MiB MADV_DONTNEED freed no PTE table (no CONFIG_PT_RECLAIM?)"
        else:
            why = f"probe script gave {got}, expected {_PROBE_EXPECTED}"
        return False, why
    where = f"config from {config_source}" if config is not None else "probe passed"
    return True, f"Linux {platform.release()} with PT_RECLAIM ({where})"


def run_script(
    script: Script,
    *,
    timeout: float = 60,
    file_dir: str | os.PathLike[str] | None = None,
    zap: bool = False,
) -> list[OpResult]:
    """Replay ``script`` on the running kernel; one :class:`OpResult` per op.

    THP is left enabled when the script's header says ``-t``.  ``file_dir``
    overrides the ext4 directory for ``file`` backings (default:
    ``$PTORACLE_DIR``, else ``/tmp`` or ``/var/tmp``); ``zap`` asks for the
    per-slot entry counts after each ``madvise`` and ``munmap``.  Raises
    :class:`OracleUnavailable` when the kernel cannot serve and
    :class:`OracleError` when the program misbehaves.
    """
    ok, why = kernel_status()
    if not ok:
        raise OracleUnavailable(why)
    return run_normalized(script.normalized(), len(script.ops), thp=script.thp,
                          timeout=timeout, file_dir=file_dir, zap=zap)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: replay scripts, print one line per op, compare with ``.expected``.

    Exit status 0 when every script with an ``.expected`` file matched, 1 when
    one did not, 2 for an unusable script, 3 when the kernel cannot serve.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ptreclaim.envs.kernel.oracle",
        description="Replay op scripts on the running kernel (VmPTE deltas in KiB).")
    parser.add_argument("scripts", nargs="+", type=Path)
    parser.add_argument("-q", "--quiet", action="store_true", help="one summary line per script")
    args = parser.parse_args(argv)
    ok, why = kernel_status()
    if not ok:
        print(f"oracle unavailable: {why}", file=sys.stderr)
        return 3
    worst = 0
    for path in args.scripts:
        try:
            script = parse_file(path)
            results = run_script(script)
        except OpScriptError as exc:
            print(exc, file=sys.stderr)
            worst = max(worst, 2)
            continue
        except (OracleUnavailable, OracleError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 3 if isinstance(exc, OracleUnavailable) else 1
        expected_path = path.with_suffix(".expected")
        expected = read_expected(expected_path) if expected_path.exists() else None
        same = expected is None or [r.delta_kib for r in results] == expected
        if not same:
            worst = max(worst, 1)
        if args.quiet:
            verdict = "no .expected" if expected is None else ("match" if same else "MISMATCH")
            print(f"{path}: {verdict}")
            continue
        print(f"== {path}" + ("" if expected is None else f" ({'match' if same else 'MISMATCH'})"))
        for i, (op, res) in enumerate(zip(script.ops, results, strict=True)):
            for entry in res.maps:
                print(f"  maps: {entry}")
            mark = ""
            if expected is not None and i < len(expected) and expected[i] != res.delta_kib:
                mark = f"   <-- expected {expected[i]}"
            status = f"  [FAILED: {res.failed}]" if res.failed else ""
            print(f"{res.delta_kib}\t{op.text}{status}{mark}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
