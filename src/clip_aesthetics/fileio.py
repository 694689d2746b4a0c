"""Files that are either whole or untouched, and cheap content identities for large files.

Every output the toolkit writes (ranked lists, metrics, scorer files, caches, checkpoints, sidecars) goes
through :func:`atomic_write`: the data lands in a temporary file in the destination's folder, is fsynced,
and is renamed over the destination. A full disk, a kill or an exception while writing leaves the previous
file as it was, never a truncated one.

Caches are keyed on what a file holds, not where it is: :func:`file_digest` hashes a file's bytes and
remembers the answer per (path, size, mtime), so asking again for an unchanged 600 MB weights file is free
while a file replaced in place gets a new identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_DIGEST_CHUNK = 1 << 22


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``pq.write_table``, ``safetensors.save_file``).
    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:  # on disk before the rename, so a crash cannot leave a short file
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600 files; outputs follow the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = False) -> Path:
    """Write ``path`` atomically with ``write(handle)``; text is UTF-8 with ``\\n`` line ends."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if binary:
            with open(tmp, "wb") as handle:
                write(handle)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                write(handle)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a whole text file atomically."""
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write a JSON document atomically (UTF-8, a trailing newline)."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes, remembered per (real path, size, mtime_ns) for this process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        sha = hashlib.sha256()
        with open(real, "rb") as handle:
            while chunk := handle.read(_DIGEST_CHUNK):
                sha.update(chunk)
        _digests[key] = "sha256:" + sha.hexdigest()
    return _digests[key]


def folder_digest(folder: str | os.PathLike) -> str:
    """One identity for every file in a folder (names and contents), e.g. a ``local-dir:`` model."""
    folder = Path(folder)
    sha = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(str(file.relative_to(folder)).encode("utf-8", "surrogateescape") + b"\0")
        sha.update(file_digest(file).encode() + b"\0")
    return "sha256:" + sha.hexdigest()
