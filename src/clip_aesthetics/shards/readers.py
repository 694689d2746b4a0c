"""Shards in: WebDataset tar files and Parquet files with an image-bytes column, local or behind fsspec.

A shard yields :class:`Sample` records in file order. A sample that carries no usable image (no image
member in the tar, a null bytes cell, a tar cut off in the middle of it) is still yielded, with ``error``
set, so that the output lists it; only a shard that cannot be opened at all raises :class:`ShardReadError`.
"""

from __future__ import annotations

import functools
import glob
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
    """One sample of a shard: its key, the encoded image (None when there is none) and why not."""

    key: str
    data: bytes | None
    error: str | None = None


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

    Raises:
        FileNotFoundError: a local shard or a glob that matches nothing.
        ValueError: two shards would write the same output file (same name in different folders).
    """
    urls: list[str] = []
    for given in inputs:
        for item in expand_braces(str(given)):
            urls.extend(_glob(item) if any(c in item for c in "*?[") else [item])
    for url in urls:
        if not is_url(url) and not Path(url).is_file():
            raise FileNotFoundError(f"no such shard: {url}")
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
    shard: Shard, image_column: str | None = None, key_column: str | None = None
) -> Iterator[Sample]:
    """The samples of a shard, streamed in file order.

    Raises:
        ShardReadError: the shard cannot be read (possibly after some samples: drop those).
    """
    if shard.kind == "parquet":
        return _parquet_samples(shard.url, image_column, key_column)
    return _tar_samples(shard.url)


def _open(url: str):
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except (OSError, ValueError, ImportError) as exc:
        raise ShardReadError(f"cannot open {url}: {exc}") from None


def split_member(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/abc.def.jpg`` -> key ``dir/abc``, extension ``def.jpg``."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _tar_samples(url: str) -> Iterator[Sample]:
    """Samples of a WebDataset tar: consecutive members sharing a key form one sample."""
    with _open(url) as handle, _open_tar(handle, url) as archive:
        key, members = None, {}
        try:
            for info in archive:
                if not info.isfile():
                    continue
                member_key, ext = split_member(info.name)
                if member_key != key and key is not None:
                    yield _tar_sample(key, members)
                    members = {}
                key = member_key
                members[ext] = archive.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            if key is None:
                raise ShardReadError(f"not a readable tar file: {url} ({exc})") from None
            if not any(ext in members for ext in _image_members()):  # cut off before or inside the image
                yield Sample(key, None, f"truncated shard: the tar ends inside this sample ({exc})")
                return
        if key is not None:
            yield _tar_sample(key, members)


def _open_tar(handle, url: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=handle, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardReadError(f"not a readable tar file: {url} ({exc})") from None


@functools.cache
def _image_members() -> tuple[str, ...]:
    """Member extensions a sample's image is taken from, most preferred first (img2dataset writes .jpg)."""
    from ..images import IMAGE_EXTENSIONS  # here, not at import: images.py loads torch

    return ("jpg", "jpeg", "png", "webp", *sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))


def _tar_sample(key: str, members: dict[str, bytes]) -> Sample:
    for ext in _image_members():
        if ext in members:
            return Sample(key, members[ext])
    found = ", ".join(sorted(members)) or "nothing"
    return Sample(key, None, f"no image member in this sample (found: {found})")


def _parquet_samples(url: str, image_column: str | None, key_column: str | None) -> Iterator[Sample]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = _open(url)
    try:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"not a readable Parquet file: {url} ({exc})") from None
        schema = parquet.schema_arrow
        image_column = _image_column(schema, image_column, url)
        if key_column is not None and key_column not in schema.names:
            raise ShardReadError(
                f"{url} has no key column {key_column!r} (columns: {', '.join(schema.names)})"
            )
        key_column = key_column or ("key" if "key" in schema.names else None)
        columns = [image_column] + ([key_column] if key_column else [])
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                images = batch.column(image_column)
                if pa.types.is_struct(images.type):  # Hugging Face datasets: {bytes, path}
                    images = images.field("bytes")
                keys = batch.column(key_column).to_pylist() if key_column else None
                for i, data in enumerate(images.to_pylist()):
                    key = str(keys[i]) if keys and keys[i] is not None else f"{row:09d}"
                    yield Sample(key, data or None, None if data else "no image bytes in this row")
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"corrupt Parquet file: {url} ({exc})") from None
    finally:
        handle.close()


def _image_column(schema, given: str | None, url: str) -> str:
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
