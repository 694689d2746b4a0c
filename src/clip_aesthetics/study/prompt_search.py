"""Prompt engineering study (paper section 4.1): which adjective pair, fixed or context-aware, ensembled.

Image embeddings are computed once (a feature cache) and every text once (the text-embedding cache); a
pair's score is then a difference of two precomputed similarity columns, so searching 600 pairs under
four strategies costs little more than one pass over the images.

Strategies, for a positive adjective ``p`` and a negative ``q``:
    ``fixed``: ``a {p} picture`` vs ``a {q} picture``;
    ``context``: ``a {p} picture of a {c}`` vs ``a {q} picture of a {c}`` where ``c`` is the image's
    best-matching content word (highest similarity to ``a picture of a {c}``);
    ``content``: the authors' content mode: the best of ``a {p} picture of a {c}`` over all ``c`` against
    the best of ``a {q} picture of a {c}`` (the label is the group of the argmax over all 2 x C prompts);
    ``ensemble``: each adjective's context prompts over all content words averaged (the paper's best).

Every text vector follows the zero-shot ``formula`` (see :mod:`clip_aesthetics.scorers.zeroshot`):
``authors`` keeps the text tower's output unnormalised, ``cosine`` normalises it. SRCC and PLCC are those
of ``raw``, in float64, as the authors computed them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from ..constants import PROMPT_METRICS as METRICS
from ..encoders.backbones import Backbone
from ..encoders.prompts import (
    CLASS_LISTS,
    CONTEXT_TEMPLATE,
    IMAGENET_CLASSES,
    PromptGroups,
    encode_texts,
    expand,
)
from ..fileio import atomic_write_json, atomic_write_text, read_text
from ..metrics import check_threshold
from ..runs.tables import format_metric, markdown_table
from ..scorers.zeroshot import LOGIT_SCALE, ZeroShotScorer, group_vector, prompt_vectors

NEUTRAL_TEMPLATE = "a picture of a {content}"
WORD_FILE_SUFFIXES = (".txt", ".yaml", ".yml", ".json")


@dataclass
class AdjectiveEmbeddings:
    """Text vectors of every adjective under every strategy (float32), under one zero-shot formula."""

    adjectives: tuple[str, ...]
    contents: tuple[str, ...]
    fixed: torch.Tensor  # (A, D)
    per_content: torch.Tensor  # (A, C, D)
    ensemble: torch.Tensor  # (A, D)
    neutral: torch.Tensor  # (C, D)
    formula: str = "cosine"


def embed_adjectives(
    backbone: Backbone, adjectives: tuple[str, ...], contents: tuple[str, ...], formula: str = "cosine"
) -> AdjectiveEmbeddings:
    """Encode all prompts of all adjectives once (batched, cached on disk per backbone and texts)."""

    def encode(texts: tuple[str, ...]) -> torch.Tensor:
        return encode_texts(backbone, texts, normalize=False)

    per_content_raw = encode(expand(adjectives, contents)).view(len(adjectives), len(contents), -1)
    return AdjectiveEmbeddings(
        tuple(adjectives),
        tuple(contents),
        prompt_vectors(encode(expand(adjectives)), formula),
        prompt_vectors(per_content_raw, formula),
        torch.stack([group_vector(group, formula) for group in per_content_raw]),
        prompt_vectors(encode(tuple(NEUTRAL_TEMPLATE.format(content=c) for c in contents)), formula),
        formula,
    )


def similarities(features: np.ndarray | torch.Tensor, emb: AdjectiveEmbeddings) -> dict[str, np.ndarray]:
    """Similarity (normalised image . text vector) of each image to each adjective, per strategy: (N, A).

    A pair's raw score is 100 times the difference of its two columns under every strategy.
    """
    features = torch.nn.functional.normalize(torch.as_tensor(features).float(), dim=-1)
    best = (features @ emb.neutral.T).argmax(dim=-1)  # each image's content word
    adjectives = range(len(emb.adjectives))
    context = torch.stack([(features * emb.per_content[a, best]).sum(-1) for a in adjectives], 1)
    content = torch.stack([(features @ emb.per_content[a].T).amax(-1) for a in adjectives], 1)
    return {
        "fixed": (features @ emb.fixed.T).numpy(),
        "context": context.numpy(),
        "content": content.numpy(),
        "ensemble": (features @ emb.ensemble.T).numpy(),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def pair_metrics(raw: np.ndarray, true: np.ndarray, true_ranks: np.ndarray, threshold: float) -> dict:
    """SRCC and PLCC of the raw score (float64, as the authors), accuracy of the closer-group decision."""
    raw = np.asarray(raw, dtype=np.float64)
    return {
        "srcc": _pearson(rankdata(raw), true_ranks),
        "plcc": _pearson(raw, true),
        "accuracy": float(np.mean((raw > 0) == (true > threshold))),
    }


def search_pairs(
    sims: dict[str, np.ndarray],
    adjectives: tuple[str, ...],
    positives: tuple[str, ...],
    negatives: tuple[str, ...],
    true: np.ndarray,
    *,
    threshold: float = 5.0,
    metric: str = "srcc",
) -> list[dict]:
    """Evaluate every positive x negative pair under every strategy; rows sorted best first by ``metric``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose {', '.join(METRICS)})")
    threshold = check_threshold(threshold)
    index = {a: i for i, a in enumerate(adjectives)}
    true = np.asarray(true, dtype=np.float64)
    true_ranks = rankdata(true)
    rows = []
    for strategy, sim in sims.items():
        for p in positives:
            for q in negatives:
                raw = LOGIT_SCALE * (
                    sim[:, index[p]].astype(np.float64) - sim[:, index[q]].astype(np.float64)
                )
                metrics = pair_metrics(raw, true, true_ranks, threshold)
                rows.append({"strategy": strategy, "positive": p, "negative": q, "n": len(true), **metrics})
    rows.sort(key=lambda r: -np.nan_to_num(r[metric], nan=-np.inf))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def best_scorer(
    backbone: Backbone, row: dict, contents: tuple[str, ...], formula: str = "cosine"
) -> ZeroShotScorer:
    """The zero-shot scorer of a result row (same prompts, strategy and formula as searched)."""
    p, q = (row["positive"],), (row["negative"],)
    recipe = {"search_result": {k: row[k] for k in ("strategy", "positive", "negative", *METRICS)}}
    if row["strategy"] == "fixed":
        return ZeroShotScorer(backbone, PromptGroups(expand(p), expand(q)), recipe=recipe, formula=formula)
    groups = PromptGroups(expand(p, contents, CONTEXT_TEMPLATE), expand(q, contents, CONTEXT_TEMPLATE))
    if row["strategy"] in ("ensemble", "content"):
        return ZeroShotScorer(backbone, groups, recipe=recipe, strategy=row["strategy"], formula=formula)
    neutral = tuple(NEUTRAL_TEMPLATE.format(content=c) for c in contents)
    return ZeroShotScorer(
        backbone, groups, recipe=recipe, strategy="context", context_prompts=neutral, formula=formula
    )


