"""Scorers: zero-shot prompts, linear probes and fine-tuned heads behind one contract."""

from .base import Calibration, ScoreOutput, Scorer
from .finetuned import FinetunedScorer
from .registry import load_scorer, read_scorer_file, register_scorer, save_scorer
from .probe import ProbeHead, ProbeScorer
from .zeroshot import ZeroShotScorer

__all__ = [
    "Calibration",
    "ProbeHead",
    "ProbeScorer",
    "FinetunedScorer",
    "ScoreOutput",
    "Scorer",
    "ZeroShotScorer",
    "load_scorer",
    "read_scorer_file",
    "register_scorer",
    "save_scorer",
]
