"""The atomic file writer of what the tools write themselves (configs, reports, traces,
plots): :func:`write_text_atomic`, so that a crash or a full disk never leaves a
half-written file where a good one was.  It lives in the simulator's package because
the simulator writes traces and imports nothing above itself;
:mod:`ptreclaim.envs.configio` re-exports it."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str | bytes) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same
    folder, flushed and fsynced, then ``os.replace``.

    The file gets the mode a plain ``open()`` would give it: the mode of the file it
    replaces, or 0666 less the umask.  The temporary file is created with that mode and
    the kernel applies the umask, so the process umask is never read by changing it
    (which would race with other threads creating files).  Unlike ``open()``, a symlink
    at ``path`` is replaced, not written through: a crafted run folder cannot point a
    report at a file elsewhere (the new file takes the mode a new file gets)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(p)
        keep: int | None = None if stat.S_ISLNK(st.st_mode) else st.st_mode & 0o7777
    except FileNotFoundError:
        keep = None
    fd, tmp = _create_temp(p, 0o666 if keep is None else keep)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
            if keep is not None:
                # After the write, which clears set-user/group-ID bits for a non-root
                # writer; the umask may also have taken bits the old file had.
                os.fchmod(f.fileno(), keep)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_temp(p: Path, mode: int) -> tuple[int, str]:
    """A new file beside ``p`` (``.<name>.<random>.tmp``), open for writing, created with
    ``mode`` less the umask; its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(100):
        tmp = str(p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{p.parent}: no free temporary file name for {p.name}")
