"""Bulk scoring: run a scorer over many images through the shared pipeline, rank, and write the results.

:func:`iter_scored` is the pipeline every bulk scoring job shares: it streams :class:`ScoredBatch` objects
(scores, optionally image embeddings, and the inputs that could not be scored) to whatever sink a caller
has: :func:`score_paths` keeps them in memory and ranks them, :mod:`~clip_aesthetics.runs.resumable` writes
them to resumable part files.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..encoders.compute import resolve_precision
from ..encoders.prompts import PromptGroups
from ..fileio import atomic_path, sibling_path, text_name
from ..pipeline.images import DEFAULT_MAX_PIXELS, ImageSource, iter_batches
from ..scorers.base import ScoreOutput, Scorer

OUTPUT_FORMATS = (".csv", ".jsonl", ".parquet")
NON_FINITE = "non-finite score"  # the reason given for an image whose score is NaN or infinite
BASE_COLUMNS = ["path", "score", "rank", "label"]


@dataclass
class ScoreReport:
    """Results of a scoring run: rows ranked best first, plus the inputs that could not be scored."""

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


@dataclass
class ScoredBatch:
    """One batch of :func:`iter_scored`: positions (in the run's sources) of the scored inputs, their
    scores (CPU float32), their image embeddings (float32, when asked) and the ``(position, reason)`` of
    inputs that could not be scored (unreadable, or a :data:`NON_FINITE` score)."""

    positions: list[int]
    output: ScoreOutput
    features: np.ndarray | None = None
    errors: list[tuple[int, str]] = field(default_factory=list)


def source_name(source: ImageSource, index: int) -> str:
    return f"<bytes #{index}>" if isinstance(source, bytes) else os.fspath(source)


def check_embeddings_supported(scorer: Scorer) -> None:
    """Raise ValueError unless the scorer scores image embeddings (zero-shot, probe, LAION)."""
    if scorer.encoder_key() is None:  # its own encoder (a fine-tuned tower), not the backbone's embeddings
        raise ValueError(
            f"a {scorer.method} scorer does not score image embeddings (it runs its own image tower): "
            "--embeddings and --from-embeddings need a zero-shot, probe or LAION scorer"
        )


@torch.inference_mode()
def score_with_features(
    scorer: Scorer, images: torch.Tensor, precision: str
) -> tuple[ScoreOutput, np.ndarray]:
    """Scores and image embeddings of a uint8 batch in one pass (the scores equal ``score_images``'s).

    The encoder splits a batch that does not fit GPU memory (:meth:`Scorer.encode_images`); the head runs
    in float32 on the features (:meth:`Scorer.score_features`), as ``score_images`` does.
    """
    features = scorer.encode_images(images, precision)
    return scorer.score_features(features).to_cpu(), features.float().cpu().numpy()


def finite_mask(output: ScoreOutput) -> np.ndarray:
    """True where every value the scorer gave for an image (score, raw, distribution) is finite."""
    ok = torch.isfinite(output.score)
    if output.raw is not None:
        ok &= torch.isfinite(output.raw)
    if output.distribution is not None:
        ok &= torch.isfinite(output.distribution).all(dim=1)
    return ok.numpy()


def split_non_finite(batch: ScoredBatch) -> ScoredBatch:
    """Move inputs with a NaN or infinite score into the batch's errors, as :data:`NON_FINITE`."""
    ok = finite_mask(batch.output)
    if ok.all():
        return batch
    keep = torch.from_numpy(ok)
    output = ScoreOutput(
        *(
            None if t is None else t[keep]
            for t in (batch.output.score, batch.output.distribution, batch.output.raw)
        )
    )
    bad = [(p, NON_FINITE) for p, good in zip(batch.positions, ok, strict=True) if not good]
    return ScoredBatch(
        [p for p, good in zip(batch.positions, ok, strict=True) if good],
        output,
        None if batch.features is None else batch.features[ok],
        sorted(batch.errors + bad),
    )


def iter_scored(
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
    embeddings: bool = False,
) -> Iterator[ScoredBatch]:
    """Score ``sources`` (paths or encoded bytes) batch by batch, in order; see :class:`ScoredBatch`.

    ``precision`` ``auto`` is bf16 on CUDA and on CPUs with native bf16, else fp32; ``decode`` is ``auto``
    (nvJPEG on CUDA), ``cpu`` or ``gpu`` (see :func:`iter_batches`); ``embeddings`` also returns each image's
    embedding (the scorer must score embeddings, see :func:`check_embeddings_supported`).
    """
    precision = resolve_precision(scorer.device, precision, cpu_bf16=True)
    if embeddings:
        check_embeddings_supported(scorer)
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
        if not batch.indices:
            yield ScoredBatch([], ScoreOutput(torch.empty(0)), None, list(batch.errors))
            continue
        if embeddings:
            output, features = score_with_features(scorer, batch.images, precision)
        else:
            output, features = scorer.score_images(batch.images, precision), None
        yield split_non_finite(ScoredBatch(list(batch.indices), output, features, list(batch.errors)))


def score_paths(scorer: Scorer, sources: Sequence[ImageSource], **options) -> ScoreReport:
    """Score images (paths or encoded bytes) in memory; rows sorted best first with ``rank`` 1..N.

    Inputs that cannot be scored do not stop the run: they are returned in ``errors`` with their reason
    (unreadable, or a non-finite score). Options: those of :func:`iter_scored`. For runs too large to keep
    in memory, or that must survive a kill, use :class:`~clip_aesthetics.runs.resumable.ScoreRun`.
    """
    start = time.perf_counter()
    scores = np.full(len(sources), np.nan, dtype=np.float64)
    raws = np.full(len(sources), np.nan, dtype=np.float64)
    distributions: dict[int, list[float]] = {}
    errors: list[dict] = []
    for batch in iter_scored(scorer, sources, **options):
        errors.extend({"path": source_name(sources[i], i), "error": reason} for i, reason in batch.errors)
        if not batch.positions:
            continue
        scores[batch.positions] = batch.output.score.numpy()
        if batch.output.raw is not None:
            raws[batch.positions] = batch.output.raw.numpy()
        if batch.output.distribution is not None:
            distributions.update(
                zip(batch.positions, batch.output.distribution.numpy().tolist(), strict=True)
            )
    rows = _ranked_rows(scorer.label_threshold, sources, scores, raws, distributions)
    return ScoreReport(rows, errors, time.perf_counter() - start, scorer.config())


def _ranked_rows(
    threshold: float,
    sources: Sequence[ImageSource],
    scores: np.ndarray,
    raws: np.ndarray,
    distributions: dict[int, list[float]],
) -> list[dict]:
    scored = np.flatnonzero(~np.isnan(scores))
    # best first; equal scores (a 1-10 score saturated in float32, as the authors' zero-shot raw makes it) by
    # raw, then input order (lexsort is stable; its last key is the primary one)
    tie = np.nan_to_num(raws[scored], nan=0.0)
    order = scored[np.lexsort((-tie, -scores[scored]))]
    rows = []
    for rank, index in enumerate(order, start=1):
        row = {
            "path": source_name(sources[index], index),
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


def check_output_format(path: str | os.PathLike) -> Path:
    """``path`` if its extension names a results format, else ValueError."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"output must end in {', '.join(OUTPUT_FORMATS)}, not {text_name(path.name)!r}")
    return path


def write_rows(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as CSV, JSON lines or Parquet (by the extension), atomically; see :func:`write_table`."""
    import pyarrow as pa

    check_output_format(path)
    columns = list(dict.fromkeys(key for row in rows for key in row)) or BASE_COLUMNS
    rows = [{**row, "path": text_name(row["path"])} if "path" in row else row for row in rows]
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns})
    return write_table(table, path)


def write_table(table, path: str | os.PathLike, chunk_rows: int = 65536) -> Path:
    """Write an Arrow table as CSV, JSON lines or Parquet, chosen by the extension, atomically.

    CSV and JSON lines are converted ``chunk_rows`` at a time, so memory stays that of the table. A
    ``path`` column is written as text with :func:`~clip_aesthetics.fileio.text_name` (names that are not
    UTF-8 get ``\\xNN`` escapes). A failure (a full disk) leaves the previous file intact.
    """
    path = check_output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write_table_to(table, tmp, suffix=path.suffix, chunk_rows=chunk_rows)
    return path


def write_table_to(table, file: str | os.PathLike, *, suffix: str, chunk_rows: int = 65536) -> None:
    """Write an Arrow table to ``file`` (not atomically: a temporary) in the format ``suffix`` names."""
    suffix, table = suffix.lower(), _text_paths(table)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, file)
        return
    chunks = (rows for batch in table.to_batches(max_chunksize=chunk_rows) for rows in [batch.to_pylist()])
    with open(file, "w", encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            _write_csv(handle, table.column_names, chunks)
        else:
            _write_jsonl(handle, chunks)


def _write_csv(handle, columns: list[str], chunks: Iterable[list[dict]]) -> None:
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    for rows in chunks:
        writer.writerows(rows)


def _write_jsonl(handle, chunks: Iterable[list[dict]]) -> None:
    for rows in chunks:
        handle.writelines(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows)


def _text_paths(table):
    """The ``path`` column as UTF-8 text (binary or surrogate-escaped names through ``text_name``)."""
    import pyarrow as pa

    if "path" not in table.column_names:
        return table
    column = table.column("path")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return table
    names = [None if b is None else text_name(os.fsdecode(b)) for b in column.to_pylist()]
    return table.set_column(table.column_names.index("path"), "path", pa.array(names, pa.string()))


def errors_path_for(output: str | os.PathLike) -> Path:
    """``ranked.csv`` -> ``ranked.errors.csv``: where a run lists the files it could not score.

    (A name too long for the file system with the suffix keeps its start plus a digest.)"""
    output = Path(output)
    return sibling_path(output.with_name(output.stem), "", ".errors.csv")


def embeddings_path_for(output: str | os.PathLike) -> Path:
    """``ranked.csv`` -> ``ranked.embeddings.parquet``: the image embeddings of a run, by path."""
    output = Path(output)
    return sibling_path(output.with_name(output.stem), "", ".embeddings.parquet")


def build_scorer(
    source: str = "zeroshot",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    prompts: PromptGroups | None = None,
    device: str | None = None,
    quick_gelu: bool | None = None,
    formula: str | None = None,
) -> Scorer:
    """A scorer from a method name (``zeroshot``) or a saved scorer file.

    Args:
        source: ``zeroshot``, the path of a scorer file (``.json`` / ``.safetensors``), or
            ``laion:/path/to/file.pth`` for a LAION aesthetic predictor checkpoint.
        model, pretrained, quick_gelu: the backbone (see :func:`load_backbone`); for a file, they override
            nothing and must be left unset; for ``laion:`` they default to ViT-L-14 / openai.
        prompts: custom prompt groups for ``zeroshot`` (default: the paper's best).
        formula: the ``zeroshot`` score, ``cosine`` (default) or ``authors`` (see
            :mod:`~clip_aesthetics.scorers.zeroshot`); a scorer file records its own.
    """
    from ..encoders.backbones import DEFAULT_MODEL, load_backbone
    from ..scorers import ZeroShotScorer, load_laion_scorer, load_scorer

    if source == "zeroshot":
        backbone = load_backbone(model or DEFAULT_MODEL, pretrained, device=device, quick_gelu=quick_gelu)
        return ZeroShotScorer(backbone, prompts, formula=formula or "cosine").eval()
    if source.startswith("laion:") and prompts is None:
        return load_laion_scorer(
            source.removeprefix("laion:"), model=model, pretrained=pretrained, device=device
        )
    if model is not None or pretrained is not None or prompts is not None or quick_gelu is not None:
        raise ValueError(
            "a scorer file names its own backbone, weights and prompts: "
            "drop --model/--pretrained/--positive/--negative"
        )
    if formula is not None:
        raise ValueError("a scorer file records its own zero-shot score: drop --zeroshot-score")
    return load_scorer(source, device=device)


def load_scorer_groups(
    sources: Sequence[str],
    *,
    model: str | None = None,
    pretrained: str | None = None,
    prompts: PromptGroups | None = None,
    device: str | None = None,
    formula: str | None = None,
) -> Iterator[list[tuple[int, Scorer]]]:
    """Load scorers one encoder at a time: ``[(index in sources, scorer), ...]`` per group.

    Sources are as in :func:`build_scorer` (``model``/``pretrained``/``prompts`` describe ``zeroshot`` and
    ``laion:``, ``formula`` the ``zeroshot`` score). Scorer files that name the same frozen encoder (see
    :func:`~clip_aesthetics.scorers.base.encoder_identity`) are loaded onto one backbone instance, shared with
    a ``zeroshot``/``laion:`` scorer on that encoder, so the evaluation hub encodes each image once for all
    of them; a fine-tuned scorer (its own tower) is a group of one. Only one group's models are alive at a
    time if the caller drops each group before asking for the next. Every file's config is read first, so a
    bad file fails before any model is loaded.
    """
    from ..scorers import load_scorer
    from ..scorers.base import encoder_identity
    from ..scorers.registry import backbone_for, read_scorer_config

    configs = {i: read_scorer_config(s) for i, s in enumerate(sources) if not _is_method(s)}
    keys = {i: None if _own_tower(c) else encoder_identity(c["backbone"]) for i, c in configs.items()}
    done: set[int] = set()
    live_first = sorted(range(len(sources)), key=lambda i: i in configs)  # their encoder is known once built
    for i in live_first:
        source = sources[i]
        if i in done:
            continue
        if i in configs:
            backbone, key, members = backbone_for(configs[i], device), keys[i], []
            same = [j for j in configs if j not in done and keys[j] == key] if key is not None else [i]
        else:
            options = {"formula": formula} if source == "zeroshot" else {}
            lead = build_scorer(
                source, model=model, pretrained=pretrained, prompts=prompts, device=device, **options
            )
            backbone, key, members = lead.backbone, encoder_identity(lead.backbone.describe()), [(i, lead)]
            same = [j for j in configs if j not in done and keys[j] == key]
        members += [(j, load_scorer(sources[j], backbone=backbone)) for j in same]
        done.update(j for j, _ in members)
        yield members


def _is_method(source: str) -> bool:
    return source == "zeroshot" or source.startswith("laion:")


def _own_tower(config: dict) -> bool:
    from ..scorers.registry import scorer_class

    return bool(getattr(scorer_class(config.get("method")), "holds_tower_weights", False))
