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
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_DIGEST_CHUNK = 1 << 22


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) takes."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def sibling_path(path: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """``prefix + name + suffix`` beside ``path``, shortened to fit the file system's name limit.

    Work files (``.ranked.csv.parts``, ``.ranked.csv.lock``, temporaries) and companion outputs
    (``ranked.errors.csv``) add to a name the user chose; any name the file system accepts must still
    work. A name that would be too long keeps its beginning plus a digest of the whole name, so two long
    names never share a sibling.
    """
    path = Path(path)
    name, limit = path.name, name_max(path.parent)
    full = f"{prefix}{name}{suffix}"
    if len(os.fsencode(full)) <= limit:
        return path.with_name(full)
    digest = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    room = limit - len(os.fsencode(f"{prefix}{digest}{suffix}"))
    head = os.fsencode(name)[: max(room, 0)].decode("utf-8", "ignore")  # never half a UTF-8 character
    return path.with_name(f"{prefix}{head}{digest}{suffix}")


def _temporary_for(path: Path) -> Path:
    return sibling_path(path, ".", f".tmp{os.getpid()}.{threading.get_native_id()}")


def _publish(tmp: Path) -> None:
    """Make a finished temporary durable and readable like any new file, before it is renamed."""
    with open(tmp, "rb") as handle:  # on disk before the rename, so a crash cannot leave a short file
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600 files; outputs follow the umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``pq.write_table``, ``safetensors.save_file``).
    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = _temporary_for(path)
    try:
        yield tmp
        _publish(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_together(writes: dict[Path, Callable[[Path], Any]], remove: Iterable[Path] = ()) -> list[Path]:
    """Write several files as one: all are replaced, or none is (and ``remove`` is left alone too).

    ``writes`` maps each destination to a function that writes a given temporary path. Every file is
    written and fsynced before the first rename, so a full disk or any error while writing leaves all the
    previous files as they were; the OSError then names the file that failed. After the renames the
    files in ``remove`` (companions the new outputs no longer have) are deleted.
    """
    temporaries = {path: _temporary_for(path) for path in writes}
    try:
        for path, write in writes.items():
            try:
                write(temporaries[path])
                _publish(temporaries[path])
            except OSError as exc:
                failed = OSError(
                    f"cannot write {text_name(path)}: {exc.strerror or exc}; no output was replaced"
                )
                failed.errno = exc.errno
                raise failed from None
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    for path in remove:
        Path(path).unlink(missing_ok=True)
    return list(writes)


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


def atomic_savefig(figure: Any, path: str | os.PathLike, **options: Any) -> Path:
    """Save a matplotlib figure atomically, in the format its suffix names (as ``savefig(path)`` would)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.removeprefix(".") or "png", **options)
    return path


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
        _digests[key] = "sha256:" + _sha256_hex(real)
    return _digests[key]