def ranked_markdown(rows: list[dict], limit: int = 30) -> str:
    """The top ``limit`` rows as a Markdown table."""
    header = ["rank", "strategy", "positive", "negative", "SRCC", "PLCC", "accuracy"]
    cells = [
        [row["rank"], row["strategy"], row["positive"], row["negative"]]
        + [format_metric(row[k], digits=4) for k in ("srcc", "plcc", "accuracy")]
        for row in rows[:limit]
    ]
    return markdown_table(header, cells, right=("rank", "SRCC", "PLCC", "accuracy"))


def _looks_like_path(value: str) -> bool:
    separators = {"/", os.sep, os.altsep} - {None}
    return any(s in value for s in separators) or value.lower().endswith(WORD_FILE_SUFFIXES)


def load_word_list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """Words from a file (one per line), a comma-separated list, or the default when None.

    A value that looks like a file name (a path separator, or a ``.txt``/``.yaml``/``.yml``/``.json``
    ending) but names no file is an error, never a list of one odd adjective.
    """
    if value is None:
        return default
    path = Path(value)
    if path.is_file():
        words = read_text(path).splitlines()
    elif _looks_like_path(value):
        raise FileNotFoundError(f"word list not found: {value}")
    else:
        words = value.split(",")
    words = tuple(dict.fromkeys(w.strip() for w in words if w.strip()))
    if not words:
        raise ValueError(f"no words in {value!r}")
    return words


def contents_for(value: str) -> tuple[str, ...]:
    """Content words: ``imagenet`` (the authors' 1000 class names), ``imagenet-curated`` (open_clip's
    curated names), or a file / comma-separated list."""
    return CLASS_LISTS[value] if value in CLASS_LISTS else load_word_list(value, IMAGENET_CLASSES)


def write_results(rows: list[dict], meta: dict, json_path: str | os.PathLike, markdown_path=None) -> None:
    """Write the ranked table as JSON (with ``meta``) and optionally Markdown."""
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_path, {**meta, "results": rows})
    if markdown_path is not None:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(markdown_path, ranked_markdown(rows))
