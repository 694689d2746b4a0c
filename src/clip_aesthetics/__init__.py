"""clip-aesthetics: image aesthetic assessment with CLIP (Hentschel, Kobs & Hotho, 2022)."""

__version__ = "0.1.0"

from .backbones import Backbone, load_backbone
from .scorers import Scorer, ZeroShotScorer, load_scorer, save_scorer
from .scoring import ScoreReport, score_paths

__all__ = [
    "Backbone",
    "ScoreReport",
    "Scorer",
    "ZeroShotScorer",
    "__version__",
    "load_backbone",
    "load_scorer",
    "save_scorer",
    "score_paths",
]
