"""Bursts and near-duplicates, and the best frame of each.

Two frames are linked when they are alike in content (cosine similarity of their image embeddings at least
``similarity``) and, when both have capture times from the same clock, taken at most ``max_gap`` seconds
apart. Groups are the connected components of those links, so a burst of 20 frames is one group even when
its first and last frames are further apart than ``max_gap``. Frames without comparable times are linked
by content alone.

The best frame of a group is chosen from the aesthetic score after the technical checks: frames whose
sharpness is below :data:`SOFT_RATIO` of the group's sharpest frame are "soft" (motion blur, missed focus)
and can only win when every frame of the group is; clipped highlights and shadows lower a frame's quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

DEFAULT_SIMILARITY = 0.92
DEFAULT_MAX_GAP = 10.0  # seconds between linked frames
SOFT_RATIO = 0.5
CLIPPING_PENALTY = 2.0  # score points lost per unit fraction of clipped pixels beyond the limits
BLOCK = 1024  # rows of the similarity matrix computed at once


def group_frames(
    embeddings: np.ndarray,
    times: Sequence[float | None] | None = None,
    sources: Sequence[str | None] | None = None,
    *,
    similarity: float = DEFAULT_SIMILARITY,
    max_gap: float = DEFAULT_MAX_GAP,
) -> np.ndarray:
    """Group index (0..G-1, in order of each group's first frame) for every frame.

    Args:
        embeddings: (N, D) image embeddings (normalised here).
        times: capture times in seconds (None or NaN where unknown); None: content alone decides.
        sources: the clock each time comes from (``exif``, ``file``); times are only compared within one.
        similarity: the cosine similarity from which two frames count as alike.
        max_gap: the largest time between two linked frames, in seconds.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    t = np.full(n, np.nan) if times is None else np.array([np.nan if v is None else v for v in times], float)
    names = ["" if sources is None or s is None else s for s in (sources or [None] * n)]
    clock = np.unique(names, return_inverse=True)[1].reshape(n) if n else np.zeros(0, int)
    clock[np.isnan(t)] = -1  # no time: compared with every frame by content alone
    edges: list[tuple[np.ndarray, np.ndarray]] = []
    for code in np.unique(clock[clock >= 0]):
        timed = np.flatnonzero(clock == code)
        timed = timed[np.argsort(t[timed], kind="stable")]
        others = np.flatnonzero(clock != code)  # other clocks and untimed frames: content decides
        for start in range(0, len(timed), BLOCK):
            rows = timed[start : start + BLOCK]
            # frames sorted by time: only a band of columns can be within max_gap of this block
            lo = np.searchsorted(t[timed], t[rows[0]] - max_gap, side="left")
            hi = np.searchsorted(t[timed], t[rows[-1]] + max_gap, side="right")
            band = timed[lo:hi]
            close = np.abs(t[rows, None] - t[None, band]) <= max_gap
            edges.append(_linked(x, rows, band, similarity, close))
            edges.append(_linked(x, rows, others, similarity))
    untimed = np.flatnonzero(clock < 0)
    for start in range(0, len(untimed), BLOCK):
        edges.append(_linked(x, untimed[start : start + BLOCK], untimed, similarity))
    i = np.concatenate([e[0] for e in edges] or [np.zeros(0, int)])
    j = np.concatenate([e[1] for e in edges] or [np.zeros(0, int)])
    return _components(n, i, j)


def _linked(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, similarity: float, mask=None):
    """(i, j) of the pairs of ``rows`` x ``cols`` alike in content (and within ``mask`` when given)."""
    if not len(rows) or not len(cols):
        return np.zeros(0, int), np.zeros(0, int)
    linked = x[rows] @ x[cols].T >= similarity
    if mask is not None:
        linked &= mask
    i, j = np.nonzero(linked)
    return rows[i], cols[j]


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components numbered in order of their first frame."""
    graph = sparse.coo_matrix((np.ones(len(i), bool), (i.astype(int), j.astype(int))), shape=(n, n))
    _, labels = csgraph.connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    renumber = np.empty(len(first), dtype=np.int64)
    renumber[labels[np.sort(first)]] = np.arange(len(first))
    return renumber[labels]


def quality(score: float, highlights: float, shadows: float) -> float:
    """The aesthetic score less a penalty for clipping beyond the flag limits."""
    from .technical import HIGHLIGHT_LIMIT, SHADOW_LIMIT

    excess = max(0.0, highlights - HIGHLIGHT_LIMIT) + max(0.0, shadows - SHADOW_LIMIT)
    return score - CLIPPING_PENALTY * excess


def rank_group(
    scores: Sequence[float],
    sharpness: Sequence[float],
    highlights: Sequence[float],
    shadows: Sequence[float],
) -> tuple[list[int], list[bool]]:
    """Order of one group's frames, best first, and which frames are soft.

    Sharp frames (at least :data:`SOFT_RATIO` of the sharpest) come before soft ones whatever their
    scores; within each, higher quality first.
    """
    sharp = np.asarray(sharpness, dtype=np.float64)
    soft = sharp < SOFT_RATIO * sharp.max() if len(sharp) else np.zeros(0, bool)
    value = [quality(s, h, d) for s, h, d in zip(scores, highlights, shadows, strict=True)]
    order = sorted(range(len(value)), key=lambda i: (bool(soft[i]), -value[i], i))
    return order, [bool(v) for v in soft]
