"""clip-aesthetics: image aesthetic assessment with CLIP (Hentschel, Kobs & Hotho, 2022).

The public names are imported lazily, so ``import clip_aesthetics.metrics`` (or the CLI's ``--help``)
does not pay for importing torch and open_clip.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Backbone": "encoders.backbones",
    "load_backbone": "encoders.backbones",
    "Scorer": "scorers",
    "ZeroShotScorer": "scorers",
    "load_scorer": "scorers",
    "save_scorer": "scorers",
    "ScoreReport": "runs.score",
    "score_paths": "runs.score",
    "build_scorer": "runs.score",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
