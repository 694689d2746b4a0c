"""Bulk scoring: run a scorer over many images through the shared pipeline, rank, and write the results."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import DEFAULT_MAX_PIXELS, ImageSource, iter_batches
from .prompts import PromptGroups
from .scorers.base import Scorer

OUTPUT_FORMATS = (".csv", ".jsonl", ".parquet")


@dataclass
class ScoreReport:
    """Results of a scoring run: rows ranked best first, plus the inputs that could not be read."""

    rows: list[dict]
    errors: list[dict]
    seconds: float
    scorer_config: dict = field(default_factory=dict)

    @property
    def n_scored(self) -> int:
        return len(self.rows)

    @property
    def images_per_second(self) -> float:
        return (len(self.rows) + len(self.errors)) / self.seconds if self.seconds > 0 else float("nan")


def _source_name(source: ImageSource, index: int) -> str:
    return f"<bytes #{index}>" if isinstance(source, bytes) else str(source)


def score_paths(
    scorer: Scorer,
    sources: Sequence[ImageSource],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    precision: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
    progress: bool | None = None,
    decode: str = "auto",
) -> ScoreReport:
    """Score images (paths or encoded bytes) in batches; rows sorted best first with ``rank`` 1..N.

    Unreadable inputs do not stop the run: they are returned in ``errors`` with their reason.
    ``decode`` is ``auto`` (nvJPEG on CUDA, else the CPU), ``cpu`` or ``gpu``; see :func:`iter_batches`.
    """
    start = time.perf_counter()
    scores = np.full(len(sources), np.nan, dtype=np.float64)
    raws = np.full(len(sources), np.nan, dtype=np.float64)
    distributions: dict[int, list[float]] = {}
    errors: list[dict] = []
    for batch in iter_batches(
        sources,
        scorer.backbone.preprocess_cfg,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        draft=draft,
        progress=progress,
        pin_memory=scorer.device.type == "cuda",
        description="scoring",
        device=scorer.device,
        decode=decode,
    ):
        errors.extend({"path": _source_name(sources[i], i), "error": reason} for i, reason in batch.errors)
        if not batch.indices:
            continue
        output = scorer.score_images(batch.images, precision)
        scores[batch.indices] = output.score.numpy()
        if output.raw is not None:
            raws[batch.indices] = output.raw.numpy()
        if output.distribution is not None:
            distributions.update(zip(batch.indices, output.distribution.numpy().tolist(), strict=True))
    rows = _ranked_rows(scorer, sources, scores, raws, distributions)
    return ScoreReport(rows, errors, time.perf_counter() - start, scorer.config())


def _ranked_rows(
    scorer: Scorer,
    sources: Sequence[ImageSource],
    scores: np.ndarray,
    raws: np.ndarray,
    distributions: dict[int, list[float]],
) -> list[dict]:
    scored = np.flatnonzero(~np.isnan(scores))
    order = scored[np.argsort(-scores[scored], kind="stable")]  # ties keep input order
    threshold = scorer.label_threshold
    rows = []
    for rank, index in enumerate(order, start=1):
        row = {
            "path": _source_name(sources[index], index),
            "score": float(scores[index]),
            "rank": rank,
            "label": "good" if scores[index] > threshold else "bad",
        }
        if not np.isnan(raws[index]):
            row["raw"] = float(raws[index])
        if index in distributions:
            row.update({f"pred_{k}": p for k, p in enumerate(distributions[index], start=1)})
        rows.append(row)
    return rows


def write_rows(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV, JSON lines or Parquet, chosen by the file extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output must end in {', '.join(OUTPUT_FORMATS)}, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["path", "score", "rank", "label"]
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in columns}), path)
    return path


def errors_path_for(output: str | os.PathLike) -> Path:
    """``ranked.csv`` -> ``ranked.errors.csv``: where a run lists the files it could not read."""
    output = Path(output)
    return output.with_name(f"{output.stem}.errors.csv")


def build_scorer(
    source: str = "zeroshot",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    prompts: PromptGroups | None = None,
    device: str | None = None,
    quick_gelu: bool | None = None,
) -> Scorer:
    """A scorer from a method name (``zeroshot``) or a saved scorer file.

    Args:
        source: ``zeroshot``, the path of a scorer file (``.json`` / ``.safetensors``), or
            ``laion:/path/to/file.pth`` for a LAION aesthetic predictor checkpoint.
        model, pretrained, quick_gelu: the backbone (see :func:`load_backbone`); for a file, they override
            nothing and must be left unset; for ``laion:`` they default to ViT-L-14 / openai.
        prompts: custom prompt groups for ``zeroshot`` (default: the paper's best).
    """
    from .backbones import DEFAULT_MODEL, load_backbone
    from .scorers import ZeroShotScorer, load_laion_scorer, load_scorer

    if source == "zeroshot":
        backbone = load_backbone(model or DEFAULT_MODEL, pretrained, device=device, quick_gelu=quick_gelu)
        return ZeroShotScorer(backbone, prompts).eval()
    if source.startswith("laion:") and prompts is None:
        return load_laion_scorer(
            source.removeprefix("laion:"), model=model, pretrained=pretrained, device=device
        )
    if model is not None or pretrained is not None or prompts is not None or quick_gelu is not None:
        raise ValueError(
            "a scorer file names its own backbone, weights and prompts: "
            "drop --model/--pretrained/--positive/--negative"
        )
    return load_scorer(source, device=device)
