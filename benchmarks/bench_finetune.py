"""Fine-tuning throughput: training images/s of the train step alone and of whole epochs from JPEG files.

Sections (random weights throughout, so nothing is downloaded):

- CPU, tiny CLIP ViT (32 px): the train step on in-memory uint8 batches, and `finetune` end to end on a
  synthetic AVA set (decode in worker processes + step), with the ratio of the two;
- CPU, ViT-B/32 at 224 px, small batch: the train step in fp32 and in bf16 autocast, with the ratio;
- GPU (when CUDA is present): ViT-B/32 at batch 128, fp32 (TF32 matmuls) vs bf16 autocast train step, and
  `finetune` end to end on 500x375 synthetic JPEGs against that step rate.

A train step is what the trainer runs per batch: normalise on the device, forward (autocast), EMD loss,
backward, SGD step with the paper's settings.

    python benchmarks/bench_finetune.py                  # CPU, about 1-2 minutes on 2 cores
    python benchmarks/bench_finetune.py --gpu-only       # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.encoders.backbones import Backbone, PreprocessConfig
from clip_aesthetics.encoders.compute import autocast
from clip_aesthetics.finetune import FinetuneModel, TrainConfig, emd_loss, finetune
from clip_aesthetics.finetune.optim import build_optimizer

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def clip_backbone(name_or_cfg: str | dict, device: str) -> Backbone:
    """An open_clip model with random weights wrapped as a Backbone (no files, no download)."""
    torch.manual_seed(0)
    if isinstance(name_or_cfg, dict):
        model, spec = open_clip.CLIP(**name_or_cfg), "tiny"
    else:
        model, spec = open_clip.create_model(name_or_cfg), name_or_cfg
    size = model.visual.image_size[0]
    cfg = PreprocessConfig(size=size, resize_size=size)
    return Backbone(model, spec=spec, pretrained="none", kind="clip", preprocess_cfg=cfg, weights_id=spec).to(
        device
    )


def step_rate(backbone: Backbone, batch: int, precision: str, steps: int, warmup: int = 2) -> float:
    """Training images/s of the train step on one fixed uint8 batch already in host memory."""
    device = backbone.device
    model = FinetuneModel.from_backbone(backbone).train()
    optimizer = build_optimizer(model, TrainConfig())
    size = backbone.preprocess_cfg.size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    if device.type == "cuda":
        images = images.pin_memory()
    target = torch.softmax(torch.randn(batch, 10), dim=1).to(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device, precision):
            logits = model(model.normalize(images))
        emd_loss(logits, target).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def end_to_end_rate(model_dir: Path, dataset: Path, out: Path, **options) -> float:
    """Mean training images/s of the epochs after the first (worker start-up and warm-up excluded)."""
    config = TrainConfig(dataset=str(dataset), model=f"local-dir:{model_dir}", pretrained=None, **options)
    result = finetune(config, out)
    rates = [row["images_per_s"] for row in result.history[1:]] or [result.history[0]["images_per_s"]]
    return sum(rates) / len(rates)


def save_local_dir(folder: Path, cfg: dict | str) -> Path:
    """Write a random-weight open_clip model in the ``local-dir:`` layout so ``finetune`` can load it."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model_cfg = cfg if isinstance(cfg, dict) else open_clip.get_model_config(cfg)
    model = open_clip.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors"
    )
    return folder


def report(label: str, rate: float, reference: float | None = None, ref_label: str = "") -> None:
    ratio = f"  ({rate / reference:.2f}x {ref_label})" if reference else ""
    print(f"  {label:<52} {rate:9.1f} images/s{ratio}", flush=True)


def cpu_section(tmp: Path, workers: int) -> None:
    print(f"CPU ({torch.get_num_threads()} threads)")
    tiny = clip_backbone(TINY_CLIP, "cpu")
    tiny_step = step_rate(tiny, batch=32, precision="fp32", steps=30)
    report("tiny ViT (32 px), train step, batch 32, fp32", tiny_step)
    dataset = make_synthetic_ava(tmp / "ava-cpu", n=600, seed=0, size=256, n_missing=0)
    tiny_dir = save_local_dir(tmp / "tiny", TINY_CLIP)
    options = dict(batch_size=32, max_epochs=3, split="random", val_fraction=0.05, test_fraction=0.0,
                   workers=workers, device="cpu", optimizer="sgd")  # fmt: skip
    e2e = end_to_end_rate(tiny_dir, dataset, tmp / "run-tiny", **options)
    report(f"tiny ViT, finetune end to end (256 px JPEGs, {workers} workers)", e2e, tiny_step, "of the step")
    vit = clip_backbone("ViT-B-32", "cpu")
    fp32 = step_rate(vit, batch=8, precision="fp32", steps=3, warmup=1)
    report("ViT-B/32 (224 px), train step, batch 8, fp32", fp32)
    bf16 = step_rate(vit, batch=8, precision="bf16", steps=3, warmup=1)
    report("ViT-B/32 (224 px), train step, batch 8, bf16 autocast", bf16, fp32, "fp32")


def gpu_section(tmp: Path, workers: int, n_images: int) -> None:
    print(f"GPU: {torch.cuda.get_device_name()}")
    torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer sets it
    torch.backends.cudnn.benchmark = True
    vit = clip_backbone("ViT-B-32", "cuda")
    fp32 = step_rate(vit, batch=128, precision="fp32", steps=20, warmup=5)
    report("ViT-B/32, train step, batch 128, fp32 (TF32)", fp32)
    bf16 = step_rate(vit, batch=128, precision="bf16", steps=20, warmup=5)
    report("ViT-B/32, train step, batch 128, bf16 autocast", bf16, fp32, "fp32")
    del vit
    dataset = make_synthetic_ava(tmp / "ava-gpu", n=n_images, seed=0, size=500, n_missing=0)
    options = dict(batch_size=128, max_epochs=3, split="random", val_fraction=0.02, test_fraction=0.0,
                   device="cuda", precision="bf16", workers=workers)  # fmt: skip
    model_dir = save_local_dir(tmp / "vit-b-32", "ViT-B-32")
    e2e = end_to_end_rate(model_dir, dataset, tmp / "run-gpu", **options)
    report(
        f"ViT-B/32, finetune end to end (500x375 JPEGs, bf16, {workers} workers)", e2e, bf16, "of the step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU section")
    parser.add_argument("--gpu-images", type=int, default=2048, help="synthetic JPEGs for the GPU section")
    args = parser.parse_args()
    import os

    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) - 1)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        if not args.gpu_only:
            cpu_section(Path(tmp), workers)
        if torch.cuda.is_available():
            gpu_section(Path(tmp), workers, args.gpu_images)
        else:
            print("GPU: none (CUDA not available), section skipped")


if __name__ == "__main__":
    main()
