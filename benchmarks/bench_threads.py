"""Torch threads beside decoding workers: the rule of ``encoders.compute.model_threads`` vs torch's default.

Scores the same photos with ``score_paths`` (ViT-B-32, random weights, default workers and precision) with
the model's CPU threads chosen by the rule (the cores the decoding workers leave) and with torch's default
(every core), once as the machine is and once with a busy loop of ours taking a core. The settings run
interleaved, best of ``--repeats``; the load average is printed because the machine may be shared.

    python benchmarks/bench_threads.py --n 40 --size 4000x3000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_score import GROUPS, make_jpegs
from clip_aesthetics import ZeroShotScorer, load_backbone, score_paths
from clip_aesthetics.encoders import compute

RULE = compute.model_threads


def every_core(workers: int, device=None) -> int:
    return torch.get_num_threads()  # torch's own default: one thread per core


def timed_run(scorer, paths: list[Path], choose) -> tuple[float, int]:
    """images/s of one score_paths run with the model's threads chosen by ``choose``; threads used."""
    used = []
    compute.model_threads = lambda workers, device=None: used.append(choose(workers, device)) or used[-1]
    try:
        start = time.perf_counter()
        score_paths(scorer, paths, progress=False)
        return len(paths) / (time.perf_counter() - start), used[0]
    finally:
        compute.model_threads = RULE


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    scorer = ZeroShotScorer(load_backbone(args.model, "none", device="cpu"), GROUPS).eval()
    cores = compute.usable_cores()
    print(f"{cores} cores, {compute.default_workers(scorer.device)} decoding worker(s) by default")
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        paths = make_jpegs(Path(tmp), args.n, width, height)
        score_paths(scorer, paths[:4], progress=False)  # warm-up: first-call allocations
        for loaded in (False, True):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
            try:
                time.sleep(1 if loaded else 0)
                best = {"rule": (0.0, 0), "every core": (0.0, 0)}
                start_load = load()
                for _ in range(args.repeats):
                    for name, choose in (("rule", RULE), ("every core", every_core)):
                        rate, threads = timed_run(scorer, paths, choose)
                        best[name] = max(best[name], (rate, threads))
                label = "with a busy loop on one core" if loaded else "as the machine is"
                print(f"{label} (load average {start_load} -> {load()}):")
                for name, (rate, threads) in best.items():
                    print(f"  {name}: {threads} torch thread(s), {rate:.2f} images/s")
                ratio = best["rule"][0] / best["every core"][0]
                print(f"  rule / every core: {ratio:.2f}x")
            finally:
                if busy is not None:
                    busy.terminate()
                    busy.wait()


if __name__ == "__main__":
    main()
