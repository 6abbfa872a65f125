"""Trust in pickled files: only what ptreclaim wrote on this machine is loaded.

SB3 model zips, VecNormalize statistics and replay buffers are pickles, and
unpickling runs whatever code the file names.  So a pickled file is loaded
only when it is *trusted*: written by this tool on this machine.  The writer
records the SHA-256 of every pickled file it writes in the folder's manifest
(``trust.json``: relative path -> digest), and signs the manifest with
HMAC-SHA256 under a key that never leaves the user's config folder
(:func:`key_path`: ``$PTRECLAIM_TRUST_KEY_FILE``, else
``$XDG_CONFIG_HOME/ptreclaim/trust.key``, else ``~/.config/ptreclaim/trust.key``;
32 random bytes, mode 0600, created on the first signature).  A reader
verifies the manifest's HMAC, finds the file's entry and compares the digest
of the very bytes it then unpickles (no window between check and load).

A folder's location (``runs/``, the working folder) is no trust; a copied or
moved run folder stays trusted (the manifest names files relative to it); a
folder from another machine or user, an edited manifest and a replaced file
are not.  ``--trust-model`` is the explicit way around it
(:mod:`ptreclaim.agents.loading` says so on stderr).

Writers must own the folder they sign in (a run folder is claimed by its
training process: :meth:`ptreclaim.agents.runs.RunFolder.claim`): the
manifest is read, extended and replaced, not merged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from ..envs.configio import write_text_atomic
from ..envs.sim.config import ConfigError
from .export import sha256_file

__all__ = ["MANIFEST", "TrustError", "key_path", "sign_artifacts", "verify_bytes",
           "verify_folder"]

#: The manifest file of a signed folder.
MANIFEST = "trust.json"
#: Environment variable naming the key file (tests, a service with its own key).
KEY_ENV = "PTRECLAIM_TRUST_KEY_FILE"
KEY_BYTES = 32
_FORMAT = "ptreclaim-trust"
_VERSION = 1
#: Pickled artifacts a folder may hold: what :func:`verify_folder` checks.
PICKLED_SUFFIXES = (".zip", ".pkl")
#: A manifest larger than this is not one of ours (a run lists a few hundred files).
_MANIFEST_BYTES = 4 * 1024 * 1024


class TrustError(ConfigError):
    """A pickled file that is not trusted, or a trust key that cannot be used:
    one line, exit status 2 at the command line."""


def key_path() -> Path:
    """Where this user's trust key lives (see the module docstring)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "ptreclaim" / "trust.key"


