"""Culling a shoot: the one-decode analysis against a two-pass baseline, and the 10,000-photo scale.

1. Analysis throughput (images/s). Baseline, measured in the same run: what a straightforward culling tool
   does, ``score_paths`` for the embeddings/scores plus a second pass that opens every file at full size
   for the technical checks, capture time and thumbnail. Ours: ``analyse_folder`` (one decode per photo in
   the pipeline's workers, at reduced scale, checks + thumbnail + embedding), then a reopen from its cache.
2. Grouping 10,000 frames (512-d embeddings): with capture times and by content alone.
3. The review page's photo list for 10,000 frames: build time and JSON size.
4. Grouping 50,000 frames that are all alike (a time-lapse copied without capture times): time and peak
   memory (tracemalloc) of the tiled union-find.
5. Camera formats: DNGs (a real Bayer mosaic; sensor data decoded by LibRaw, or the embedded preview when it
   covers the model's input) and HEICs (libheif), against JPEGs of the same photos, decoded for the model
   as the pipeline does (``open_image`` with the pipeline's draft size).
6. The review app's first answer after launch with an empty cache (the model and its prompts load in the
   background), and the time until it is ready.
7. The "why" heat map over the whole frame against the former centre-crop map.

    python benchmarks/bench_cull.py --n 40 --size 3000x2000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench_score import GROUPS, make_jpegs


def two_pass_baseline(scorer, paths: list[Path], thumbs: Path, workers: int | None) -> float:
    """Seconds for score_paths plus a full-size second pass for checks, capture times and thumbnails."""
    from clip_aesthetics import score_paths
    from clip_aesthetics.culling.capture import capture_time
    from clip_aesthetics.culling.technical import technical
    from clip_aesthetics.pipeline.images import open_image

    start = time.perf_counter()
    score_paths(scorer, paths, workers=workers, progress=False)
    for path in paths:
        image = open_image(path)
        technical(image)
        capture_time(path)
        image.thumbnail((384, 384))
        image.save(thumbs / path.name, "JPEG", quality=85)
    return time.perf_counter() - start


def analysis(args) -> None:
    from clip_aesthetics import ZeroShotScorer, load_backbone
    from clip_aesthetics.culling.shoot import analyse_folder

    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLIP_AESTHETICS_CACHE"] = str(Path(tmp) / "cache")
        folder = Path(tmp) / "shoot"
        folder.mkdir()
        paths = make_jpegs(folder, args.n, width, height)
        scorer = ZeroShotScorer(load_backbone(args.model, "none"), GROUPS).eval()
        (Path(tmp) / "thumbs").mkdir()
        baseline = two_pass_baseline(scorer, paths, Path(tmp) / "thumbs", args.workers)
        start = time.perf_counter()
        analyse_folder(folder, scorer.backbone, workers=args.workers, batch_size=32)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        analyse_folder(folder, scorer.backbone, workers=args.workers, batch_size=32)
        reopen = time.perf_counter() - start
    print(f"analysis of {args.n} JPEGs {args.size}, {args.model}:")
    print(
        f"  two-pass baseline {args.n / baseline:.1f} images/s; ours {args.n / ours:.1f} images/s "
        f"({baseline / ours:.2f}x); reopen from the cache {reopen * 1000:.0f} ms"
    )


def scale(n: int) -> None:
    from clip_aesthetics.app.session import ReviewSession
    from clip_aesthetics.culling.grouping import group_frames
    from clip_aesthetics.culling.shoot import Shoot
    from clip_aesthetics.culling.xmp import Labels

    rng = np.random.default_rng(0)
    scenes = rng.normal(size=(n // 4, 512))
    embeddings = np.repeat(scenes, 4, axis=0)[:n] + rng.normal(0, 0.1, (n, 512))  # bursts of four
    times = np.repeat(np.arange(n // 4) * 60.0, 4)[:n] + np.tile(np.arange(4) * 0.5, n // 4 + 1)[:n]
    start = time.perf_counter()
    groups = group_frames(embeddings, times.tolist(), ["exif"] * n)
    with_times = time.perf_counter() - start
    start = time.perf_counter()
    group_frames(embeddings)
    content = time.perf_counter() - start
    print(
        f"grouping {n} frames: {with_times:.2f} s with capture times, {content:.2f} s by content alone "
        f"({len(set(groups.tolist()))} groups)"
    )

    frames = [
        {
            "rel": f"2024/IMG_{i:05d}.jpg",
            "size": 1,
            "mtime_ns": 1,
            "time": times[i],
            "time_source": "exif",
            "time_text": "2024-05-01T10:00:00.000",
            "sharpness": 100.0 + i % 7,
            "highlights": 0.0,
            "shadows": 0.0,
            "thumb": f"{i:024d}.jpg",
        }
        for i in range(n)
    ]
    session = ReviewSession(Path("/shoot"), scorer=SimpleNamespace(method="zeroshot"))  # scores given below
    session.shoot = Shoot(Path("/shoot"), Path("/cache"), frames, embeddings.astype(np.float32))
    session.labels = {f["rel"]: Labels() for f in frames}
    session.groups = groups
    session.index = {f["rel"]: i for i, f in enumerate(frames)}
    session.rel_of = {str(session.shoot.path(i)): f["rel"] for i, f in enumerate(frames)}
    from clip_aesthetics.culling.cull import cull_rows

    start = time.perf_counter()
    session.rows = cull_rows(session.shoot, rng.uniform(1, 10, n), groups=groups)  # a re-rank
    ranking = time.perf_counter() - start
    start = time.perf_counter()
    payload = json.dumps(session.photos())
    listing = time.perf_counter() - start
    print(
        f"review list of {n} frames: re-ranking {ranking:.2f} s, /api/photos {listing * 1000:.0f} ms, "
        f"{len(payload) / 1e6:.1f} MB of JSON"
    )


def alike(n: int) -> None:
    """Grouping ``n`` frames that are all alike, without capture times: one group, memory kept bounded."""
    from clip_aesthetics.culling.grouping import group_frames

    rng = np.random.default_rng(0)
    embeddings = (np.ones((n, 512)) + rng.normal(0, 0.01, (n, 512))).astype(np.float32)
    tracemalloc.start()
    start = time.perf_counter()
    groups = group_frames(embeddings)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"grouping {n} alike frames (512-d, no times): {seconds:.2f} s, peak {peak / 2**20:.0f} MB above the "
        f"{embeddings.nbytes / 2**20:.0f} MB of embeddings, {len(set(groups.tolist()))} group(s)"
    )


def formats(n: int, size: str) -> None:
    """Decode rates of DNG (preview, LibRaw half size, LibRaw full), HEIC and JPEG of the same photos."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))  # the tests' writers of real DNGs (LibRaw reads them) and HEICs
    from PIL import Image

    from clip_aesthetics.pipeline.images import open_image
    from raw_data import make_dng_with_preview, make_heic

    width, height = map(int, size.split("x"))
    draft = 448  # the pipeline's draft size for ViT-B-32 (2 x 224)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jpegs = make_jpegs(folder, n, width, height)
        dngs, heics = [], []
        for i, jpeg in enumerate(jpegs):
            image = Image.open(jpeg).convert("RGB")
            preview = image.resize((width // 4, height // 4))  # a small preview: 750 x 500 for 3000 x 2000
            dngs.append(make_dng_with_preview(image, preview, folder / f"photo_{i:04d}.dng"))
            heics.append(make_heic(image, folder / f"photo_{i:04d}.heic"))

        def rate(paths, draft_size) -> float:
            start = time.perf_counter()
            for path in paths:
                open_image(path, draft_size=draft_size)
            return len(paths) / (time.perf_counter() - start)

        jpeg = rate(jpegs, draft)
        rows = [
            ("JPEG (baseline, drafted)", jpeg),
            ("DNG, embedded preview (uncompressed RGB)", rate(dngs, draft)),
            ("DNG, LibRaw half-size decode (preview too small)", rate(dngs, min(width, height) // 4 + 100)),
            ("DNG, LibRaw full decode (100% loupe)", rate(dngs, None)),
            ("HEIC (libheif)", rate(heics, draft)),
        ]
    print(f"decoding {n} photos {size} for the model (draft {draft} px), images/s:")
    for name, value in rows:
        print(f"  {name}: {value:.2f} images/s ({value / jpeg:.2f}x JPEG)")


def app_start(model: str) -> None:
    """Seconds from launching `clip-aesthetics app` (empty cache) to its first answer, and to ready."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shoot"
        folder.mkdir()
        make_jpegs(folder, 8, 1200, 800)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "CLIP_AESTHETICS_CACHE": str(Path(tmp) / "cache")}
        command = [sys.executable, "-m", "clip_aesthetics", "app", str(folder), "--port", str(port)]
        start = time.perf_counter()
        process = subprocess.Popen(
            [*command, "--model", model, "--pretrained", "none"], env=env, stderr=subprocess.DEVNULL
        )
        first = ready = None
        phases = []
        try:
            while time.perf_counter() - start < 900 and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as answer:
                        status = json.load(answer)
                except OSError:
                    time.sleep(0.1)
                    continue
                first = first or time.perf_counter() - start
                if not phases or phases[-1] != status["state"]:
                    phases.append(status["state"])
                if status["state"] in ("ready", "failed"):
                    ready = time.perf_counter() - start
                    break
                time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(10)
    print(
        f"app, {model} with the default prompts, empty cache: first answer after {first:.1f} s "
        f"(states seen: {' -> '.join(phases)}), ready after {ready:.1f} s"
        if first and ready
        else f"app: first answer {first}, ready {ready}"
    )


def heat_map(model: str) -> None:
    """Seconds for the "why" heat map of a 3000x2000 photo: the whole frame (6 x 4 cells, 25 variants)
    against the former centre-crop map (8 x 8 cells, 65 variants), measured in the same run."""
    from clip_aesthetics import ZeroShotScorer, load_backbone
    from clip_aesthetics.app.why import occlusion_map, occlusion_variants
    from clip_aesthetics.pipeline.images import open_image, prepare

    scorer = ZeroShotScorer(load_backbone(model, "none"), GROUPS).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_jpegs(Path(tmp), 1, 3000, 2000)[0]
        occlusion_map(scorer, path)  # warm-up: first-call costs are not the map's
        start = time.perf_counter()
        photo = open_image(path)
        scorer.score_images(occlusion_variants(prepare(photo, scorer.backbone.preprocess_cfg), 8), "auto")
        before = time.perf_counter() - start
        start = time.perf_counter()
        occlusion_map(scorer, path)
        ours = time.perf_counter() - start
    print(f"heat map, {model}, 3000x2000: centre crop 8x8 {before:.2f} s; whole frame 6x4 {ours:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="JPEGs for the analysis benchmark")
    parser.add_argument("--size", default="3000x2000")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--scale", type=int, default=10_000, help="frames for the grouping/list benchmark")
    parser.add_argument("--alike", type=int, default=50_000, help="alike frames for the memory benchmark")
    parser.add_argument("--formats", type=int, default=8, help="photos per format for the decoding rows")
    parser.add_argument(
        "--only", choices=["scale", "alike", "analysis", "formats", "app", "why"], action="append"
    )
    args = parser.parse_args()
    parts = {
        "scale": lambda: scale(args.scale),
        "alike": lambda: alike(args.alike),
        "analysis": lambda: analysis(args),
        "formats": lambda: formats(args.formats, args.size),
        "app": lambda: app_start(args.model),
        "why": lambda: heat_map(args.model),
    }
    for name in args.only or parts:
        parts[name]()


if __name__ == "__main__":
    main()
