"""Shard scoring throughput: the local and Ray engines against `score` on the same images as files.

Writes WebDataset tars of photo-like JPEGs (plus the same JPEGs as files) and times every pipeline on ``N``
and then ``2N`` images. The difference gives each pipeline's cost per image once running (``(T(2N) - T(N)) /
N``), the rest its start-up (``T(N) - N x per image``: worker processes, Ray actors building their model):
    ``files``: ``score_paths`` over the JPEG files (the pipeline of `score FOLDER`: the baseline);
    ``local``: ``score_shards(engine="local")`` over the tars, writing per-shard Parquet and the manifest;
    ``ray``:   ``score_shards(engine="ray")`` on a local single-node Ray (``ray.init`` timed on its own).
Precision, batch size and workers default to the CLI's (auto, 64, one per 4 cores); actors and CPUs per
actor as the Ray engine plans them from the cluster. Scores of the engines are compared at the end.

    python benchmarks/bench_shards.py                                    # ViT-B/32 (random weights), CPU
    python benchmarks/bench_shards.py --memory 3,12 --per-shard 16       # peak memory, 3 vs 12 shards
    python benchmarks/bench_shards.py --device cuda --model ViT-L-14 --shards 32 --per-shard 256 \\
        --batch-size 256 --workers 14 --gpus-per-actor 1                    # on a GPU
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench_score import GROUPS, make_jpegs
from clip_aesthetics import score_paths
from clip_aesthetics.encoders.compute import resolve_precision
from clip_aesthetics.pipeline.images import iter_batches
from clip_aesthetics.shards import EngineOptions, ScorerRecipe, score_shards


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


def model_only(scorer, files: list[Path], args, precision: str) -> float:
    cfg = scorer.backbone.preprocess_cfg
    batches = [
        b.images for b in iter_batches(files, cfg, batch_size=args.batch_size, workers=0, progress=False)
    ]
    scorer.score_images(batches[0], precision)  # warm-up
    start = time.perf_counter()
    for images in batches:
        scorer.score_images(images, precision)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - start)


def save_random_model(folder: Path, name: str) -> str:
    """The architecture ``name`` with random weights, saved as a ``local-dir:`` model (the layout of a
    Hugging Face open_clip repo), so that every process (each Ray actor too) loads the same weights."""
    import json

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(name)
    folder.mkdir(parents=True)
    mean, std = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    config = {"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": {"mean": mean, "std": std}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors"
    )
    return f"local-dir:{folder}"


def peak_memory_mb(spec: str, tars: list[str], out: Path, options: dict) -> float:
    """Peak resident memory (MB) of a fresh process scoring ``tars`` with the local engine."""
    code = textwrap.dedent(f"""
        import resource
        from bench_score import GROUPS
        from clip_aesthetics.shards import EngineOptions, ScorerRecipe, score_shards
        recipe = ScorerRecipe("zeroshot", {spec!r}, prompts=GROUPS)
        score_shards({tars!r}, {str(out)!r}, recipe, EngineOptions(**{options!r}), progress=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent)  # fmt: skip
    return float(done.stdout.split()[-1])


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def per_image_and_startup(name: str, times: dict[int, list[float]], n: int) -> tuple[float, float]:
    """Seconds per image once running and seconds of start-up, from the fastest runs over n and 2n images."""
    small, large = min(times[1]), min(times[2])
    per_image = (large - small) / n
    startup = small - n * per_image
    print(f"{name:28s} {small:7.1f} s / {large:7.1f} s   {1000 * per_image:7.1f} ms/image   "
          f"start-up {startup:5.1f} s")  # fmt: skip
    return per_image, startup


