"""Cost of `compare` with three heads on one encoder against `evaluate` of one head, in the same run.

Writes a synthetic AVA set (``synth-ava``: ``--n`` JPEGs at ``--size`` px), a ViT-B-32 weights file with
random weights (no download; the same cost as trained weights; a file, unlike ``--pretrained none``, has an
identity that scorer files and feature caches can match), three scorer files on it - a zero-shot prompt
pair, a linear probe and a LAION-style MLP - then times, in this process, as a user runs them:

- evaluate: ``clip-aesthetics evaluate ROOT --split all --scorer probe.safetensors``;
- compare: ``clip-aesthetics compare ROOT --split all --scorer zeroshot.json --scorer probe.safetensors
  --scorer laion.safetensors`` (one image pass for the three heads);
- separate: the three ``evaluate`` runs compare replaces (what compare cost before the evaluation hub);
- cached: the same compare with ``--features`` pointing at an ``embed`` cache of the set (no image decoded).

Each command's time includes loading the model and the dataset and writing its outputs. Prints images/s and
the ratios compare / evaluate (target: at most 1.4) and separate / compare.

    python benchmarks/bench_compare.py
    python benchmarks/bench_compare.py --n 400 --size 256 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from clip_aesthetics import load_backbone, save_scorer
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.features import DatasetSpec, embed_dataset
from clip_aesthetics.scorers import LaionScorer, ProbeHead, ProbeScorer, ZeroShotScorer
from clip_aesthetics.scorers.laion import laion_mlp


def write_heads(backbone, folder: Path) -> dict[str, Path]:
    """Three heads on the backbone, saved as scorer files."""
    d = backbone.feature_dim
    g = torch.Generator().manual_seed(0)
    probe = ProbeHead(
        torch.zeros(d), torch.ones(d), torch.randn(1, d, generator=g) * 0.05, torch.tensor([5.0])
    )
    laion = {f"layers.{k}": v for k, v in laion_mlp(d).state_dict().items()}
    heads = {
        "zeroshot.json": ZeroShotScorer(backbone, PromptGroups(("a stunning photo",), ("a dull photo",))),
        "probe.safetensors": ProbeScorer(backbone, probe),
        "laion.safetensors": LaionScorer(backbone, laion),
    }
    return {name: save_scorer(scorer, folder / name) for name, scorer in heads.items()}


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"{' '.join(map(str, args[:2]))} failed: {result.output[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images in the synthetic set")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    root = make_synthetic_ava(tmp / "ava", n=args.n, size=args.size, seed=0, n_missing=0)
    weights = tmp / "random-weights.safetensors"
    state = open_clip.create_model(args.model).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    backbone = load_backbone(args.model, str(weights), device=args.device)
    files = write_heads(backbone, tmp)
    common = ["--split", "all", "--batch-size", args.batch_size, "--device", args.device]
    common += ["--precision", args.precision]
    common += ["--workers", args.workers] if args.workers is not None else []
    scorers = [a for f in files.values() for a in ("--scorer", f)]
    load = f"{os.getloadavg()[0]:.1f}"

    probe = ["--scorer", files["probe.safetensors"]]
    timed(["evaluate", root, *common, *probe, "--output", tmp / "warm.json"])  # imports, kernels, caches
    one = timed(["evaluate", root, *common, *probe, "--output", tmp / "e.json"])
    three = timed(["compare", root, *common, *scorers, "--output", tmp / "c.md"])
    separate = sum(
        timed(["evaluate", root, *common, "--scorer", f, "--output", tmp / f"s-{i}.json"])
        for i, f in enumerate(files.values())
    )
    cache = tmp / "features"
    spec = DatasetSpec("ava", str(root))
    embed_dataset(spec, backbone, cache, batch_size=args.batch_size, precision=args.precision, progress=False)
    cached = timed(["compare", root, *common, *scorers, "--features", cache, "--output", tmp / "f.md"])

    n = args.n
    print(f"{args.model} (random weights), {n} synthetic AVA images at {args.size}px, {args.device}")
    print(f"load average before/after: {load} / {os.getloadavg()[0]:.1f}")
    for label, seconds in [
        ("evaluate, 1 head", one),
        ("compare, 3 heads (one pass)", three),
        ("3 separate evaluates", separate),
        ("compare, 3 heads, --features cache", cached),
    ]:
        print(f"{label:38s} {seconds:7.1f} s  {n / seconds:7.1f} images/s")
    print(f"compare / evaluate: {three / one:.2f}x (target <= 1.4)")
    print(f"3 separate evaluates / compare: {separate / three:.2f}x")


if __name__ == "__main__":
    main()
