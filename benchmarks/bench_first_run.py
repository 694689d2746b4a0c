"""A new user's first `score` (empty cache: the default prompts are encoded) against a warm one.

Runs the real command line on the same photos with ViT-B-32 and random weights (the architecture's cost,
no download): first with an empty ``CLIP_AESTHETICS_CACHE``, then again with the cache the first run filled
(another output file, so nothing is resumed). The random weights are drawn once and given as a file
(``--pretrained FILE``): ``--pretrained none`` draws new weights in every process, which no cache may
reuse and no two runs share. Reports wall time, images/s, the cold/warm ratio, whether the runs gave the
same scores, and the machine's load average (it may be shared).

    python benchmarks/bench_first_run.py                       # 40 camera-size photos (4000x3000)
    python benchmarks/bench_first_run.py --n 40 --size 500x375
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_score import make_jpegs


def random_weights(model: str, path: Path) -> Path:
    """One draw of random weights for ``model``, saved as a weights file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = open_clip.create_model(model).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def run_score(photos: Path, output: Path, cache: Path, model: str, weights: Path, extra: list[str]) -> float:
    """Wall seconds of one `clip-aesthetics score` process, from start to exit."""
    command = [sys.executable, "-m", "clip_aesthetics", "score", str(photos), "-o", str(output)]
    command += ["--model", model, "--pretrained", str(weights), *extra]
    env = {**os.environ, "CLIP_AESTHETICS_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def scores(path: Path) -> dict[str, str]:
    """Path -> score as written (text, so "the same" means byte for byte)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row["score"] for row in csv.DictReader(handle)}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="photos")
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the photos")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument(
        "--pairs", type=int, default=3, help="cold+warm pairs, back to back (median reported)"
    )
    parser.add_argument("score_options", nargs="*", help="more `score` options after --")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-first-run-") as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        make_jpegs(tmp / "photos", args.n, width, height)
        weights = random_weights(args.model, tmp / "random-weights.safetensors")
        print(
            f"{args.n} photos {width}x{height}, {args.model} random weights; load average {load()}",
            flush=True,
        )
        colds, warms = [], []
        for pair in range(args.pairs):  # cold then warm, back to back: a shared machine's load drifts
            cache, cold_csv, warm_csv = tmp / f"cache{pair}", tmp / f"cold{pair}.csv", tmp / f"warm{pair}.csv"
            colds.append(run_score(tmp / "photos", cold_csv, cache, args.model, weights, args.score_options))
            warms.append(run_score(tmp / "photos", warm_csv, cache, args.model, weights, args.score_options))
            same = scores(cold_csv) == scores(warm_csv) == scores(tmp / "cold0.csv")
            print(
                f"pair {pair + 1}: cold (empty cache) {colds[-1]:.1f} s, warm {warms[-1]:.1f} s, "
                f"cold/warm {colds[-1] / warms[-1]:.2f}x, same scores: {same}; load average {load()}",
                flush=True,
            )
        ratio = statistics.median(c / w for c, w in zip(colds, warms, strict=True))
        cold, warm = statistics.median(colds), statistics.median(warms)
        print(
            f"median: cold {cold:.1f} s ({args.n / cold:.2f} images/s), "
            f"warm {warm:.1f} s ({args.n / warm:.2f} images/s), cold/warm {ratio:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
