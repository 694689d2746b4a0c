"""Shards in: WebDataset tar files and Parquet files with an image-bytes column, local or behind fsspec.

A shard yields :class:`Sample` records in file order. A sample that carries no usable image (no image
member in the tar, a null bytes cell, a tar cut off in the middle of it) is still yielded, with ``error``
set, so that the output lists it; only a shard that cannot be opened at all raises :class:`ShardReadError`.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
SHARD_SUFFIXES = TAR_SUFFIXES + PARQUET_SUFFIXES
_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


class ShardReadError(Exception):
    """A whole shard could not be read (missing, not a tar/Parquet file, no image column)."""


@dataclass(frozen=True)
class Shard:
    """One input shard: where it is (path or fsspec URL) and the name its output file takes."""

    url: str

    @property
    def kind(self) -> str:
        return "parquet" if self.url.lower().endswith(PARQUET_SUFFIXES) else "tar"

    @property
    def name(self) -> str:
        base = self.url.rstrip("/").rsplit("/", 1)[-1]
        for suffix in SHARD_SUFFIXES:
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key (None when its key cell is null), the encoded image (None when there
    is none) and why not, a digest of the image bytes (``filter`` checks copies against it), metadata."""

    key: str | None
    data: bytes | None
    error: str | None = None
    digest: str | None = None
    meta: dict | None = None


def content_digest(data: bytes) -> str:
    """A short digest of a sample's image bytes, recorded with its score (128-bit BLAKE2b, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def is_url(text: str) -> bool:
    return "://" in text


def is_shard_input(text: str) -> bool:
    """Whether a command-line input names shards (rather than image files or folders)."""
    return (
        is_url(text)
        or bool(_RANGE.search(text) or _LIST.search(text))
        or text.lower().endswith(SHARD_SUFFIXES)
    )


def expand_braces(pattern: str) -> list[str]:
    """``a/{000..002}.tar`` -> ``a/000.tar a/001.tar a/002.tar``; ``{x,y}`` lists too; nested and repeated.

    Numeric ranges keep the zero padding of their first bound, as WebDataset's brace syntax does.
    """
    found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())  # leftmost first, so the output is in lexical order
    if match.re is _RANGE:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") else 0
        lo, hi = int(first), int(last)
        if hi < lo:
            raise ValueError(f"empty range {match.group(0)} in {pattern!r}")
        parts = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        parts = match.group(1).split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for part in parts for expanded in expand_braces(head + part + tail)]


def resolve_shards(inputs: Sequence[str | os.PathLike]) -> list[Shard]:
    """The shards named by paths, brace patterns, globs and fsspec URLs, each once, in the given order.

    Local paths are made absolute here, so that every process (a Ray worker on another node included) opens
    the same file and the score rows name it unambiguously. A missing shard is kept: reading it fails, the run
    reports it and the next run retries it (img2dataset output often has gaps).

    Raises:
        FileNotFoundError: none of the local shards exists, or a glob matches nothing.
        ValueError: two shards would write the same output file (same name in different folders).
    """
    urls: list[str] = []
    for given in inputs:
        for item in expand_braces(str(given)):
            urls.extend(_glob(item) if any(c in item for c in "*?[") else [item])
    urls = [url if is_url(url) else os.path.abspath(url) for url in urls]
    if urls and all(not is_url(url) and not Path(url).is_file() for url in urls):
        raise FileNotFoundError(
            f"no such shard: {urls[0]}" + (f" (nor any of {len(urls)})" if len(urls) > 1 else "")
        )
    shards = [Shard(url) for url in dict.fromkeys(urls)]
    names: dict[str, str] = {}
    for shard in shards:
        if shard.name in names:
            raise ValueError(
                f"two shards would write the same output {shard.name}.parquet: {names[shard.name]} and "
                f"{shard.url}; score them into separate folders"
            )
        names[shard.name] = shard.url
    return shards


_SAMPLED = 64 * 1024  # bytes hashed at each end of a shard for its identity


def source_identity(url: str) -> dict | None:
    """A shard's identity, cheap to take on every rerun: size, modification time and a digest of its first
    and last 64 KiB (a re-downloaded or rewritten shard gets another). None when it cannot be read."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        size = int(info["size"])
        mtime = next(
            (info[k] for k in ("mtime", "LastModified", "last_modified", "created") if k in info), None
        )
        sha = hashlib.blake2b(digest_size=16)
        with fs.open(path, "rb") as handle:
            sha.update(handle.read(_SAMPLED))
            if size > _SAMPLED:
                handle.seek(max(_SAMPLED, size - _SAMPLED))
                sha.update(handle.read(_SAMPLED))
    except (OSError, ValueError, KeyError, ImportError):
        return None
    return {"size": size, "mtime": str(mtime), "sampled_digest": sha.hexdigest()}


