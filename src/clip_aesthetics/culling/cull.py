"""Culling a shoot: group bursts, pick each group's best frame, rate by percentile, write sidecars."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from .grouping import DEFAULT_MAX_GAP, DEFAULT_SIMILARITY, group_frames, quality, rank_group
from .shoot import Shoot
from .technical import Technical
from .xmp import Labels, XmpError, read_labels, rejected, with_stars, write_labels


def percentile_stars(scores: np.ndarray) -> np.ndarray:
    """1-5 stars by score quintile within the shoot (ties share a percentile): the top fifth gets 5."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    percentile = (rankdata(scores, method="average") - 0.5) / len(scores)
    return np.clip(1 + np.floor(5 * percentile), 1, 5).astype(np.int64)


def shoot_groups(
    shoot: Shoot, *, similarity: float = DEFAULT_SIMILARITY, max_gap: float = DEFAULT_MAX_GAP
) -> np.ndarray:
    """The group of every frame of ``shoot`` (independent of the scorer, so computed once per shoot)."""
    times = [f["time"] for f in shoot.frames]
    clocks = [f["time_source"] for f in shoot.frames]
    return group_frames(shoot.features, times, clocks, similarity=similarity, max_gap=max_gap)


def cull_rows(
    shoot: Shoot,
    scores: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    similarity: float = DEFAULT_SIMILARITY,
    max_gap: float = DEFAULT_MAX_GAP,
) -> list[dict]:
    """One row per frame: groups ranked by their best frame, each group's frames best first."""
    frames = shoot.frames
    if groups is None:
        groups = shoot_groups(shoot, similarity=similarity, max_gap=max_gap)
    stars = percentile_stars(scores)
    ranked = []
    by_group = np.argsort(groups, kind="stable")  # each group's frames together, in folder order
    for members in np.split(by_group, np.flatnonzero(np.diff(groups[by_group])) + 1) if len(frames) else []:
        checks = [[frames[i][key] for i in members] for key in ("sharpness", "highlights", "shadows")]
        order, soft = rank_group(scores[members], *checks)
        best = members[order[0]]
        ranked.append(
            (quality(scores[best], frames[best]["highlights"], frames[best]["shadows"]), members, order, soft)
        )
    ranked.sort(key=lambda item: -item[0])
    rows = []
    for number, (_, members, order, soft) in enumerate(ranked, start=1):
        for place, k in enumerate(order):
            i = members[k]
            rows.append(_row(shoot, i, number, place, len(members), bool(soft[k]), scores[i], stars[i]))
    return rows


def _row(
    shoot: Shoot, i: int, group: int, place: int, size: int, soft: bool, score: float, stars: int
) -> dict:
    frame = shoot.frames[i]
    flags = (["soft"] if soft else []) + Technical(
        frame["sharpness"], frame["highlights"], frame["shadows"]
    ).flags
    return {
        "path": str(shoot.path(i)),
        "group": group,
        "group_size": size,
        "best": place == 0,
        "rank_in_group": place + 1,
        "score": float(score),
        "stars": int(stars),
        "sharpness": round(frame["sharpness"], 3),
        "highlights_clipped": round(frame["highlights"], 5),
        "shadows_clipped": round(frame["shadows"], 5),
        "flags": ";".join(flags),
        "capture_time": frame["time_text"],
        "capture_source": frame["time_source"],
    }


@dataclass
class SidecarReport:
    written: int = 0
    kept: int = 0  # photos whose sidecar already had a rating the photographer set
    errors: list[dict] = field(default_factory=list)


def write_sidecars(
    rows: list[dict], *, reject_duplicates: bool = False, overwrite: bool = False
) -> SidecarReport:
    """Write each frame's stars (or a reject, for non-best frames with ``reject_duplicates``).

    A rating already in a sidecar (stars or a reject) is the photographer's and is kept unless
    ``overwrite``; a sidecar that cannot be read or written is reported and the rest go on.
    """
    report = SidecarReport()
    for row in rows:
        try:
            labels = read_labels(row["path"])
            if labels.rating not in (None, 0) and not overwrite:
                report.kept += 1
                continue
            if reject_duplicates and not row["best"]:
                new = rejected(labels)
            else:
                new = with_stars(Labels(None, labels.pick), row["stars"])
            write_labels(row["path"], new)
            report.written += 1
        except (XmpError, OSError) as exc:
            report.errors.append({"path": row["path"], "error": str(exc).splitlines()[0]})
    return report
