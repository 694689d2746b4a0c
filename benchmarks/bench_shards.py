"""Shard scoring throughput: the local and Ray engines against the same pipeline on files, in one run.

Writes ``--shards`` WebDataset tars of photo-like JPEGs (plus the same JPEGs as files), then measures:
    ``model``: the scorer on already-decoded uint8 batches (the ceiling: no decoding, no I/O);
    ``files``: ``score_paths`` over the JPEG files (the single-file `score` pipeline, the baseline);
    ``local``: ``score_shards(engine="local")`` over the tars, writing per-shard Parquet and the manifest;
    ``ray``: ``score_shards(engine="ray")`` on a local Ray (startup timed separately), same outputs.
Overhead of an engine = 1 - (its images/s) / (files images/s). Scores of both engines are compared.

    python benchmarks/bench_shards.py --shards 8 --per-shard 48 --size 500x375
    python benchmarks/bench_shards.py --device cuda --model ViT-L-14 --shards 32 --per-shard 512 \\
        --batch-size 256 --workers 14 --actors 1 --gpus-per-actor 1 --cpus-per-actor 2   # on a GPU
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench_score import GROUPS, make_jpegs
from clip_aesthetics import ZeroShotScorer, load_backbone, score_paths
from clip_aesthetics.images import iter_batches
from clip_aesthetics.shards import EngineOptions, score_shards


def write_shards(folder: Path, files: list[Path], shards: int) -> list[str]:
    """The files split into ``shards`` WebDataset tars (key = file stem, member ``.jpg`` + ``.txt``)."""
    paths = []
    for s, chunk in enumerate(np.array_split(np.arange(len(files)), shards)):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in chunk:
                stem = files[i].stem
                for name, data in ((f"{stem}.jpg", files[i].read_bytes()), (f"{stem}.txt", b"x")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def model_only(scorer, files: list[Path], args) -> float:
    cfg = scorer.backbone.preprocess_cfg
    batches = [
        b.images for b in iter_batches(files, cfg, batch_size=args.batch_size, workers=0, progress=False)
    ]
    scorer.score_images(batches[0], args.precision)  # warm-up
    start = time.perf_counter()
    for images in batches:
        scorer.score_images(images, args.precision)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - start)


def engine_rate(scorer, tars: list[str], out: Path, options: EngineOptions) -> tuple[float, dict]:
    start = time.perf_counter()
    report = score_shards(tars, str(out), scorer, options, progress=False)
    rate = report.manifest["samples"] / (time.perf_counter() - start)
    scores = {}
    for path in out.glob("*.parquet"):
        scores.update(zip(*pq.read_table(path, columns=["key", "score"]).to_pydict().values(), strict=True))
    return rate, scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=48)
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--engines", default="local,ray")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "files").mkdir()
        files = make_jpegs(tmp / "files", args.shards * args.per_shard, width, height)
        tars = write_shards(tmp, files, args.shards)
        scorer = ZeroShotScorer(load_backbone(args.model, "none", device=args.device), GROUPS).eval()
        n = len(files)
        print(f"{args.model} on {args.device}, {args.precision}, {n} JPEGs {args.size}, {args.shards} shards")
        ceiling = model_only(scorer, files, args)
        print(f"model alone (decoded uint8 batches):   {ceiling:8.1f} images/s")
        start = time.perf_counter()
        score_paths(scorer, files, batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                    progress=False, decode="cpu")  # fmt: skip
        files_rate = n / (time.perf_counter() - start)
        print(f"score_paths on files (baseline):       {files_rate:8.1f} images/s")
        options = dict(batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                       device=args.device, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                       cpus_per_actor=args.cpus_per_actor)  # fmt: skip
        results = {}
        for engine in args.engines.split(","):
            if engine == "ray":
                import ray

                start = time.perf_counter()
                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, configure_logging=False)
                print(f"ray.init (local, once per job):        {time.perf_counter() - start:8.1f} s")
            rate, scores = engine_rate(scorer, tars, tmp / engine, EngineOptions(engine=engine, **options))
            results[engine] = scores
            print(f"engine {engine:5s} (tars -> Parquet):       {rate:8.1f} images/s, "
                  f"{rate / files_rate:.2f}x files, overhead {1 - rate / files_rate:+.0%}, "
                  f"{rate / ceiling:.0%} of the model alone")  # fmt: skip
        if len(results) == 2:
            a, b = results.values()
            diff = max(abs(a[k] - b[k]) for k in a)
            print(f"engines agree on {len(a)} samples: max |score diff| {diff:.2e}")


if __name__ == "__main__":
    main()
