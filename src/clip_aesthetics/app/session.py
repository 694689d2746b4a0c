"""The state behind the review page: the analysed shoot, its ranking, the labels in the sidecars.

The shoot is analysed in a background thread (progress for the page's bar); every label change is written
to the photo's sidecar before the request returns, so closing the tab or killing the server loses nothing,
and a new session reads the labels back from the sidecars.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..culling.cull import cull_rows, shoot_groups
from ..culling.shoot import Shoot, analyse_folder, inside
from ..culling.taste import fit_taste, stars_of, taste_scorer
from ..culling.xmp import Labels, XmpError, picked, read_labels, rejected, unflagged, with_stars, write_labels
from ..scorers.registry import save_scorer
from .why import occlusion_map

ACTIONS = ("stars", "pick", "reject", "unflag")


class ReviewSession:
    """One shoot under review with one scorer (the generic one, until a taste is learned)."""

    def __init__(
        self,
        folder: str | Path,
        scorer,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        precision: str = "auto",
    ) -> None:
        self.root = Path(folder)
        self.generic = self.scorer = scorer
        self.options = {"batch_size": batch_size, "workers": workers, "precision": precision}
        self.status = {"state": "starting", "done": 0, "total": 0, "error": None}
        self.shoot: Shoot | None = None
        self.labels: dict[str, Labels] = {}
        self.label_errors: dict[str, str] = {}
        self.rows: list[dict] = []
        self.taste: dict | None = None
        self.index: dict[str, int] = {}  # rel -> frame
        self.rel_of: dict[str, str] = {}  # the path in a ranked row -> rel
        self.groups = np.zeros(0, dtype=np.int64)
        self.lock = threading.RLock()
        self._why: dict[tuple[str, int], dict] = {}

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._analyse, name="analyse-shoot", daemon=True)
        thread.start()
        return thread

    def _progress(self, done: int, total: int) -> None:
        self.status.update(state="analysing", done=done, total=total)

    def _analyse(self) -> None:
        try:
            shoot = analyse_folder(
                self.root, self.scorer.backbone, on_progress=self._progress, **self.options
            )
            labels, errors = {}, {}
            for i, frame in enumerate(shoot.frames):
                try:
                    labels[frame["rel"]] = read_labels(shoot.target(i), photo=shoot.path(i))
                except XmpError as exc:
                    labels[frame["rel"]], errors[frame["rel"]] = Labels(), str(exc)
            with self.lock:
                self.shoot, self.labels, self.label_errors = shoot, labels, errors
                self.index = {f["rel"]: i for i, f in enumerate(shoot.frames)}
                self.rel_of = {str(shoot.path(i)): f["rel"] for i, f in enumerate(shoot.frames)}
                self.groups = shoot_groups(shoot)  # depends on content and time only: once per shoot
                self._rank()
            self.status.update(state="ready", done=self.status["total"] or len(shoot.frames))
        except Exception as exc:  # shown on the page instead of a progress bar that never ends
            self.status.update(state="failed", error=f"{type(exc).__name__}: {exc}")

    def _scores(self, scorer) -> np.ndarray:
        return scorer.score_features(torch.from_numpy(self.shoot.features)).score.numpy().astype(float)

    def _rank(self) -> None:
        scores = self._scores(self.scorer)
        self.rows = cull_rows(self.shoot, scores, groups=self.groups) if self.shoot.frames else []
        self._why.clear()

    # --- what the page shows -------------------------------------------------------------------------
    def photos(self) -> dict:
        """Groups in rank order, each frame with its score, checks and labels."""
        with self.lock:
            groups: list[dict] = []
            for row in self.rows:
                rel = self.rel_of[row["path"]]
                frame = self.shoot.frames[self.index[rel]]
                if row["rank_in_group"] == 1:
                    groups.append({"group": row["group"], "frames": []})
                groups[-1]["frames"].append(
                    {
                        "path": rel,
                        "thumb": frame["thumb"],
                        "score": round(row["score"], 4),
                        "best": row["best"],
                        "sharpness": row["sharpness"],
                        "flags": [f for f in row["flags"].split(";") if f],
                        "capture_time": row["capture_time"],
                        **self.labels[rel].to_dict(),
                        "sidecar_error": self.label_errors.get(rel),
                    }
                )
            errors = [{"path": e["rel"], "error": e["error"]} for e in self.shoot.errors]
            return {"groups": groups, "errors": errors, "scorer": self.scorer.method, "taste": self.taste}

    def frame(self, rel: str) -> dict | None:
        """The analysed frame ``rel`` names, if it is one of the shoot's photos and still inside it."""
        with self.lock:
            if self.shoot is None or rel not in self.index:
                return None
            if not inside(self.root, self.root / rel):  # replaced by a link leading out since the scan
                return None
            return self.shoot.frames[self.index[rel]]

    # --- review --------------------------------------------------------------------------------------
    def label(self, rel: str, action: str, stars: int | None = None) -> dict:
        """Apply a review key to ``rel`` and write its sidecar at once."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r} (choose {', '.join(ACTIONS)})")
        with self.lock:
            if self.frame(rel) is None:
                raise KeyError(rel)
            index = self.index[rel]
            target = self.shoot.target(index)  # of a RAW+JPEG pair, the RAW file's sidecar
            current = read_labels(target, photo=self.shoot.path(index))  # may have changed meanwhile
            if action == "stars":
                new = with_stars(current, int(stars if stars is not None else -1))
            else:
                new = {"pick": picked, "reject": rejected, "unflag": unflagged}[action](current)
            write_labels(target, new)  # a key press is the photographer's decision: no machine mark
            self.labels[rel] = new
            self.label_errors.pop(rel, None)
            return {"path": rel, **new.to_dict()}

    def learn_taste(self) -> dict:
        """Fit the personal head on the ratings so far, switch to it and re-rank."""
        with self.lock:
            rated = [(i, stars_of(self.labels[f["rel"]])) for i, f in enumerate(self.shoot.frames)]
            rated = [(i, s) for i, s in rated if s is not None]
            rows = [i for i, _ in rated]
            features = self.shoot.features[rows]
            generic = self._scores(self.generic)[rows]
            fit = fit_taste(features, generic, np.array([s for _, s in rated], dtype=float))
            self.scorer = taste_scorer(self.generic, fit)
            save_scorer(self.scorer, self.shoot.cache / "taste.safetensors", self.scorer.tensors())
            self.taste = {**fit.summary(), "file": str(self.shoot.cache / "taste.safetensors")}
            self._rank()
            return self.taste

    def why(self, rel: str) -> dict:
        """The occlusion heat map of ``rel`` under the current scorer (computed once per scorer)."""
        with self.lock:
            if self.frame(rel) is None:
                raise KeyError(rel)
            key = (rel, id(self.scorer))
            if key not in self._why:
                self._why[key] = occlusion_map(self.scorer, self.root / rel, self.options["precision"])
            return self._why[key]
