"""Culling a shoot: group bursts, pick each group's best frame, rate by percentile, write sidecars."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from .grouping import DEFAULT_MAX_GAP, DEFAULT_SIMILARITY, group_frames, quality, rank_group
from .shoot import Shoot
from .technical import Technical
from .xmp import PICK_REJECTED, Labels, XmpError, read_labels, write_labels

FLAWED_MAX_STARS = 2  # a soft or badly clipped frame is proposed at most this many stars


def percentile_stars(scores: np.ndarray) -> np.ndarray:
    """1-5 stars by score quintile within the shoot (ties share a percentile): the top fifth gets 5."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    percentile = (rankdata(scores, method="average") - 0.5) / len(scores)
    return np.clip(1 + np.floor(5 * percentile), 1, 5).astype(np.int64)


def capped_stars(stars: int, flags: list[str]) -> int:
    """Stars that respect the technical checks: soft (in its burst or outright) or badly clipped frames
    never get more than :data:`FLAWED_MAX_STARS`, however well the scorer likes their content."""
    flawed = {"soft", "blurred", "blown", "crushed"} & set(flags)
    return min(stars, FLAWED_MAX_STARS) if flawed else stars


def shoot_groups(
    shoot: Shoot, *, similarity: float = DEFAULT_SIMILARITY, max_gap: float = DEFAULT_MAX_GAP
) -> np.ndarray:
    """The group of every frame of ``shoot`` (independent of the scorer, so computed once per shoot)."""
    times = [f["time"] for f in shoot.frames]
    clocks = [f["time_source"] for f in shoot.frames]
    tones = [f.get("tone") for f in shoot.frames]  # None in caches from before tone signatures
    return group_frames(shoot.features, times, clocks, similarity=similarity, max_gap=max_gap, tones=tones)


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
    raw = shoot.target(i) if frame.get("raw") else None
    return {
        "path": str(shoot.path(i)),
        "group": group,
        "group_size": size,
        "best": place == 0,
        "rank_in_group": place + 1,
        "score": float(score),
        "stars": capped_stars(int(stars), flags),
        "sharpness": round(frame["sharpness"], 3),
        "highlights_clipped": round(frame["highlights"], 5),
        "shadows_clipped": round(frame["shadows"], 5),
        "flags": ";".join(flags),
        "capture_time": frame["time_text"],
        "capture_source": frame["time_source"],
        "raw": "" if raw is None else str(raw),  # the RAW file of a RAW+JPEG pair (rated in its sidecar)
    }


@dataclass
class SidecarReport:
    written: int = 0  # sidecars whose rating the tool proposed (new, or its own earlier proposal)
    kept: int = 0  # photos the photographer had rated, rejected or labelled: their fields are untouched
    replaced: int = 0  # photographer's ratings replaced on request (``overwrite``)
    errors: list[dict] = field(default_factory=list)


def proposal(row: dict, model: str) -> dict:
    """The tool's fields for one photo (``clipaes:*``): what it proposes, never mistaken for a decision."""
    fields = {"Score": "score", "Stars": "stars", "Group": "group", "Best": "best", "Flags": "flags"}
    return {name: row[key] for name, key in fields.items() if key in row} | (
        {"Model": model} if model else {}
    )


def write_sidecars(
    rows: list[dict], *, reject_duplicates: bool = False, overwrite: bool = False, model: str = ""
) -> SidecarReport:
    """Write each photo's proposal, and its stars (or a reject, for non-best frames with
    ``reject_duplicates``) where the photographer has made no decision.

    A rating or pick label the photographer set (in the sidecar or embedded in the photo) is kept, byte
    for byte, unless ``overwrite``; the tool's own earlier ratings (marked ``clipaes:Rating``) are replaced.
    A RAW+JPEG pair is written to the RAW file's sidecar. A sidecar that cannot be read or written is
    reported and the rest go on.
    """
    report = SidecarReport()
    for row in rows:
        target = row.get("raw") or row["path"]
        try:
            labels = read_labels(target, photo=row["path"])
            proposed = proposal(row, model)
            if labels.decided and not overwrite:
                write_labels(target, labels, proposal=proposed, ratings=False)
                report.kept += 1
                continue
            duplicate = reject_duplicates and not row["best"]
            new = Labels(-1, PICK_REJECTED) if duplicate else Labels(row["stars"], None)
            write_labels(target, new, machine=True, proposal=proposed)
            if labels.decided:
                report.replaced += 1
            else:
                report.written += 1
        except (XmpError, OSError) as exc:
            report.errors.append({"path": target, "error": str(exc).splitlines()[0]})
    return report