def _glob(pattern: str) -> list[str]:
    if is_url(pattern):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(pattern)
        found = [fs.unstrip_protocol(p) for p in sorted(fs.glob(pattern))]
    else:
        found = sorted(glob.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no shards match {pattern}")
    return found


def iter_shard(
    shard: Shard,
    image_column: str | None = None,
    key_column: str | None = None,
    metadata: Sequence[str] = (),
) -> Iterator[Sample]:
    """The samples of a shard, streamed in file order; ``metadata`` names the fields carried along.

    Raises:
        ShardReadError: the shard cannot be read (possibly after some samples: drop those).
    """
    if shard.kind == "parquet":
        return _parquet_samples(shard.url, image_column, key_column, tuple(metadata))
    return _tar_samples(shard.url, tuple(metadata))


def _open(url: str):
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except FileNotFoundError:
        raise ShardReadError(f"no such shard: {url}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise ShardReadError(f"cannot open {url}: {exc}") from None


def split_member(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/abc.def.jpg`` -> key ``dir/abc``, extension ``def.jpg``."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


TORN = "torn tar"  # the start of the error of a row that stands for the end a torn tar lost


@dataclass
class TarGroup:
    """One WebDataset sample as stored: its members in file order (header, bytes); ``torn`` when the file
    ends inside it. A tear between samples is a group with no key and no members."""

    key: str | None
    members: list[tuple[tarfile.TarInfo, bytes]]
    torn: str | None = None

    @property
    def by_ext(self) -> dict[str, bytes]:
        return {split_member(info.name)[1]: data for info, data in self.members}


class _Counted:
    """A read-only stream that counts its bytes and keeps the last ones: where and how a tar ended."""

    TAIL = 64 * 1024

    def __init__(self, raw):
        self.raw, self.count, self.tail = raw, 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        self.tail = (self.tail + data)[-self.TAIL :]
        return data

    def end_block(self, offset: int) -> bytes | None:
        """The 512 bytes read at ``offset`` (None when the stream ended before them)."""
        if self.count < offset + 512 or self.count - offset > len(self.tail):
            return None
        start = len(self.tail) - (self.count - offset)
        return self.tail[start : start + 512]


def tar_groups(url: str) -> Iterator[TarGroup]:
    """The samples of a WebDataset tar: consecutive members sharing a key, in file order.

    A member extension seen twice in a row of one key starts a new sample (the same key twice: both kept).
    A tar that ends early (inside a member, inside a header, or without its end-of-archive block) ends in a
    group with ``torn`` set, never silently.
    """
    with _open(url) as handle:
        counted = _Counted(gzip.GzipFile(fileobj=handle) if url.lower().endswith((".gz", ".tgz")) else handle)
        archive = _open_tar(counted, url)
        group: TarGroup | None = None
        try:
            for info in archive:
                if not info.isfile():
                    continue
                key, ext = split_member(info.name)
                if group is not None and (key != group.key or ext in group.by_ext):
                    yield group
                    group = None
                group = group or TarGroup(key, [])
                group.members.append((info, archive.extractfile(info).read()))
        except (tarfile.TarError, OSError, EOFError, zlib_error()) as exc:
            if group is None and counted.count <= 512:
                raise ShardReadError(f"not a readable tar file: {url} ({exc})") from None
            tear = f"{TORN}: the file ends at byte {counted.count} ({exc}); later samples are missing"
        else:
            tear = _end_problem(counted, archive.offset)
        if group is not None:
            image = image_of(group.by_ext)
            if tear and image is None:  # cut off before or inside the image: this sample is the tear
                group.torn = tear
                yield group
                return
            yield group
        if tear:
            yield TarGroup(None, [], tear)


def zlib_error():
    import zlib

    return zlib.error


def _end_problem(counted: _Counted, offset: int) -> str | None:
    """Why a tar that tarfile read to its end is not whole (None when it ends in a zero block)."""
    block = counted.end_block(offset)
    if block is None:
        return f"{TORN}: the file ends at byte {counted.count} without its end-of-archive block"
    if block.count(0) != len(block):
        return f"{TORN}: an unreadable member header at byte {offset}; later samples are missing"
    return None


def _tar_samples(url: str, metadata: tuple[str, ...]) -> Iterator[Sample]:
    for group in tar_groups(url):
        if group.key is None:
            yield Sample(None, None, group.torn)
            continue
        members = group.by_ext
        meta = _tar_meta(members, metadata) if metadata else None
        image = image_of(members)
        if group.torn:
            yield Sample(group.key, None, group.torn, None, meta)
        elif image is None:
            found = ", ".join(sorted(members)) or "nothing"
            yield Sample(group.key, None, f"no image member in this sample (found: {found})", None, meta)
        else:
            yield Sample(group.key, image, None, content_digest(image), meta)


def _open_tar(handle, url: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=handle, mode="r|")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardReadError(f"not a readable tar file: {url} ({exc})") from None


@functools.cache
def _image_members() -> tuple[str, ...]:
    """Member extensions a sample's image is taken from, most preferred first (img2dataset writes .jpg)."""
    from ..pipeline.images import IMAGE_EXTENSIONS  # here, not at import: images.py loads torch

    return ("jpg", "jpeg", "png", "webp", *sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))


def image_of(members: dict[str, bytes]) -> bytes | None:
    for ext in _image_members():
        if ext in members:
            return members[ext]
    return None


def _tar_meta(members: dict[str, bytes], fields: tuple[str, ...]) -> dict:
    """The requested fields of a sample's ``.json`` member (img2dataset's), the caption also from ``.txt``."""
    try:
        found = json.loads(members.get("json", b"{}"))
    except (ValueError, UnicodeDecodeError):
        found = {}
    found = found if isinstance(found, dict) else {}
    if "caption" in fields and found.get("caption") is None and "txt" in members:
        found["caption"] = members["txt"].decode("utf-8", "replace")
    return {name: found[name] for name in fields if found.get(name) is not None}


TEXT_IMAGES = "image column holds text, not image bytes"  # never a path to open: shards carry bytes


def _parquet_samples(
    url: str, image_column: str | None, key_column: str | None, metadata: tuple[str, ...]
) -> Iterator[Sample]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = _open(url)
    try:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"not a readable Parquet file: {url} ({exc})") from None
        schema = parquet.schema_arrow
        image_column = find_image_column(schema, image_column, url)
        if key_column is not None and key_column not in schema.names:
            raise ShardReadError(
                f"{url} has no key column {key_column!r} (columns: {', '.join(schema.names)})"
            )
        key_column = key_column or ("key" if "key" in schema.names else None)
        meta_columns = [name for name in metadata if name in schema.names and name != image_column]
        columns = list(dict.fromkeys([image_column, *([key_column] if key_column else []), *meta_columns]))
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                images, problem = image_bytes(batch.column(image_column))
                keys = batch.column(key_column).to_pylist() if key_column else None
                metas = {name: batch.column(name).to_pylist() for name in meta_columns}
                for i, data in enumerate(images):
                    key = (None if keys[i] is None else str(keys[i])) if keys else f"{row:09d}"
                    meta = {n: v[i] for n, v in metas.items() if v[i] is not None} if metadata else None
                    if problem or not data:
                        yield Sample(key, None, problem or "no image bytes in this row", None, meta)
                    else:
                        yield Sample(key, data, None, content_digest(data), meta)
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"corrupt Parquet file: {url} ({exc})") from None
    finally:
        handle.close()


