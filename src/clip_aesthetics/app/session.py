"""The state behind the review page: the analysed shoot, its ranking, the labels in the sidecars.

The page is served at once; a background thread loads the scorer (the model, and its prompts encoded once
per model), then analyses the shoot, with its progress on the page. Every label change is written to the
photo's sidecar before the request returns, so closing the tab or killing the server loses nothing, and a
new session reads the labels back from the sidecars. Label changes can be undone and redone (the session
keeps what each sidecar held before). A taste learned here is saved beside the shoot's cache, reloaded by
the next session, and ranks the photos only when its cross-validated SRCC beats the generic score's.

Heavy modules (torch, the culling pipeline) are imported in the background thread, not at import time,
so that the server answers within a second or two of launch.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

import numpy as np

from ..culling.xmp import (
    Labels,
    XmpError,
    picked,
    read_labels,
    read_sidecar,
    rejected,
    unflagged,
    with_stars,
    write_labels,
)
from ..fileio import name_from_text, text_name

ACTIONS = ("stars", "pick", "reject", "unflag")
TASTE_FILE = "taste.safetensors"


class NotReady(RuntimeError):
    """The shoot is still being analysed."""


class ReviewSession:
    """One shoot under review with one scorer (the generic one, until a taste is learned and beats it).

    ``scorer`` is a scorer, or a function that builds one (called in the background thread: loading a
    model and encoding its prompts can take minutes on a first run).
    """

    def __init__(
        self,
        folder: str | Path,
        scorer,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str = "auto",
        export_to: str | Path | None = None,
    ) -> None:
        self.root = Path(folder)
        self.export_to = None if export_to is None else Path(export_to)  # fixed at launch, never by a request
        self._build = scorer if callable(scorer) and not hasattr(scorer, "score_features") else None
        self.generic = self.scorer = None if self._build else scorer
        self.options = {"batch_size": batch_size, "workers": workers, "precision": precision}
        self.status = {"state": "starting", "phase": "starting", "done": 0, "total": 0, "error": None}
        self.shoot = None
        self.partial = None  # the photos analysed so far, until the shoot is
        self.partial_index: dict[str, int] = {}
        self._seen: dict[str, Labels] = {}  # labels of the photos shown while analysing
        self.labels: dict[str, Labels] = {}
        self.label_errors: dict[str, str] = {}
        self.rows: list[dict] = []
        self.taste: dict | None = None
        self.index: dict[str, int] = {}  # rel -> frame
        self.rel_of: dict[str, str] = {}  # the path in a ranked row -> rel
        self.groups = np.zeros(0, dtype=np.int64)
        self.lock = threading.RLock()
        self._why: dict[tuple[str, int], dict] = {}
        self._undo: list[tuple[str, Labels, Labels]] = []  # (rel, before, after) of each key press
        self._redo: list[tuple[str, Labels, Labels]] = []

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._analyse, name="analyse-shoot", daemon=True)
        thread.start()
        return thread

    def _progress(self, done: int, total: int) -> None:
        self.status.update(
            state="analysing", phase=f"analysing {done} of {total} photos", done=done, total=total
        )

    def _analyse(self) -> None:
        try:
            if self.scorer is None:
                self.status.update(state="loading", phase="loading the model and encoding its prompts")
                self.generic = self.scorer = self._build()
            from ..culling.cull import shoot_groups
            from ..culling.shoot import analyse_folder

            self.status.update(state="analysing", phase="looking for photos")
            shoot = analyse_folder(
                self.root,
                self.scorer.backbone,
                on_progress=self._progress,
                on_partial=self._partial,
                **self.options,
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
                self._reload_taste()
                self._rank()
            self.status.update(state="ready", phase="ready", done=self.status["total"] or len(shoot.frames))
        except Exception as exc:  # shown on the page instead of a progress bar that never ends
            self.status.update(state="failed", phase="failed", error=f"{type(exc).__name__}: {exc}")
            print(f"error: the analysis failed: {self.status['error']}", file=sys.stderr, flush=True)

    def _partial(self, shoot) -> None:
        """The photos analysed so far: shown (by score, not yet grouped) while the rest is analysed."""
        with self.lock:
            self.partial = shoot
            self.partial_index = {f["rel"]: i for i, f in enumerate(shoot.frames)}

    def _provisional(self) -> dict:
        """The page's list while the shoot is analysed: every photo so far, by score, each on its own."""
        shoot = self.partial
        scores = self._scores(self.scorer, shoot)
        groups = []
        for i in np.argsort(-scores, kind="stable"):
            frame = shoot.frames[i]
            labels = self._seen.get(frame["rel"])
            if labels is None:  # read once: the page asks every few seconds
                labels = Labels()
                with contextlib.suppress(XmpError):
                    labels = read_labels(shoot.target(i), photo=shoot.path(i))
                self._seen[frame["rel"]] = labels
            groups.append(
                {
                    "group": len(groups) + 1,
                    "stack": -1 - int(i),
                    "frames": [
                        {
                            "path": text_name(frame["rel"]),
                            "raw": None,
                            "thumb": frame["thumb"],
                            "score": round(float(scores[i]), 4),
                            "proposed_stars": 0,
                            "best": True,
                            "sharpness": round(frame["sharpness"], 3),
                            "flags": [],
                            "capture_time": frame["time_text"],
                            **labels.to_dict(),
                            "sidecar_error": None,
                        }
                    ],
                }
            )
        errors = [{"path": text_name(e["rel"]), "error": text_name(e["error"])} for e in shoot.errors]
        return {
            "groups": groups,
            "errors": errors,
            "sidecar_errors": [],
            "scorer": self.scorer.method,
            "taste": None,
            "provisional": True,
        }

    def _scores(self, scorer, shoot=None) -> np.ndarray:
        import torch

        features = (shoot or self.shoot).features
        return scorer.score_features(torch.from_numpy(features)).score.numpy().astype(float)

    def _rank(self) -> None:
        from ..culling.cull import cull_rows

        scores = self._scores(self.scorer)
        self.rows = cull_rows(self.shoot, scores, groups=self.groups) if self.shoot.frames else []
        self._why.clear()

    def _ready(self):
        if self.shoot is None:
            raise NotReady("the shoot is still being analysed")
        return self.shoot

    # --- what the page shows -------------------------------------------------------------------------
    def photos(self) -> dict:
        """Groups in rank order, each frame with its score, checks and labels; files and sidecars that
        could not be read."""
        with self.lock:
            if self.shoot is None and self.partial is not None and self.scorer is not None:
                return self._provisional()
            shoot = self._ready()
            groups: list[dict] = []
            for row in self.rows:
                rel = self.rel_of[row["path"]]
                index = self.index[rel]
                frame = shoot.frames[index]
                if row["rank_in_group"] == 1:  # a stack's id: its burst, whatever the ranking
                    groups.append({"group": row["group"], "stack": int(self.groups[index]), "frames": []})
                groups[-1]["frames"].append(
                    {
                        "path": text_name(rel),
                        "raw": frame.get("raw") and text_name(frame["raw"]),
                        "thumb": frame["thumb"],
                        "score": round(row["score"], 4),
                        "proposed_stars": row["stars"],
                        "best": row["best"],
                        "sharpness": row["sharpness"],
                        "flags": [f for f in row["flags"].split(";") if f],
                        "capture_time": row["capture_time"],
                        **self.labels[rel].to_dict(),
                        "sidecar_error": self.label_errors.get(rel),
                    }
                )
            errors = [{"path": text_name(e["rel"]), "error": text_name(e["error"])} for e in shoot.errors]
            sidecars = [
                {"path": text_name(rel), "error": text_name(error)}
                for rel, error in sorted(self.label_errors.items())
            ]
            return {
                "groups": groups,
                "errors": errors,
                "sidecar_errors": sidecars,
                "scorer": self.scorer.method,
                "taste": self.taste,
                "provisional": False,
            }

    def _visible(self):
        """``(shoot, index)`` the page sees: the analysed shoot, else the photos analysed so far (thumbnails
        while the rest is analysed), else ``(None, {})``."""
        if self.shoot is not None:
            return self.shoot, self.index
        if self.partial is not None:
            return self.partial, self.partial_index
        return None, {}

    @property
    def cache(self) -> Path:
        """The shoot's cache folder (thumbnails, previews), the same for the partial and the whole shoot."""
        shoot, _ = self._visible()
        if shoot is None:
            raise NotReady("the shoot is not analysed yet")
        return shoot.cache

    def frame(self, rel: str) -> dict | None:
        """The analysed frame ``rel`` names, if it is one of the shoot's photos and still inside it."""
        from ..culling.shoot import inside

        rel = name_from_text(rel)  # the page knows names as text (undecodable bytes as \xNN)
        with self.lock:
            shoot, index = self._visible()
            if (
                shoot is None or rel not in index or not inside(self.root, self.root / rel)
            ):  # e.g. now a link leading out
                return None
            return shoot.frames[index[rel]]

    # --- review --------------------------------------------------------------------------------------
    def label(self, rel: str, action: str, stars: int | None = None) -> dict:
        """Apply a review key to ``rel`` and write its sidecar at once."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r} (choose {', '.join(ACTIONS)})")
        rel = name_from_text(rel)
        with self.lock:
            self._ready()  # the keys work once the shoot is analysed (its stacks and pairs known)
            current = self._current(rel)  # with a rating embedded in the photo, if the sidecar has none
            before = read_sidecar(self.shoot.target(self.index[rel]))  # what undo puts back, marks included
            if action == "stars":
                new = with_stars(current, int(stars if stars is not None else -1))
            else:
                new = {"pick": picked, "reject": rejected, "unflag": unflagged}[action](current)
            result = self._write(rel, new)
            self._undo.append((rel, before, new))
            self._redo.clear()
            return result

    def undo(self) -> dict:
        """Put back what the sidecar held before the last key press (a no-op answer when none is left)."""
        return self._step(self._undo, self._redo, before=True)

    def redo(self) -> dict:
        return self._step(self._redo, self._undo, before=False)

    def _step(self, source: list, target: list, *, before: bool) -> dict:
        with self.lock:
            self._ready()
            if not source:
                return {"path": None}
            rel, old, new = source.pop()
            self._current(rel)  # still one of the shoot's photos
            result = self._write(rel, old if before else new)
            target.append((rel, old, new))
            return result

    def _current(self, rel: str) -> Labels:
        if self.frame(rel) is None:
            raise KeyError(rel)
        index = self.index[rel]
        return read_labels(self.shoot.target(index), photo=self.shoot.path(index))  # may have changed

    def _write(self, rel: str, labels: Labels) -> dict:
        """Write ``labels`` to the sidecar of ``rel`` (of a RAW+JPEG pair, the RAW file's). A key press is
        the photographer's decision, so it carries no machine mark; an undo puts back the mark it had."""
        index = self.index[rel]
        write_labels(self.shoot.target(index), labels, machine=labels.machine)
        labels = read_labels(self.shoot.target(index), photo=self.shoot.path(index))
        self.labels[rel] = labels
        self.label_errors.pop(rel, None)
        return {"path": text_name(rel), **labels.to_dict()}

    def export(self) -> dict:
        """Copy the picks (see :mod:`~clip_aesthetics.culling.export`) to the folder given at launch."""
        from ..culling.export import export_picks

        if self.export_to is None:
            raise ValueError("exporting needs a destination: start the app with --export-to FOLDER")
        with self.lock:
            self._ready()
            report = export_picks(self.rows, self.root, self.export_to)
            return {
                "picks": report.picks,
                "files": report.files,
                "errors": report.errors[:20],
                "to": str(self.export_to),
            }

    # --- taste ---------------------------------------------------------------------------------------
    def learn_taste(self) -> dict:
        """Fit the personal head on the ratings so far and save it; rank by it only when its
        cross-validated SRCC beats the generic score's (the answer says which, and why)."""
        from ..culling.fit_taste import fit_taste, stars_of, taste_scorer
        from ..scorers.registry import save_scorer

        with self.lock:
            shoot = self._ready()
            rated = [(i, stars_of(self.labels[f["rel"]])) for i, f in enumerate(shoot.frames)]
            rated = [(i, s) for i, s in rated if s is not None]
            rows = [i for i, _ in rated]
            generic = self._scores(self.generic)[rows]
            fit = fit_taste(shoot.features[rows], generic, np.array([s for _, s in rated], dtype=float))
            scorer = taste_scorer(self.generic, fit)
            save_scorer(scorer, shoot.cache / TASTE_FILE, scorer.tensors())
            self._use_taste(scorer, fit.summary())
            return self.taste

    def _use_taste(self, scorer, summary: dict) -> None:
        applied = summary["cv_srcc"] > summary["generic_srcc"]
        reason = (
            "ranks the photos"
            if applied
            else f"not used: its cross-validated SRCC {summary['cv_srcc']:.2f} does not beat the generic "
            f"score's {summary['generic_srcc']:.2f} on your ratings; rate more photos and try again"
        )
        self.taste = {
            **summary,
            "file": str(self.shoot.cache / TASTE_FILE),
            "applied": applied,
            "reason": reason,
        }
        self.scorer = scorer if applied else self.generic
        self._rank()

    def _reload_taste(self) -> None:
        """The taste learned in an earlier session of this shoot (same model), if there is one."""
        from ..scorers.registry import load_scorer, read_scorer_config

        path = self.shoot.cache / TASTE_FILE
        if not path.is_file():
            return
        try:
            fitted_on = (read_scorer_config(path).get("backbone") or {}).get("weights_id")
            if fitted_on and fitted_on != self.generic.backbone.weights_id:  # other weights: not reloaded
                return
            scorer = load_scorer(path, backbone=self.generic.backbone)
        except Exception:  # unreadable: the generic score ranks, as before any taste
            return
        if scorer.method == "taste" and scorer.fit:
            self._use_taste(scorer, scorer.fit)

    def why(self, rel: str) -> dict:
        """The occlusion heat map of ``rel`` under the current scorer (computed once per scorer)."""
        from .why import occlusion_map

        rel = name_from_text(rel)
        with self.lock:
            if self.frame(rel) is None:
                raise KeyError(rel)
            key = (rel, id(self.scorer))
            if key not in self._why:
                self._why[key] = occlusion_map(self.scorer, self.root / rel, self.options["precision"])
            return self._why[key]