def read_scores(folder: Path) -> dict[str, float]:
    scores = {}
    for path in folder.glob("*.parquet"):
        table = pq.read_table(path, columns=["key", "score"]).to_pydict()
        scores.update(zip(table["key"], table["score"], strict=True))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=4, help="shards of the N-image set (2N: twice as many)")
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="as the CLI: auto (bf16 where native), fp32, ...")
    parser.add_argument("--batch-size", type=int, default=64, help="as the CLI's --batch-size")
    parser.add_argument("--workers", type=int, default=None, help="as the CLI (default: one per 4 cores)")
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--cpus-per-actor", type=float, default=None)
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--engines", default="files,local,ray")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each size; the fastest counts")
    parser.add_argument(
        "--memory",
        default=None,
        help="only measure the local engine's peak memory for these shard counts: 3,12",
    )
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.shards * args.per_shard
        (tmp / "files").mkdir()
        shard_count = max(2 * args.shards, *map(int, (args.memory or "0").split(",")))
        files = make_jpegs(tmp / "files", shard_count * args.per_shard, width, height)
        tars = write_shards(tmp, files, shard_count)
        recipe = ScorerRecipe("zeroshot", save_random_model(tmp / "model", args.model), prompts=GROUPS)
        scorer = recipe.build(args.device)  # as the CLI: every run below builds its own from the recipe
        precision = resolve_precision(scorer.device, args.precision, cpu_bf16=True)
        print(f"{args.model} on {args.device}, {precision}, batch {args.batch_size}, JPEGs {args.size}; "
              f"N = {n} images in {args.shards} shards, then 2N")  # fmt: skip
        if args.memory:
            options = dict(batch_size=args.batch_size, workers=args.workers, precision=args.precision)
            for count in map(int, args.memory.split(",")):
                some = tars[:count]
                peak = peak_memory_mb(recipe.model, some, tmp / f"memory-{count}", options)
                print(
                    f"local engine, {count:3d} shards ({count * args.per_shard} images): peak {peak:7.0f} MB"
                )
            return
        ceiling = model_only(scorer, files[:n], args, precision)
        print(f"model alone (decoded uint8 batches): {1000 / ceiling:.1f} ms/image")
        options = dict(batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                       device=args.device, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                       cpus_per_actor=args.cpus_per_actor)  # fmt: skip
        results, outputs = {}, {}

        def run_files(scale: int) -> None:
            score_paths(recipe.build(args.device), files[: scale * n], batch_size=args.batch_size,
                        workers=args.workers, precision=precision, progress=False, decode="cpu")  # fmt: skip

        def run_engine(engine: str):
            def run(scale: int) -> None:
                out = tmp / f"{engine}-{scale}-{time.perf_counter_ns()}"
                score_shards(tars[: scale * args.shards], str(out), recipe,
                             EngineOptions(engine=engine, **options), progress=False)  # fmt: skip
                outputs[engine] = out

            return run

        runs = {"files": run_files, "local": run_engine("local"), "ray": run_engine("ray")}
        if "ray" in engines:
            from clip_aesthetics.shards.engine_ray import start_local_ray

            started = timed(lambda: start_local_ray(num_cpus=args.ray_cpus))
            print(f"{'ray.init (local, 127.0.0.1)':28s} {started:7.1f} s")
            warm = timed(lambda: run_engine("ray")(1))  # Ray starts its worker processes on the first job
            print(f"{'first Ray job (workers start)':28s} {warm:7.1f} s")
        times = {engine: {1: [], 2: []} for engine in engines}
        for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits every pipeline
            for engine in engines:
                for scale in (1, 2):
                    times[engine][scale].append(timed(lambda: runs[engine](scale)))  # noqa: B023
        names = {"files": "score FOLDER (files)", "local": "engine local (tars)", "ray": "engine ray (tars)"}
        for engine in engines:
            results[engine] = per_image_and_startup(names[engine], times[engine], n)
        for name, base in (("local", "files"), ("ray", "local")):
            if name in results and base in results:
                (a, sa), (b, sb) = results[name], results[base]
                print(f"{name} vs {base}: {a / b - 1:+.0%} per image, start-up {sa - sb:+.1f} s")
        if "local" in outputs and "ray" in outputs:
            a, b = read_scores(outputs["local"]), read_scores(outputs["ray"])
            diff = max(abs(a[k] - b[k]) for k in a)
            print(f"engines agree on {len(a)} samples: max |score diff| {diff:.2e}")


if __name__ == "__main__":
    main()
