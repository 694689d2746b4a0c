"""Bursts and near-duplicates, and the best frame of each.

Two frames are linked when they are alike in content (cosine similarity of their image embeddings at least
``similarity``) and, when both have capture times from the same clock, taken at most ``max_gap`` seconds
apart. Groups are the connected components of those links, so a burst of 20 frames is one group even when
its first and last frames are further apart than ``max_gap``. Frames without comparable times are linked
by content alone.

The best frame of a group is chosen from the aesthetic score after the technical checks: frames whose
sharpness is below :data:`SOFT_RATIO` of the group's sharpest well-exposed frame are "soft" (motion blur,
missed focus) and, like badly clipped frames, can only win when every frame of the group is; clipped
highlights and shadows lower a frame's quality. Frames of one burst whose tone signatures match are linked
even when their embeddings are not alike: an over-exposed frame stays in its burst.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

DEFAULT_SIMILARITY = 0.92
DEFAULT_MAX_GAP = 10.0  # seconds between linked frames
SOFT_RATIO = 0.5
TONE_LINK = 0.8  # tone-signature correlation linking frames of one burst (see technical.tone_signature)
CLIPPING_PENALTY = 2.0  # score points lost per unit fraction of clipped pixels beyond the limits
BLOCK = 512  # rows of the similarity matrix computed at once
TILE = 2048  # columns per tile: a tile holds at most BLOCK x TILE links (1 million)


def group_frames(
    embeddings: np.ndarray,
    times: Sequence[float | None] | None = None,
    sources: Sequence[str | None] | None = None,
    *,
    similarity: float = DEFAULT_SIMILARITY,
    max_gap: float = DEFAULT_MAX_GAP,
    tones: Sequence[Sequence[float] | None] | None = None,
    tone_link: float = TONE_LINK,
) -> np.ndarray:
    """Group index (0..G-1, in order of each group's first frame) for every frame.

    Memory grows linearly with the frames: the similarity matrix is computed in tiles of
    :data:`BLOCK` x :data:`TILE` pairs, each tile's links are merged into a union-find at once, and a tile
    whose frames are all in one group already is skipped (a shoot of 50,000 alike frames is one group after
    its first row of tiles).

    Args:
        embeddings: (N, D) image embeddings (normalised here).
        times: capture times in seconds (None or NaN where unknown); None: content alone decides.
        sources: the clock each time comes from (``exif``, ``file``); times are only compared within one.
        similarity: the cosine similarity from which two frames count as alike.
        max_gap: the largest time between two linked frames, in seconds.
        tones: each frame's tone signature (:func:`~clip_aesthetics.culling.technical.tone_signature`;
            None where unknown): frames of one burst (same clock, within ``max_gap``) whose signatures
            correlate at least ``tone_link`` are linked too, so an over- or under-exposed frame, whose
            embedding moves away, stays in its burst.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    z = _standardised(tones, n)
    t = np.full(n, np.nan) if times is None else np.array([np.nan if v is None else v for v in times], float)
    names = ["" if sources is None or s is None else s for s in (sources or [None] * n)]
    clock = np.unique(names, return_inverse=True)[1].reshape(n) if n else np.zeros(0, int)
    clock[np.isnan(t)] = -1  # no time: compared with every frame by content alone
    groups = _UnionFind(n)
    for code in np.unique(clock[clock >= 0]):
        timed = np.flatnonzero(clock == code)
        timed = timed[np.argsort(t[timed], kind="stable")]
        others = np.flatnonzero(clock != code)  # other clocks and untimed frames: content decides
        for start in range(0, len(timed), BLOCK):
            rows = timed[start : start + BLOCK]
            # frames sorted by time: only a band of columns can be within max_gap of this block
            lo = np.searchsorted(t[timed], t[rows[0]] - max_gap, side="left")
            hi = np.searchsorted(t[timed], t[rows[-1]] + max_gap, side="right")
            _link(groups, x, rows, timed[lo:hi], similarity, t, max_gap, (z, tone_link))
            _link(groups, x, rows, others, similarity)
    untimed = np.flatnonzero(clock < 0)
    for start in range(0, len(untimed), BLOCK):
        _link(groups, x, untimed[start : start + BLOCK], untimed, similarity)
    return groups.labels()


