"""Exporting the picks of a culled shoot: copied (or moved) with their RAW files and sidecars.

A photo is a pick when it is not rejected and either the photographer picked it (``digiKam:PickLabel``
accepted) or it has at least ``min_stars``: the photographer's own stars where they rated it, else the
stars the cull proposes, which only the best frame of each burst can count on. Each pick travels with its
RAW file (of a RAW+JPEG pair) and every sidecar of either, keeping its path inside the shoot. Nothing at
the destination is ever overwritten: such a file is reported and the rest go on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .xmp import Labels, XmpError, read_labels, sidecar_path


@dataclass
class ExportReport:
    picks: int = 0
    files: int = 0
    errors: list[str] = field(default_factory=list)


def is_pick(row: dict, labels: Labels, min_stars: int) -> bool:
    if labels.rejected and not labels.machine:
        return False
    if labels.picked:
        return True
    if labels.decided:  # the photographer rated it: their stars decide
        return labels.stars >= min_stars
    return bool(row["best"]) and row["stars"] >= min_stars


def companions(photo: Path, raw: Path | None) -> list[Path]:
    """The files that travel with a pick: the photo, its RAW file and the sidecars of both."""
    files = [photo] + ([raw] if raw else [])
    files += [sidecar_path(f) for f in list(files) if sidecar_path(f).is_file()]
    return list(dict.fromkeys(files))


def export_picks(
    rows: list[dict], root: Path, destination: Path, *, move: bool = False, min_stars: int = 4
) -> ExportReport:
    """Copy (or move) the picks among ``rows`` (from :func:`~.cull.cull_rows`) to ``destination``."""
    report = ExportReport()
    root, destination = Path(root), Path(destination)
    for row in rows:
        photo, raw = Path(row["path"]), Path(row["raw"]) if row.get("raw") else None
        try:
            labels = read_labels(raw or photo, photo=photo)
        except XmpError as exc:
            report.errors.append(f"{exc} (not exported)")
            continue
        if not is_pick(row, labels, min_stars):
            continue
        report.picks += 1
        for source in companions(photo, raw):
            target = destination / source.relative_to(root)
            if target.exists():
                report.errors.append(f"{target}: already exists; not overwritten")
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.move if move else shutil.copy2)(os.fspath(source), os.fspath(target))
                report.files += 1
            except OSError as exc:
                report.errors.append(f"{source}: not {'moved' if move else 'copied'} ({exc.strerror})")
    return report