def _read_key(path: Path) -> bytes | None:
    """The key at ``path``, or None when there is none.  Refuses a key that
    others could read or replace: whoever can write it can sign anything."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the trust key ({exc.strerror or exc}); "
                         f"make it a regular file of yours, mode 0600, or remove it") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise TrustError(f"{path}: the trust key must belong to you and be private; run "
                             f"chmod 600 {path} (if others could write it, remove it instead)")
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise TrustError(f"{path}: not a ptreclaim trust key ({len(key)} bytes, expected "
                         f"{KEY_BYTES}); remove it (a new one is made on the next training "
                         "run; what the old one signed must then be trusted again)")
    return key


def _create_key(path: Path) -> bytes:
    """A new random key at ``path``, created whole or not at all (a second
    process creating one at the same moment gets the first one's)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # fails if the key exists: never replace one
    finally:
        os.unlink(tmp)
    key = _read_key(path)
    assert key is not None
    return key


def _key(create: bool) -> bytes | None:
    path = key_path()
    try:
        key = _read_key(path)
        if key is None and create:
            key = _create_key(path)
    except TrustError:
        raise
    except OSError as exc:
        raise TrustError(f"{path}: cannot create the trust key ({exc.strerror or exc}); set "
                         f"{KEY_ENV} to a writable path") from None
    return key


def _mac(key: bytes, files: dict[str, str]) -> str:
    body = json.dumps({"format": _FORMAT, "version": _VERSION, "files": files},
                      sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def _read_manifest(root: Path, key: bytes | None) -> tuple[dict[str, str] | None, str]:
    """(the verified entries of ``root``'s manifest, or None with the reason)."""
    path = root / MANIFEST
    try:
        with path.open("rb") as f:
            raw = f.read(_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None, f"no {MANIFEST} next to it"
    except OSError as exc:
        return None, f"{MANIFEST} is unreadable ({exc.strerror or exc})"
    try:
        data = json.loads(raw) if len(raw) <= _MANIFEST_BYTES else None
    except (ValueError, RecursionError):
        data = None
    files = data.get("files") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != _FORMAT
            or data.get("version") != _VERSION or not isinstance(files, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
            or not isinstance(data.get("hmac"), str)):
        return None, f"{MANIFEST} is not a ptreclaim manifest"
    if key is None:
        return None, f"this machine has no trust key yet ({key_path()}), so it signed nothing"
    if not hmac.compare_digest(_mac(key, files), data["hmac"]):
        return None, (f"{MANIFEST} was not signed with this machine's key (made elsewhere, "
                      "or edited)")
    return files, ""


def _relative(root: Path, path: Path) -> str:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel.startswith(os.pardir) or os.path.isabs(rel):
        raise ValueError(f"{path} is not inside {root}")
    return Path(rel).as_posix()


def sign_artifacts(root: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]
                   ) -> None:
    """Record the SHA-256 of each of ``files`` (paths inside ``root``, as
    written just now) in ``root``'s manifest and sign it; creates the key on
    first use.  Entries of a manifest that does not verify are dropped, never
    re-signed.  The caller owns ``root`` (see the module docstring)."""
    base = Path(root)
    key = _key(create=True)
    assert key is not None
    entries, _ = _read_manifest(base, key)
    entries = dict(entries or {})
    for f in files:
        p = Path(f)
        rel = _relative(base, p)
        entries[rel] = sha256_file(base / rel)
    data = {"format": _FORMAT, "version": _VERSION, "files": dict(sorted(entries.items())),
            "hmac": _mac(key, entries)}
    write_text_atomic(base / MANIFEST, json.dumps(data, indent=1) + "\n")


def _roots(path: Path) -> list[Path]:
    """Folders whose manifest may list ``path``: its own, and the run folder
    above a ``checkpoints/`` folder."""
    return [path.parent, path.parent.parent] if path.parent != path.parent.parent \
        else [path.parent]


def verify_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path`` if a verified manifest of its folder (or of the
    folder above) lists exactly these bytes; :class:`TrustError` saying why
    not otherwise.  Load what this returns, not the file again: the file may
    change in between."""
    p = Path(path)
    with p.open("rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    key = _key(create=False)
    reasons: list[str] = []
    for root in _roots(p):
        if not (root / MANIFEST).exists() and root != p.parent:
            continue
        entries, why = _read_manifest(root, key)
        if entries is None:
            reasons.append(why)
            continue
        rel = _relative(root, p)
        if rel not in entries:
            reasons.append(f"{MANIFEST} does not list it")
        elif not hmac.compare_digest(entries[rel], digest):
            reasons.append("it changed after it was written (its SHA-256 differs from "
                           f"{MANIFEST})")
        else:
            return data
    raise TrustError(f"{p}: not trusted: {reasons[-1] if reasons else 'no manifest'}")


def pickled_files(root: str | os.PathLike[str]) -> list[Path]:
    """The pickled artifacts of a folder: ``*.zip`` and ``*.pkl`` in it and
    one level below (``checkpoints/``)."""
    base = Path(root)
    found = [p for p in sorted(base.iterdir()) if p.suffix in PICKLED_SUFFIXES and p.is_file()]
    for sub in sorted(base.iterdir()):
        if sub.is_dir() and not sub.is_symlink():
            found += [p for p in sorted(sub.iterdir())
                      if p.suffix in PICKLED_SUFFIXES and p.is_file()]
    return found


def verify_folder(root: str | os.PathLike[str]) -> None:
    """Check that every pickled artifact of ``root`` (:func:`pickled_files`)
    is trusted; :class:`TrustError` naming the first that is not."""
    base = Path(root)
    if not base.is_dir():
        raise TrustError(f"{base}: no such folder")
    for p in pickled_files(base):
        verify_bytes(p)
