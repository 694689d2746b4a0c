"""Scorers: zero-shot prompts, linear probes and fine-tuned heads behind one contract."""

from .base import Calibration, ScoreOutput, Scorer
from .finetuned import FinetunedScorer
from .laion import LaionScorer, load_laion_scorer
from .probe import ProbeHead, ProbeScorer
from .registry import load_scorer, read_scorer_file, register_scorer, save_scorer
from .taste import TasteScorer
from .zeroshot import ZeroShotScorer

__all__ = [
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
    "read_scorer_file",
    "register_scorer",
    "save_scorer",
]
