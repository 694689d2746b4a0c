"""Scorers: an encoder plus a head (zero-shot prompts, linear probe, LAION MLP, fine-tuned 10-bin head).

Importing this package registers every built-in head; see :mod:`.base` for the contract a new head implements.
"""

from .base import Calibration, ScoreOutput, Scorer
from .finetuned import FinetunedScorer
from .laion import LaionScorer, load_laion_scorer
from .probe import ProbeHead, ProbeScorer
from .registry import (
    SCORERS,
    load_scorer,
    read_scorer_config,
    read_scorer_file,
    register_scorer,
    save_scorer,
    scorer_file_method,
)
from .taste import TasteScorer
from .zeroshot import ZeroShotScorer

__all__ = [
    "SCORERS",
    "Calibration",
    "FinetunedScorer",
    "LaionScorer",
    "ProbeHead",
    "ProbeScorer",
    "ScoreOutput",
    "Scorer",
    "TasteScorer",
    "ZeroShotScorer",
    "load_laion_scorer",
    "load_scorer",
    "read_scorer_config",
    "read_scorer_file",
    "register_scorer",
    "save_scorer",
    "scorer_file_method",
]