def _standardised(tones, n: int) -> np.ndarray | None:
    """Signatures centred and scaled so that a dot product is their correlation; zeros where unknown."""
    if tones is None or all(t is None for t in tones):
        return None
    width = len(next(t for t in tones if t is not None))
    z = np.zeros((n, width), np.float32)
    for i, tone in enumerate(tones):
        if tone is not None and len(tone) == width:
            centred = np.asarray(tone, np.float64) - np.mean(tone)
            z[i] = centred / max(float(np.linalg.norm(centred)), 1e-12)
    return z


class _UnionFind:
    """Disjoint sets over frames, merged a tile of links at a time (vectorised)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def roots(self, items: np.ndarray) -> np.ndarray:
        found = self.parent[items]
        while True:  # path halving, the whole array at once
            up = self.parent[found]
            if np.array_equal(up, found):
                return found
            self.parent[found] = self.parent[up]
            found = up

    def merge(self, i: np.ndarray, j: np.ndarray) -> None:
        """Join the sets of each pair (i[k], j[k])."""
        a, b = self.roots(i), self.roots(j)
        pairs = np.unique(np.stack([a, b])[:, a != b], axis=1)
        if not pairs.shape[1]:
            return
        nodes, local = np.unique(pairs, return_inverse=True)
        local = local.reshape(2, -1)
        graph = sparse.coo_matrix(
            (np.ones(local.shape[1], bool), (local[0], local[1])), shape=(len(nodes),) * 2
        )
        _, component = csgraph.connected_components(graph, directed=False)
        leader = np.full(component.max() + 1, len(self.parent))
        np.minimum.at(leader, component, nodes)
        self.parent[nodes] = leader[component]

    def labels(self) -> np.ndarray:
        """Groups numbered in order of their first frame."""
        roots = self.roots(np.arange(len(self.parent)))
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))  # group k's rank by first frame
        return order[inverse.reshape(-1)].astype(np.int64)


def _link(groups: _UnionFind, x, rows, cols, similarity, t=None, max_gap=None, tone=(None, 1.0)) -> None:
    """Merge the pairs of ``rows`` x ``cols`` alike in content (and, with ``t``, within ``max_gap``).

    A tile's links are reduced to its connected components first, so the union-find sees at most one
    link per frame of the tile, however many pairs are alike."""
    for start in range(0, len(cols), TILE):
        part = cols[start : start + TILE]
        if not len(rows) or not len(part):
            continue
        roots = groups.roots(np.concatenate([rows, part]))
        if (roots == roots[0]).all():
            continue  # one group already: nothing to learn from this tile
        linked = x[rows] @ x[part].T >= similarity
        if t is not None:
            z, tone_link = tone
            if z is not None:  # one burst: alike in layout of light and dark counts too
                linked |= z[rows] @ z[part].T >= tone_link
            linked &= np.abs(t[rows, None] - t[None, part]) <= max_gap
        i, j = np.nonzero(linked)
        size = len(rows) + len(part)
        tile = sparse.coo_matrix((np.ones(len(i), bool), (i, j + len(rows))), shape=(size, size))
        del linked, i, j
        _, component = csgraph.connected_components(tile, directed=False)
        _, first = np.unique(component, return_index=True)
        groups.merge(roots, roots[first[component]])


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

    Softness is judged against the sharpest well-exposed frame (at least :data:`SOFT_RATIO` of it): a
    blown-out frame's hard edges raise the Laplacian (2 stops over doubles it on a real photograph), so it
    is no yardstick. Sharp, well-exposed frames come first whatever their scores; then the badly clipped and
    the soft ones; within each, higher quality first.
    """
    from .technical import BLOWN_LIMIT, CRUSHED_LIMIT

    sharp = np.asarray(sharpness, dtype=np.float64)
    clipped = (np.asarray(highlights, float) > BLOWN_LIMIT) | (np.asarray(shadows, float) > CRUSHED_LIMIT)
    reference = sharp[~clipped] if (~clipped).any() else sharp
    soft = sharp < SOFT_RATIO * reference.max() if len(sharp) else np.zeros(0, bool)
    value = [quality(s, h, d) for s, h, d in zip(scores, highlights, shadows, strict=True)]
    order = sorted(range(len(value)), key=lambda i: (bool(soft[i] or clipped[i]), -value[i], i))
    return order, [bool(v) for v in soft]
