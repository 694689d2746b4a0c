"""Feature cache: contents against an independent computation, resume after interruption, stale caches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_aesthetics import load_backbone
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import load_dataset, make_synthetic_ava, split_records
from clip_aesthetics.features import DatasetSpec, embed_dataset, load_features, read_manifest
from conftest import TINY_CLIP_CONFIG, save_open_clip_dir

N_IMAGES, N_CORRUPT = 48, 2
EMBED = {"batch_size": 8, "shard_size": 16, "workers": 0, "progress": False}


class Interrupt(Exception):
    """Stands for a kill: raised from the per-batch hook."""


@pytest.fixture(scope="module")
def ava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features") / "AVA_dataset"
    return make_synthetic_ava(root, n=N_IMAGES, size=64, seed=3, n_corrupt=N_CORRUPT)


@pytest.fixture(scope="module")
def spec(ava: Path) -> DatasetSpec:
    return DatasetSpec("ava", str(ava), split="random", fractions=(0.5, 0.25, 0.25))


@pytest.fixture(scope="module")
def backbone(tiny_clip_spec: str):
    return load_backbone(tiny_clip_spec, device="cpu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, spec: DatasetSpec, backbone) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    embed_dataset(spec, backbone, out, **EMBED)
    return out


def test_cache_holds_features_metadata_and_failures(reference: Path, spec: DatasetSpec, tiny_clip_spec: str):
    parsed = load_dataset("ava", spec.root)
    records = parsed.records
    splits, _ = split_records(parsed, "random", fractions=spec.fractions)
    manifest = read_manifest(reference)
    assert manifest["complete"] and manifest["shard_size"] == 16 and len(manifest["shards"]) == 3
    assert manifest["feature"] == {
        "kind": "clip-image-embedding",
        "dim": 32,
        "dtype": "float16",
        "normalization": "none",
        "precision": "fp32",
        "decode": "cpu",
    }
    assert manifest["backbone"]["model"] == tiny_clip_spec and manifest["package_version"]
    assert manifest["dataset"]["split_info"]["counts"] == {k: len(v) for k, v in splits.items()}
    failed = {e["id"] for e in manifest["errors"]}
    assert len(failed) == N_CORRUPT and manifest["counts"]["failed"] == N_CORRUPT
    assert all("truncated" in e["error"] or "corrupt" in e["error"] for e in manifest["errors"])

    cached = load_features(reference)
    kept = [r for r in records if r.id not in failed]
    assert cached.ids == [r.id for r in kept] and cached.features.dtype == np.float16
    split_of = {r.id: name for name, members in splits.items() for r in members}
    assert list(cached.splits) == [split_of[r.id] for r in kept]
    np.testing.assert_array_equal(cached.votes, np.stack([r.votes for r in kept]))
    np.testing.assert_allclose(cached.means, [r.mean for r in kept])
    table = pq.read_table(reference / "shard-00000.parquet").to_pylist()
    assert [row["id"] for row in table] == [r.id for r in records[:16]]
    assert {row["id"]: row["error"] for row in table if row["error"]}.keys() <= failed

    # independently: open_clip's own model and transform on the first images
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_spec)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.open(r.path)) for r in kept[:8]])
        expected = model.eval().encode_image(pixels).numpy()
    np.testing.assert_allclose(cached.features[:8].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_after_interrupt_equals_uninterrupted_run(
    tmp_path: Path, spec: DatasetSpec, backbone, reference: Path, stop_after: int
):
    out = tmp_path / "cache"

    def kill(n_batches: int) -> None:
        if n_batches == stop_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        embed_dataset(spec, backbone, out, on_batch=kill, **EMBED)
    done = read_manifest(out)["shards"]
    assert not read_manifest(out)["complete"] and len(done) == stop_after // 2
    with pytest.raises(ValueError, match="incomplete"):
        load_features(out)
    # debris of a kill: a half-written temp file and a shard file the manifest does not list
    (out / ".shard-00002.npy.tmp999").write_bytes(b"partial")
    (out / "shard-00002.npy").write_bytes(b"not a complete shard")

    report = embed_dataset(spec, backbone, out, **EMBED)
    assert report.shards_resumed == len(done) and report.images_this_run == report.n_records - 16 * len(done)
    resumed, uninterrupted = load_features(out), load_features(reference)
    np.testing.assert_array_equal(resumed.features, uninterrupted.features)
    assert resumed.ids == uninterrupted.ids and list(resumed.splits) == list(uninterrupted.splits)
    for name in ("shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(reference / name))
    assert read_manifest(out) == read_manifest(reference)


def test_finished_cache_is_reused_without_work(tmp_path: Path, spec: DatasetSpec, backbone, reference: Path):
    report = embed_dataset(spec, backbone, reference, **EMBED)
    assert report.images_this_run == 0 and report.shards_resumed == 3


def test_stale_cache_is_refused_then_rebuilt_with_overwrite(tmp_path: Path, spec: DatasetSpec, backbone):
    out = tmp_path / "cache"
    embed_dataset(spec, backbone, out, **EMBED)
    other_dir = save_open_clip_dir(tmp_path / "other-clip", TINY_CLIP_CONFIG, seed=1)
    other = load_backbone(f"local-dir:{other_dir}", device="cpu")
    with pytest.raises(ValueError, match=r"another setup \(backbone\.model.*--overwrite"):
        embed_dataset(spec, other, out, **EMBED)
    other_split = DatasetSpec(spec.name, spec.root, split="random", fractions=(0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"dataset\.fractions"):
        embed_dataset(other_split, backbone, out, **EMBED)
    before = load_features(out).features
    embed_dataset(spec, other, out, overwrite=True, **EMBED)
    assert read_manifest(out)["backbone"]["weights_id"] == other.weights_id
    after = load_features(out).features
    assert after.shape == before.shape and not np.array_equal(after, before)


def test_cli_refuses_stale_cache_with_one_line(tmp_path: Path, ava: Path, tiny_clip_spec: str):
    out = tmp_path / "cache"
    args = ["embed", str(ava), "--model", tiny_clip_spec, "--output", str(out), "--workers", "0"]
    args += ["--batch-size", "8", "--shard-size", "16", "--split-kind", "random"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    n_present = N_IMAGES - 2  # the generator leaves two test images missing: the parser drops them
    summary = f"embedded {n_present - N_CORRUPT} of {n_present} images ({N_CORRUPT} unreadable)"
    assert summary in " ".join(first.output.split())  # rich wraps long lines
    second = CliRunner().invoke(app, [*args[:-1], "official"])
    assert second.exit_code == 2 and "another setup" in second.output and "Traceback" not in second.output


def test_refuses_foreign_folder_and_bad_shard_size(tmp_path: Path, spec: DatasetSpec, backbone):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no feature cache"):
        embed_dataset(spec, backbone, tmp_path, **EMBED)
    killed_at_start = tmp_path / "killed"  # only the temporary of the first manifest write is there
    killed_at_start.mkdir()
    (killed_at_start / ".manifest.json.tmp999").write_text("{")
    embed_dataset(spec, backbone, killed_at_start, **EMBED)
    assert sorted(os.listdir(killed_at_start))[0] == "manifest.json"
    with pytest.raises(ValueError, match="multiple of --batch-size"):
        embed_dataset(spec, backbone, tmp_path / "c", **{**EMBED, "shard_size": 12})
    report = embed_dataset(spec, backbone, tmp_path / "c", **{**EMBED, "shard_size": None, "batch_size": 7})
    assert read_manifest(tmp_path / "c")["shard_size"] == 4095 and report.n_shards == 1
    with pytest.raises(FileNotFoundError, match="no feature cache"):
        load_features(tmp_path / "missing")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["c", "killed", "notes.txt"]


def test_timm_backbone_uses_its_own_preprocessing(tmp_path: Path, spec: DatasetSpec):
    backbone = load_backbone("timm:test_vit", "none", device="cpu")
    embed_dataset(spec, backbone, tmp_path / "cache", **EMBED)
    cached = load_features(tmp_path / "cache")
    manifest = cached.manifest
    assert manifest["feature"]["kind"] == "timm-pre-logits" and cached.features.shape[1] == 64
    assert manifest["backbone"]["preprocess"]["size"] == 160
    # independently: timm's own eval transform and forward_head(pre_logits=True)
    config = timm.data.resolve_model_data_config(backbone.model)
    transform = timm.data.create_transform(**config, is_training=False)
    with torch.inference_mode():
        pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in cached.paths[:8]])
        model = backbone.model
        expected = model.forward_head(model.forward_features(pixels), pre_logits=True).numpy()
    np.testing.assert_allclose(cached.features[:8].astype(np.float32), expected, rtol=5e-3, atol=5e-3)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["complete"]
