"""The run folder's human-readable files: metrics as CSV and JSON lines, a loss-curve plot, JSON summaries.

Each file is rewritten whole from the metrics history (which the checkpoint carries), atomically, so a
resumed run never duplicates or loses rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..fileio import atomic_savefig, atomic_write_text

CONFIG_FILE = "config.json"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
CURVES_PNG = "loss.png"
RESULTS_FILE = "results.json"
LAST_CHECKPOINT = "last.pt"
BEST_SCORER = "best.safetensors"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "undefined" (e.g. SRCC of a constant prediction)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON, NaN written as null."""
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def write_metrics(history: list[dict], run_dir: Path) -> None:
    """``metrics.csv`` and ``metrics.jsonl``: one row per finished epoch."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / METRICS_CSV, buffer.getvalue())
    atomic_write_text(run_dir / METRICS_JSONL, "".join(json.dumps(_json_safe(row)) + "\n" for row in history))


def plot_curves(history: list[dict], path: Path, metric: str) -> None:
    """Train loss and the validation ``metric`` per epoch (plus validation SRCC on a second axis)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train loss")
    ax.plot(epochs, [row[f"val_{metric}"] for row in history], "s-", label=f"validation {metric.upper()}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(
        epochs, [row["val_srcc"] for row in history], "^--", color="tab:green", label="validation SRCC"
    )
    right.set_ylabel("SRCC")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