def _sha256_hex(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in chunks; not remembered."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_DIGEST_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def folder_digest(folder: str | os.PathLike) -> str:
    """One identity for every file in a folder (names and contents), e.g. a ``local-dir:`` model."""
    folder = Path(folder)
    sha = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(str(file.relative_to(folder)).encode("utf-8", "surrogateescape") + b"\0")
        sha.update(file_digest(file).encode() + b"\0")
    return "sha256:" + sha.hexdigest()


class TextDecodeError(ValueError):
    """A text input that is not UTF-8; the message names the file, the line and the offending byte."""


def _decode_error(path: str | os.PathLike, exc: UnicodeDecodeError) -> TextDecodeError:
    # The stream's error offset is relative to a decoder chunk: find the first bad byte in the whole file.
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
        position = exc.start
    except UnicodeDecodeError as whole:
        position = whole.start
    line = data[:position].count(b"\n") + 1
    byte = data[position : position + 1].hex() or "??"
    return TextDecodeError(
        f"{path}:{line}: not UTF-8 text (byte 0x{byte}); save it as UTF-8 (iconv -f latin1 -t utf-8)"
    )


@contextmanager
def open_text(path: str | os.PathLike, newline: str | None = None) -> Iterator[IO[str]]:
    """Open a text input for reading: UTF-8, a leading byte-order mark dropped, decode errors naming the file.

    Editors and spreadsheets on Windows start files with a BOM; left in, it glues itself to the first id
    (``\\ufeff953619``) and that line silently stops matching.
    """
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as handle:
            yield handle
    except UnicodeDecodeError as exc:
        raise _decode_error(path, exc) from None


def read_text(path: str | os.PathLike) -> str:
    """A whole text input, read as :func:`open_text` does."""
    with open_text(path) as handle:
        return handle.read()


def check_writable(path: str | os.PathLike) -> Path:
    """Raise OSError now, before hours of work, if ``path`` cannot be written (atomically) later.

    The folder must exist and accept a new file (the atomic writers create one beside the target); a folder
    in the target's place is refused too.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file name")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {text_name(folder)} (for {text_name(path.name)})")
    probe = sibling_path(folder / path.name, ".", f".writable{os.getpid()}")
    try:
        probe.touch()
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    probe.unlink()
    return path


def text_name(name: str | os.PathLike) -> str:
    """A file name as valid UTF-8 text, for output files and the console.

    Names are bytes on Linux and need not be UTF-8; Python keeps undecodable bytes as surrogate escapes
    (PEP 383), which no UTF-8 file (CSV, JSON, Parquet) can hold. Each such byte is written as ``\\xNN``
    (NN >= 80, Python's ``backslashreplace``); every other name is returned unchanged.
    :func:`name_from_text` reverses it.
    """
    name = os.fspath(name)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (not from a file name): \uXXXX
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


_ESCAPED_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def name_from_text(text: str) -> str:
    """The file name :func:`text_name` wrote (each ``\\xNN``, NN >= 80, back to its byte), for open()."""
    if "\\x" not in text:
        return text
    return _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m[1], 16)), text)  # PEP 383: byte b -> U+DC00+b


def check_outputs(*paths: str | os.PathLike | None) -> None:
    """Refuse, before any work, output files that could only fail after it.

    Each given path must not be a folder, must be distinct from the others, and must be writable (see
    :func:`check_writable`). Its own folder may be missing (the writers create it, as ``mkdir`` would:
    ``-o results/ranked.csv``), but not the folder above: a typo in a path (``/nonexistent/dir/x.csv``)
    is an error, never a new tree of folders.

    Raises:
        ValueError: two paths name the same file.
        OSError: a path is a folder, the folder above its folder does not exist, or it is not writable.
    """
    files = [Path(p) for p in paths if p is not None]
    resolved = [os.path.realpath(p) for p in files]
    for i, real in enumerate(resolved):
        if real in resolved[:i]:
            raise ValueError(f"two outputs name the same file {text_name(files[i])}: give each its own name")
    for path in files:
        folder = path.parent
        if folder.exists() or not folder.parent.is_dir():
            check_writable(path)  # its folder, or the error naming the missing one above it
        else:
            check_writable(folder.parent / path.name)


RACY_NS = 2_000_000_000  # mtimes this close to "now" may not change on a second write (coarse clocks)


def file_fingerprint(path: str | os.PathLike) -> tuple[int | None, int | None, int | None, str | None]:
    """``(size, mtime_ns, inode, sha256)`` of a file as it is now; all None if it cannot be read.

    Size, mtime and inode change whenever a file is rewritten or replaced, except within one tick of a
    coarse file-system clock: for a file modified in the last two seconds (or "in the future") they are
    not trustworthy, and its content hash is recorded too (the racy case git's index handles the same way).
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None, None, None, None
    racy = abs(time.time_ns() - stat.st_mtime_ns) < RACY_NS
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, _content_sha256(path) if racy else None


def unchanged_since(path: str | os.PathLike, recorded: tuple) -> bool:
    """Whether ``path`` still holds what :func:`file_fingerprint` recorded (the hash is compared if kept)."""
    size, mtime_ns, inode, sha = recorded
    if size is None:  # missing then: unchanged while it is still missing
        return not os.path.exists(path)
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if (stat.st_size, stat.st_mtime_ns, stat.st_ino) != (size, mtime_ns, inode):
        return False
    return sha is None or _content_sha256(path) == sha


def _content_sha256(path: str | os.PathLike) -> str | None:
    """:func:`_sha256_hex`, None for a file that cannot be read (a fingerprint then never matches)."""
    try:
        return _sha256_hex(path)
    except OSError:
        return None


class OutputBusyError(RuntimeError):
    """Another process is writing the same output."""


class OutputLock:
    """One writer per output: an exclusive ``flock`` on ``.NAME.lock`` beside it, holding the owner's pid.

    The kernel releases the lock when its process dies (a kill leaves no stale lock to clean up by hand);
    the file is removed on release. A lock taken on a file another process has just removed is retried on
    the new file, so two runs can never both hold one.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.path = sibling_path(self.output, ".", ".lock")
        self._handle: IO | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        while self._handle is None:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise OutputBusyError(
                    f"{text_name(self.output)} is being written by another clip-aesthetics run "
                    f"(pid {owner}); wait for it to finish or choose another --output"
                ) from None
            if _same_file(handle, self.path):
                handle.truncate(0)
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                self._handle = handle
            else:  # released and removed by its owner after we opened it: lock the current file
                handle.close()
        return self

    def release(self) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)  # while still locked: a waiter then sees another file
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _same_file(handle: IO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Refuse, before any work, an output folder (a cache, a run, a dataset) that is a typo.

    As for output files (:func:`check_outputs`), the folder that holds it may be missing and is created
    (``-o runs/clip-b32`` makes ``runs``), but not the one above that: ``/nonexistent/dir/cache`` is an
    error, never a new tree. An existing path must be a folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{text_name(folder)} is a file; expected a folder")
    holder = folder.parent
    if not holder.exists() and not holder.parent.is_dir():
        where = f"{text_name(holder.parent)} (for {text_name(holder.name)}/{text_name(folder.name)})"
        raise FileNotFoundError(f"folder not found: {where}")
    return folder
