"""Prompt search: each strategy's numbers equal an independent computation with open_clip and scipy."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from clip_aesthetics import load_backbone
from clip_aesthetics.study.prompt_search import best_scorer, embed_adjectives, search_pairs, similarities

ADJECTIVES = ("outstanding", "stunning", "horrible", "boring")
CONTENTS = ("dog", "car", "mountain", "tree", "bird")


STRATEGIES = ("fixed", "context", "content", "ensemble")


@pytest.fixture(scope="module", params=["cosine", "authors"])
def setup(request, tiny_clip_spec: str):
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(80, 32)).astype(np.float32)
    true = np.clip(5.4 + features[:, 0] * 0.5 + rng.normal(0, 0.3, 80), 1, 10)
    emb = embed_adjectives(backbone, ADJECTIVES, CONTENTS, request.param)
    rows = search_pairs(similarities(features, emb), ADJECTIVES, ADJECTIVES[:2], ADJECTIVES[2:], true)
    return backbone, features, true, rows, request.param


def _reference_raw(
    spec: str, features: np.ndarray, strategy: str, p: str, q: str, formula: str
) -> np.ndarray:
    """Each strategy with open_clip and numpy alone; 'authors' keeps text embeddings unnormalised."""
    model = open_clip.create_model(spec)
    tokenizer = open_clip.get_tokenizer(spec)
    model.eval()

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            e = model.encode_text(tokenizer(texts)).numpy().astype(np.float64)
        return e if formula == "authors" else e / np.linalg.norm(e, axis=1, keepdims=True)

    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    if strategy == "fixed":
        pos, neg = embed([f"a {p} picture"])[0], embed([f"a {q} picture"])[0]
        return 100 * (f @ pos - f @ neg)
    pos = embed([f"a {p} picture of a {c}" for c in CONTENTS])
    neg = embed([f"a {q} picture of a {c}" for c in CONTENTS])
    if strategy == "ensemble":
        gp, gn = pos.mean(0), neg.mean(0)
        if formula == "cosine":
            gp, gn = gp / np.linalg.norm(gp), gn / np.linalg.norm(gn)
        return 100 * (f @ gp - f @ gn)
    if strategy == "content":
        return 100 * ((f @ pos.T).max(axis=1) - (f @ neg.T).max(axis=1))
    best = np.argmax(f @ embed([f"a picture of a {c}" for c in CONTENTS]).T, axis=1)
    return np.array([100 * (f[i] @ pos[best[i]] - f[i] @ neg[best[i]]) for i in range(len(f))])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_equals_independent_computation(setup, tiny_clip_spec: str, strategy: str) -> None:
    backbone, features, true, rows, formula = setup
    row = next(
        r
        for r in rows
        if r["strategy"] == strategy and r["positive"] == "stunning" and r["negative"] == "boring"
    )
    raw = _reference_raw(tiny_clip_spec, features, strategy, "stunning", "boring", formula)
    assert row["srcc"] == pytest.approx(spearmanr(raw, true)[0], abs=1e-5)
    assert row["plcc"] == pytest.approx(pearsonr(raw, true)[0], abs=1e-5)  # the authors': on raw
    assert row["accuracy"] == pytest.approx(np.mean((raw > 0) == (true > 5)))
    # the saved scorer of that row scores the same features identically
    scorer = best_scorer(backbone, row, CONTENTS, formula)
    assert scorer.config()["formula"] == formula
    ours = scorer.score_features(torch.as_tensor(features)).raw.numpy()
    assert np.allclose(ours, raw, rtol=1e-5, atol=1e-3)


def test_rows_ranked_by_chosen_metric(setup) -> None:
    rows = setup[3]
    assert len(rows) == len(STRATEGIES) * 2 * 2
    srcc = [r["srcc"] for r in rows]
    assert srcc == sorted(srcc, reverse=True) and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
