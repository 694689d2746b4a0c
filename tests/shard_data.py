"""WebDataset tars and img2dataset-style Parquet files for the shard tests, and what each sample gives."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import photo


def encoded(seed: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    photo(seed).save(buffer, fmt)
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive of ``members`` (name, bytes) in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], cut: int | None = None) -> Path:
    """A tar of ``members`` (name, bytes) in order; ``cut`` keeps only its first ``cut`` bytes (torn)."""
    data = tar_bytes(members)
    path.write_bytes(data[:cut] if cut is not None else data)
    return path


@dataclass
class ShardSet:
    """Shard files plus, per shard name, the keys in order and each good key's image file (for references)."""

    folder: Path
    tars: list[Path]
    parquet: Path
    keys: dict[str, list[str]]
    images: dict[tuple[str, str], Path]  # (shard name, key) -> the same image as a file
    errors: dict[tuple[str, str], str]  # (shard name, key) -> a word the error must contain

    @property
    def inputs(self) -> list[str]:
        return [str(self.folder / "{00000..00002}.tar"), str(self.parquet)]


def make_shards(folder: Path, per_tar: int = 3) -> ShardSet:
    """Three tars (one with broken samples, one cut off inside its last image) and a Parquet file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = folder / "files"
    files.mkdir(exist_ok=True)
    keys: dict[str, list[str]] = {}
    images: dict[tuple[str, str], Path] = {}
    errors: dict[tuple[str, str], str] = {}

    def good(shard: str, key: str, seed: int, fmt: str = "JPEG") -> bytes:
        data = encoded(seed, fmt)
        file = files / f"{shard}-{key.replace('/', '_')}.{fmt.lower()}"
        file.write_bytes(data)
        images[shard, key] = file
        keys.setdefault(shard, []).append(key)
        return data

    members = []
    for i in range(per_tar):
        key = f"a{i:03d}"
        members += [
            (f"{key}.jpg", good("00000", key, i)),
            (f"{key}.txt", b"a caption"),
            (f"{key}.json", b"{}"),
        ]
    members += [("a100.png", good("00000", "a100", 100, "PNG"))]
    members += [("a101.jpg", b"not an image at all"), ("a102.txt", b"a caption without an image")]
    keys["00000"] += ["a101", "a102"]
    errors["00000", "a101"], errors["00000", "a102"] = "not an image", "no image member"
    tars = [write_tar(folder / "00000.tar", members)]

    members = [(f"dir/b{i:03d}.jpg", good("00001", f"dir/b{i:03d}", 10 + i)) for i in range(per_tar)]
    tars.append(write_tar(folder / "00001.tar", members))

    members = [(f"c{i:03d}.jpg", good("00002", f"c{i:03d}", 20 + i)) for i in range(per_tar)]
    last = encoded(99)
    members.append(("c999.jpg", last))
    keys["00002"].append("c999")
    errors["00002", "c999"] = "torn tar"
    full = io.BytesIO()
    write_tar(folder / "00002.tar", members)
    full = (folder / "00002.tar").read_bytes()
    tars.append(write_tar(folder / "00002.tar", members, cut=full.index(last) + len(last) // 2))

    rows = {"key": [], "jpg": [], "caption": []}
    for i in range(per_tar):
        key = f"p{i:03d}"
        rows["key"].append(key)
        rows["jpg"].append(good("data", key, 30 + i))
        rows["caption"].append("x")
    rows["key"].append("p999")
    rows["jpg"].append(None)
    rows["caption"].append("failed download")
    keys["data"].append("p999")
    errors["data", "p999"] = "no image bytes"
    parquet = folder / "data.parquet"
    pq.write_table(pa.table(rows, schema=pa.schema([("key", pa.string()), ("jpg", pa.binary()),
                                                    ("caption", pa.string())])), parquet)  # fmt: skip
    return ShardSet(folder, tars, parquet, keys, images, errors)


def write_curator_set(folder: Path, shards: int = 8, per_shard: int = 5) -> tuple[list[Path], dict]:
    """img2dataset-style tars (``.jpg`` + ``.txt`` + ``.json`` per sample) with three broken samples: a
    truncated JPEG (shard 1), a sample without an image (shard 3), a text file named .jpg (shard 5).

    Returns the tars and, per (shard name, key), the sample's ``.json`` fields.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    tars, metas = [], {}
    for s in range(shards):
        members = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            meta = {"url": f"https://example.org/{key}.jpg", "caption": f"photo {key}", "width": 96,
                    "height": 72, "status": "success"}  # fmt: skip
            metas[f"{s:05d}", key] = meta
            image = encoded(100 * s + i)
            if (s, i) == (1, 2):
                image = image[: len(image) // 3]  # truncated JPEG
            if (s, i) == (5, 1):
                image = b"<html>not found</html>"  # a text file named .jpg
            if (s, i) != (3, 4):  # no image in this sample
                members.append((f"{key}.jpg", image))
            members += [(f"{key}.txt", meta["caption"].encode()), (f"{key}.json", json.dumps(meta).encode())]
        tars.append(write_tar(folder / f"{s:05d}.tar", members))
    return tars, metas
