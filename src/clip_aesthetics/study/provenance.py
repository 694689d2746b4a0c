"""What an artefact was made from, so that a rerun reuses it only when nothing that matters has changed.

``reproduce`` keeps its scorer files, feature caches and fine-tuning runs between runs. Each one gets a
sidecar ``NAME.provenance.json`` recording everything its result depends on: the dataset's ids, the split
(kind, seed, digests of the train/val/test ids), the backbone as the user gave it plus the weights' content
identity, the prompts, and every setting that changes the numbers. An artefact is reused only when the
recorded provenance equals the wanted one exactly; otherwise it is moved into ``stale/`` (nothing is
deleted: a fine-tuning run may be hours of GPU time) and rebuilt, and the log says what changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..features.cache import _first_difference as first_difference
from ..fileio import atomic_write_json

SUFFIX = ".provenance.json"
STALE_FOLDER = "stale"


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the sorted ids, one per line: the identity of a dataset's records."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(ids)).encode("utf-8", "surrogateescape")).hexdigest()


def texts_digest(texts: Iterable[str]) -> str:
    """sha256 of texts in order (prompt lists are long: the sidecar keeps their digest)."""
    return "sha256:" + hashlib.sha256(json.dumps(list(texts)).encode("utf-8")).hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _normalised(data: dict) -> dict:
    return json.loads(json.dumps(data))  # tuples -> lists, as read back from the file


def recorded(path: Path) -> dict | None:
    """The provenance recorded for ``path``, or None (none recorded, or unreadable)."""
    try:
        return json.loads(sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def record(path: Path, provenance: dict) -> None:
    """Record what ``path`` is (being) made from."""
    atomic_write_json(sidecar(path), _normalised(provenance))


def reusable(path: Path, wanted: dict, log: Callable[[str], None]) -> bool:
    """True when ``path`` exists and was made from exactly ``wanted``.

    Otherwise an existing ``path`` (and its sidecar) moves to ``stale/NAME.<time>`` beside it, the log says
    what differs, and False is returned: the caller rebuilds.
    """
    if not path.exists():
        return False
    old = recorded(path)
    if old == _normalised(wanted):
        return True
    why = "no provenance recorded" if old is None else first_difference(old, _normalised(wanted))
    move_aside(path, why, log)
    return False


def move_aside(path: Path, why: str, log: Callable[[str], None]) -> Path:
    """Move ``path`` (and its sidecar) to ``stale/NAME.<time>`` beside it, never deleting; log why."""
    stale = path.parent / STALE_FOLDER / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    stale.parent.mkdir(exist_ok=True)
    shutil.move(path, stale)
    if sidecar(path).exists():
        shutil.move(sidecar(path), sidecar(stale))
    log(f"{path.name} was made from another setup ({why}): moved to {stale}; rebuilding")
    return stale
