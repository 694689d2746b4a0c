"""Time and peak memory of fitting linear probes at AVA scale, against numpy's lstsq in the same run.

Data: ``--n`` float16 features of width ``--dim`` (default 255,000 x 768, the size of an AVA cache of CLIP
ViT-B/32 embeddings), correlated and offset like real embeddings, with a planted linear signal plus noise;
5% of them form the validation split. Measured: ``fit_linear`` with OLS, ridge at a fixed alpha, and ridge
with alpha chosen on validation over the 37-point grid; then the obvious baseline, ``np.linalg.lstsq`` on
the float64 standardised features with an intercept column (skip it with ``--no-baseline``). Peak memory is
what numpy allocated during each fit (tracemalloc), on top of the float16 features themselves.

    python benchmarks/bench_probe.py
    python benchmarks/bench_probe.py --n 50000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr

from clip_aesthetics.features.fit_probe import fit_linear


def make_features(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated float16 features and a target with a planted linear signal (R^2 about 0.5)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    offsets, weights = rng.normal(0, 0.5, dim), rng.normal(size=dim)
    features = np.empty((n, dim), dtype=np.float16)
    signal = np.empty(n)
    for start in range(0, n, 16384):
        chunk = rng.standard_normal((min(16384, n - start), dim)) @ mixing + offsets
        features[start : start + len(chunk)] = chunk
        signal[start : start + len(chunk)] = chunk.astype(np.float16).astype(np.float64) @ weights
    target = 5.4 + 0.75 * (signal - signal.mean()) / signal.std()
    return features, target + rng.normal(0, 0.75, n)


def measure(name: str, fit: Callable[[], np.ndarray], x_test: np.ndarray, y_test: np.ndarray) -> float:
    tracemalloc.start()
    start = time.perf_counter()
    predict = fit()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rho = spearmanr(predict(x_test), y_test).statistic
    print(f"{name:<28} {seconds:8.2f} s   peak {peak / 2**20:8.1f} MiB   test SRCC {rho:.4f}", flush=True)
    return seconds


def lstsq_fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0)
    design = np.column_stack([np.ones(len(x64)), (x64 - mean) / std])
    del x64
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return lambda xt: (xt.astype(np.float64) - mean) / std @ coef[1:] + coef[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=255_000, help="training + validation features")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--no-baseline", action="store_true", help="skip np.linalg.lstsq")
    args = parser.parse_args()
    print(f"cores {os.cpu_count()}, numpy {np.__version__}; features {args.n:,} x {args.dim} float16")
    start = time.perf_counter()
    x, y = make_features(args.n + 20_000, args.dim)
    n_train = args.n - args.n // 20
    x_train, y_train = x[:n_train], y[:n_train]
    x_val, y_val = x[n_train : args.n], y[n_train : args.n]
    x_test, y_test = x[args.n :], y[args.n :]
    seconds = time.perf_counter() - start
    print(f"generated in {seconds:.1f} s; train {n_train:,}, val {args.n - n_train:,}, test 20,000")

    def ours(solver: str, alpha: float | str | None) -> Callable[[], Callable]:
        def fit() -> Callable[[np.ndarray], np.ndarray]:
            linear = fit_linear(x_train, y_train, solver, alpha, x_val, y_val)
            return lambda xt: linear.predict(xt)[:, 0]

        return fit

    ols = measure("fit_linear ols", ours("ols", None), x_test, y_test)
    measure("fit_linear ridge alpha=1000", ours("ridge", 1000.0), x_test, y_test)
    measure("fit_linear ridge auto (37)", ours("ridge", "auto"), x_test, y_test)
    if not args.no_baseline:
        baseline = measure("np.linalg.lstsq (float64)", lambda: lstsq_fit(x_train, y_train), x_test, y_test)
        print(f"OLS speed-up over lstsq: {baseline / ols:.1f}x")
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