def image_bytes(column) -> tuple[list, str | None]:
    """The encoded images of a column batch, or a reason why the column holds none.

    Bytes, or a struct with a ``bytes`` field (Hugging Face datasets, img2dataset); text is refused, so that
    a shard from the web can never make us open a file of this machine.
    """
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        names = [column.type.field(i).name for i in range(column.type.num_fields)]
        if "bytes" not in names:
            return [None] * len(
                column
            ), f"image column is a struct without a 'bytes' field ({', '.join(names)})"
        column = column.field("bytes")
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column.to_pylist(), None
    if pa.types.is_fixed_size_binary(column.type) or pa.types.is_binary_view(column.type):
        return column.to_pylist(), None
    if (
        pa.types.is_string(column.type)
        or pa.types.is_large_string(column.type)
        or pa.types.is_string_view(column.type)
    ):
        return [None] * len(column), TEXT_IMAGES
    return [None] * len(column), f"image column holds {column.type}, not image bytes"


def find_image_column(schema, given: str | None, url: str) -> str:
    import pyarrow as pa

    if given is not None:
        if given not in schema.names:
            raise ShardReadError(f"{url} has no image column {given!r} (columns: {', '.join(schema.names)})")
        return given
    for name in _IMAGE_COLUMNS:
        if name in schema.names:
            return name
    for field in schema:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return field.name
    raise ShardReadError(f"{url} has no image-bytes column; name it with --image-column")
