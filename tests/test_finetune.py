"""Fine-tuning: EMD loss, model shapes and freezing, learning a planted signal, resume, DDP, scorer files."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from typer.testing import CliRunner

from clip_aesthetics import metrics
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import load_dataset, make_synthetic_ava
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.finetune import (
    FinetuneModel,
    TrainConfig,
    emd,
    emd_loss,
    finetune,
    freeze,
    image_tower,
    mean_mse_loss,
    resume_config,
    tower_blocks,
)
from clip_aesthetics.finetune.checkpoint import load_checkpoint, save_checkpoint
from clip_aesthetics.finetune.data import augment_batch, epoch_order, two_point_distribution
from clip_aesthetics.finetune.optim import lr_factor
from clip_aesthetics.scorers import FinetunedScorer, load_scorer
from clip_aesthetics.scorers.registry import read_scorer_file
from conftest import console_text

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy 2-core machine OpenMP threads
    spin-waiting for each other made a training run 15x slower (2.7 s vs 41 s measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ava200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic AVA: 200 images at 64 px (2 test ids without files), planted quality signal."""
    return make_synthetic_ava(tmp_path_factory.mktemp("ava") / "AVA_dataset", n=200, seed=0, size=64)


@pytest.fixture(scope="module")
def ava_corrupt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic AVA set with 4 truncated train JPEGs."""
    root = tmp_path_factory.mktemp("ava-corrupt") / "AVA_dataset"
    return make_synthetic_ava(root, n=60, seed=1, size=48, n_corrupt=4)


def small_config(dataset: Path, model: str, **overrides) -> TrainConfig:
    """A tiny-model recipe that learns in a few CPU seconds (AdamW, lr 1e-3, batch 16)."""
    options = dict(
        dataset=str(dataset), model=model, optimizer="adamw", lr_backbone=1e-3, lr_head=1e-3, batch_size=16,
        max_epochs=8, split="random", val_fraction=0.25, test_fraction=0.25, workers=0, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**options, **overrides})


# ----- loss


def test_emd_against_hand_computed_values() -> None:
    one_hot = torch.eye(10)
    # point masses on 1 and 10: the CDFs differ by 1 on bins 1..9 and agree on bin 10
    assert emd(one_hot[:1], one_hot[9:]).item() == pytest.approx(math.sqrt(9 / 10))
    # neighbours: a single bin of difference 1
    assert emd(one_hot[:1], one_hot[1:2]).item() == pytest.approx(math.sqrt(1 / 10))
    # [.5, .5, 0...] vs [0, .5, .5, 0...]: CDFs .5,1,1.. and 0,.5,1..: differences .5 and .5
    p = torch.tensor([[0.5, 0.5] + [0.0] * 8])
    q = torch.tensor([[0.0, 0.5, 0.5] + [0.0] * 7])
    assert emd(p, q).item() == pytest.approx(math.sqrt((0.25 + 0.25) / 10))
    assert emd(p, p).item() == pytest.approx(0.0, abs=1e-5)


def test_emd_matches_metrics_emd_and_loss_from_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator, dtype=torch.float64) * 2
    target = torch.rand(64, 10, generator=generator, dtype=torch.float64) ** 3
    target /= target.sum(dim=1, keepdim=True)
    probs = torch.softmax(logits, dim=1)
    expected = metrics.emd(probs.numpy(), target.numpy(), r=2)
    np.testing.assert_allclose(emd(probs, target).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(emd_loss(logits, target).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        emd(probs, target, r=1).numpy(), metrics.emd(probs.numpy(), target.numpy(), r=1)
    )
    means = (target.numpy() * np.arange(1, 11)).sum(1)
    pred_means = (probs.numpy() * np.arange(1, 11)).sum(1)
    np.testing.assert_allclose(
        mean_mse_loss(logits, target).numpy(), (pred_means - means) ** 2, rtol=1e-5, atol=1e-6
    )


def test_emd_gradient_is_finite_at_a_perfect_prediction() -> None:
    target = torch.softmax(torch.randn(4, 10), dim=1)
    logits = target.log().clone().requires_grad_(True)
    emd_loss(logits, target).mean().backward()
    assert torch.isfinite(logits.grad).all()


def test_two_point_distribution_has_the_given_mean() -> None:
    for mean in (1.0, 3.25, 5.5, 9.99, 10.0):
        dist = two_point_distribution(mean)
        assert dist.sum() == pytest.approx(1.0) and dist @ np.arange(1, 11) == pytest.approx(mean)


# ----- model


def test_tower_drops_clip_projection_and_mean_lies_in_range(tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    model = FinetuneModel.from_backbone(backbone)
    assert model.kind == "clip-vit" and model.width == 64  # the tower's width, not the 32-d CLIP embedding
    assert backbone.model.visual.proj is not None  # the backbone itself is left unchanged
    with torch.no_grad():
        model.head.weight.mul_(200.0)  # extreme logits: the mean must still lie on the 1-10 scale
        pixels = model.normalize(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8))
        probs, mean = model.predict(pixels)
    assert probs.shape == (16, 10) and torch.allclose(probs.sum(1), torch.ones(16))
    assert ((mean >= 1.0) & (mean <= 10.0)).all()
    assert torch.allclose(mean, probs @ torch.arange(1.0, 11.0))


def test_vit_b32_and_rn50_towers_have_the_papers_widths() -> None:
    torch.manual_seed(0)
    vit = open_clip.create_model("ViT-B-32").visual
    rn50 = open_clip.create_model("RN50").visual
    assert _tower_width(vit) == 768  # no projection: the 768-d token, not the 512-d embedding
    assert _tower_width(rn50) == 1024  # the attention pool's output


def _tower_width(visual: torch.nn.Module) -> int:
    class FakeBackbone:
        kind = "clip"
        model = type("M", (), {"visual": visual})()
        preprocess_cfg = type("P", (), {"size": 224})()

    tower, width, _ = image_tower(FakeBackbone())
    with torch.no_grad():
        assert tower.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, width)
    return width


def test_freezing_blocks_and_backbone(tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    model = FinetuneModel.from_backbone(backbone)
    freeze(model, blocks=1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(
        name.startswith(("tower.conv1", "tower.class_embedding", "tower.ln_pre")) for name in trainable
    )
    assert not any(name.startswith("tower.transformer.resblocks.0.") for name in trainable)
    assert any(name.startswith("tower.transformer.resblocks.1.") for name in trainable)
    assert {"tower.ln_post.weight", "head.weight", "head.bias"} <= trainable
    model = FinetuneModel.from_backbone(backbone)
    freeze(model, backbone=True)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="only 2 blocks"):
        freeze(FinetuneModel.from_backbone(backbone), blocks=3)


def test_timm_towers_find_their_blocks() -> None:
    vit = FinetuneModel.from_backbone(load_backbone("timm:test_vit", "none", device="cpu"))
    resnet = FinetuneModel.from_backbone(load_backbone("timm:test_resnet", "none", device="cpu"))
    assert len(tower_blocks(vit.tower)) == len(vit.tower.blocks)
    assert tower_blocks(resnet.tower) == [resnet.tower.layer1, resnet.tower.layer2, resnet.tower.layer3,
                                          resnet.tower.layer4]  # fmt: skip
    freeze(resnet, blocks=2)
    frozen = [
        *resnet.tower.conv1.parameters(),
        *resnet.tower.bn1.parameters(),
        *resnet.tower.layer2.parameters(),
    ]
    assert not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in resnet.tower.layer3.parameters())


# ----- data and schedule


def test_augmentation_keeps_shape_and_constant_images_constant() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    out = augment_batch(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    flat = torch.full((4, 3, 24, 24), 77, dtype=torch.uint8)
    assert torch.equal(augment_batch(flat), flat)  # any crop or flip of a flat image is the same image
    torch.manual_seed(1)
    first = augment_batch(images)
    torch.manual_seed(1)
    assert torch.equal(first, augment_batch(images))


def test_epoch_order_shards_cover_every_image() -> None:
    shards = [epoch_order(11, seed=3, epoch=2, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # padded to 12 like DistributedSampler
    assert set().union(*shards) == set(range(11))
    assert epoch_order(11, 3, 2, 0, 1) != epoch_order(11, 3, 1, 0, 1)


def test_lr_schedule_warmup_then_cosine() -> None:
    assert lr_factor(0, 4, 20, "cosine") == pytest.approx(0.25)
    assert lr_factor(3, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_factor(15, 4, 20, "constant") == 1.0


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        TrainConfig(batch_size=10, accumulate=3).micro_batch(1)
    assert TrainConfig(batch_size=128, accumulate=2).micro_batch(4) == 16
    with pytest.raises(ValueError, match="--optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="--freeze-backbone or --freeze-blocks"):
        TrainConfig(freeze_backbone=True, freeze_blocks=2)


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # and no temporary file is left behind


# ----- training runs


def test_learns_the_planted_signal(ava200: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = finetune(small_config(ava200, tiny_clip_spec), run)
    described = json.loads((run / "config.json").read_text())
    baseline = described["baselines"]["val_emd_train_mean_distribution"]
    best = result.history[result.best_epoch - 1]
    assert result.finished and len(result.history) == 8
    # the random-weight tiny ViT beats predicting the train set's average distribution ...
    assert best["val_emd"] < 0.9 * baseline
    # ... and ranks held-out images (50 test images, never used for training or model selection)
    assert result.test["n"] == 50 and result.test["srcc"] > 0.3
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert {"train_loss", "val_emd", "val_srcc", "val_plcc", "val_accuracy"} <= set(rows[0])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 8
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] == result.best_epoch and results["test"]["srcc"] == pytest.approx(
        result.test["srcc"]
    )


def test_resume_matches_an_uninterrupted_run(ava200: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    # every random part at once: cosine schedule with warm-up, dropout, augmentation
    config = small_config(
        ava200, tiny_clip_spec, max_epochs=2, schedule="cosine", warmup_epochs=0.5, dropout=0.2, augment=True
    )
    straight = finetune(config, tmp_path / "straight")
    paused = finetune(config, tmp_path / "paused", stop_after=1)
    assert not paused.finished and paused.epochs == 1 and paused.test is None
    resumed = finetune(resume_config(tmp_path / "paused"), tmp_path / "paused", resume=True)
    assert resumed.epochs == 2 and resumed.finished
    for a, b in zip(straight.history, resumed.history, strict=True):
        for key in ("train_loss", "val_emd", "val_srcc", "val_plcc", "val_accuracy", "lr_tower"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert resumed.test == pytest.approx(straight.test, rel=1e-6)
    last = [load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("straight", "paused")]
    for name, value in last[0].items():
        torch.testing.assert_close(last[1][name], value, rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_matches_one_big_batch(
    ava200: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    # plain SGD without dropout or augmentation: two half batches give the gradient of the whole batch
    base = dict(max_epochs=2, optimizer="sgd", lr_backbone=0.05, lr_head=0.5)
    whole = finetune(small_config(ava200, tiny_clip_spec, **base), tmp_path / "whole")
    halves = finetune(small_config(ava200, tiny_clip_spec, accumulate=2, **base), tmp_path / "halves")
    for a, b in zip(whole.history, halves.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_emd"] == pytest.approx(b["val_emd"], rel=1e-5)
    for (name, a), b in zip(
        whole.model.state_dict().items(), halves.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_timm_backbone_trains_and_its_scorer_reloads(ava200: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = small_config(ava200, "timm:test_vit", pretrained="none", max_epochs=1, split="official")
    result = finetune(config, run)
    assert result.model.kind == "timm" and math.isfinite(result.history[0]["val_emd"])
    scorer = load_scorer(run / "best.safetensors", device="cpu")
    size = scorer.backbone.preprocess_cfg.size
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        expected, _ = result.model.eval().predict(result.model.normalize(images))
    torch.testing.assert_close(scorer.score_images(images).distribution, expected)


def test_mean_only_labels_train_with_mse(ava200: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    records = load_dataset("ava", ava200).records
    labels = tmp_path / "labels.csv"
    labels.write_text("path,score\n" + "".join(f"{r.path},{r.mean:.4f}\n" for r in records))
    config = small_config(labels, tiny_clip_spec, dataset_kind="csv", max_epochs=2)
    with pytest.raises(ValueError, match="use --loss mse"):
        finetune(config, tmp_path / "emd")
    result = finetune(
        small_config(labels, tiny_clip_spec, dataset_kind="csv", max_epochs=2, loss="mse"), tmp_path / "mse"
    )
    assert [row["epoch"] for row in result.history] == [1, 2] and "val_emd" not in result.history[0]
    assert json.loads((tmp_path / "mse" / "config.json").read_text())["early_stopping_metric"] == "val_mse"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_resume_rules(ava200: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    finetune(small_config(ava200, tiny_clip_spec, max_epochs=2), run, stop_after=1)
    with pytest.raises(ValueError, match="already holds a run"):
        finetune(small_config(ava200, tiny_clip_spec), run)
    with pytest.raises(ValueError, match="fixed by the run"):
        resume_config(run, lr_head=0.1)
    with pytest.raises(ValueError, match="cannot shrink"):
        resume_config(run, max_epochs=1)
    with pytest.raises(FileNotFoundError):
        finetune(small_config(ava200, tiny_clip_spec), tmp_path / "nothing", resume=True)
    result = CliRunner().invoke(app, ["finetune", "--resume", str(run), "--batch-size", "8"])
    assert result.exit_code == 2 and "--batch-size 8 (the run has 16): fixed by the run" in console_text(
        result
    )


def test_unreadable_images_are_skipped_and_counted(
    ava_corrupt: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    # batch 2 over a handful of broken files: some micro-batches hold no readable image at all
    config = small_config(ava_corrupt, tiny_clip_spec, max_epochs=1, batch_size=2, split="official",
                          val_fraction=0.2)  # fmt: skip
    result = finetune(config, tmp_path / "run")
    row = result.history[0]
    assert row["train_skipped"] == 4 and math.isfinite(row["train_loss"])
    assert (
        row["train_images"] + row["train_skipped"]
        == json.loads((tmp_path / "run/config.json").read_text())["split"]["counts"]["train"]
    )


def test_score_cli_with_the_best_scorer(
    ava200: Path, tiny_clip_spec: str, tmp_path: Path, photo_dir: Path
) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["finetune", str(ava200), "--model", tiny_clip_spec, "--output", str(run), "--max-epochs", "2",
         "--batch-size", "16", "--optimizer", "adamw", "--lr-backbone", "1e-3", "--lr-head", "1e-3",
         "--split-kind", "random", "--workers", "0", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "finished after epoch 2" in console_text(result)
    config, tensors = read_scorer_file(run / "best.safetensors")
    assert config["method"] == "finetune" and config["backbone"]["model"] == tiny_clip_spec
    assert "head.weight" in tensors and "tower.transformer.resblocks.0.attn.in_proj_weight" in tensors
    out = tmp_path / "ranked.csv"
    scored = CliRunner().invoke(
        app,
        [
            "score",
            str(photo_dir),
            "--scorer",
            str(run / "best.safetensors"),
            "-o",
            str(out),
            "--workers",
            "0",
        ],
    )
    assert scored.exit_code == 0, scored.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and {f"pred_{i}" for i in range(1, 11)} <= set(rows[0])
    for row in rows:
        dist = np.array([float(row[f"pred_{i}"]) for i in range(1, 11)])
        assert dist.sum() == pytest.approx(1.0, abs=1e-5)
        assert float(row["score"]) == pytest.approx(dist @ np.arange(1, 11), abs=1e-4)


def test_loaded_scorer_reproduces_the_trained_model(
    ava200: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    result = finetune(small_config(ava200, tiny_clip_spec, max_epochs=1), tmp_path / "run")
    scorer = load_scorer(tmp_path / "run" / "best.safetensors", device="cpu")
    assert isinstance(scorer, FinetunedScorer) and scorer.has_distribution
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    output = scorer.score_images(images)
    with torch.no_grad():
        probs, mean = result.model.eval().predict(result.model.normalize(images))
    torch.testing.assert_close(output.distribution, probs)
    torch.testing.assert_close(output.score, mean)


def test_torchrun_two_processes_agree(ava200: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(TESTS / "finetune_ddp_worker.py"), str(ava200), tiny_clip_spec, str(tmp_path / "run"), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["epochs"] == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"]  # bit-identical parameters after DDP training
    # validation predictions were gathered: metrics cover the whole 50-image split, not one rank's half
    assert ranks[0]["val_n"] == [50, 50] and ranks[0]["train_images"] == [98, 98]
    rank0_last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert rank0_last["world_size"] == 2
    total = float(sum(v.double().sum() for v in rank0_last["model"].values()))
    assert total == pytest.approx(ranks[1]["sum"], rel=1e-12)
    assert len(list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))) == 2
