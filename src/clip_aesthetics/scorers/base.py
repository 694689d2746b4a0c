"""The scorer contract: an encoder (image -> features) and a head (features -> scores) in one class.

A scorer maps normalised images to a mean aesthetic score on AVA's 1-10 scale (higher is better) and,
where the method has one, a distribution over the ten score bins. It is two parts:

- the **encoder**: a frozen :class:`~clip_aesthetics.encoders.backbones.Backbone` (open_clip or timm), shared
  by any number of heads, or a fine-tuned tower carrying its own weights (:meth:`Scorer.encode` is
  overridden);
- the **head**: what the subclass adds, from features to scores (prompt groups, a linear probe, the LAION
  MLP, a 10-bin head, ...).

Because the head is separate, features computed once (by a feature cache or the evaluation hub) can be
scored by every head on the same encoder: :meth:`Scorer.encoder_key` says which heads may share features.

Writing a new head: subclass :class:`Scorer`, set ``method``, implement :meth:`~Scorer.compute_scores`,
:meth:`~Scorer.config` (calling ``super().config()``), :meth:`~Scorer.tensors` when the head has trained
tensors and :meth:`~Scorer.from_saved`, and decorate the class with
:func:`~clip_aesthetics.scorers.registry.register_scorer`; ``save_scorer``/``load_scorer`` then handle its
files, and ``tests/test_heads.py`` needs one factory for it. An optional affine calibration, fitted on
labelled data, belongs to every scorer: it changes PLCC and MSE, never a ranking.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..encoders.backbones import Backbone
from ..encoders.compute import autocast
from ..encoders.towers import score_bins

SCORE_RANGE = (1.0, 10.0)
BINS = score_bins()


@dataclass
class ScoreOutput:
    """Scores of one batch: mean score (N,), optional distribution (N, 10), and the method's raw value."""

    score: torch.Tensor
    distribution: torch.Tensor | None = None
    raw: torch.Tensor | None = None

    def __getitem__(self, index: int) -> torch.Tensor | None:  # fields by position: score, distribution, raw
        return (self.score, self.distribution, self.raw)[index]

    def to_cpu(self) -> ScoreOutput:
        """The same fields in float32 on the CPU."""
        return ScoreOutput(*(None if t is None else t.float().cpu() for t in self))

    @staticmethod
    def cat(parts: list[ScoreOutput]) -> ScoreOutput:
        """Outputs of consecutive batches joined into one."""
        return ScoreOutput(
            *(None if parts[0][k] is None else torch.cat([p[k] for p in parts]) for k in range(3))
        )

    def __iter__(self):
        return iter((self.score, self.distribution, self.raw))


@dataclass(frozen=True)
class Calibration:
    """score' = slope * score + intercept, fitted by least squares on labelled data."""

    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, score: torch.Tensor) -> torch.Tensor:
        return score * self.slope + self.intercept

    def to_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_config(cls, config: dict) -> Calibration | None:
        """The calibration a scorer config records, or None."""
        return cls(**config["calibration"]) if config.get("calibration") else None


class Scorer(nn.Module):
    """Base class of every scorer: an encoder and a head, with the head contract declared here.

    Subclasses implement :meth:`compute_scores` (features -> uncalibrated scores), :meth:`config`,
    :meth:`from_saved` and, when the head holds trained tensors, :meth:`tensors`. A scorer that cannot
    separate features from scores may override :meth:`forward` instead; it is then scored from pixels only.
    """

    method: ClassVar[str] = "base"
    has_distribution: bool = False
    higher_is_better: bool = True
    score_range: tuple[float, float] = SCORE_RANGE
    label_threshold: float = 5.0

    def __init__(self, backbone: Backbone, calibration: Calibration | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.calibration = calibration

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # --- the encoder ---------------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of normalised pixels; the frozen backbone's ``encode_image`` unless overridden."""
        return self.backbone.encode_image(pixels)

    def encoder_key(self) -> str | None:
        """Who may share this scorer's features: equal keys mean equal features for the same image.

        The frozen backbone's spec, weights identity and preprocessing (its ``describe()``). None when the
        scorer has its own encoder (a fine-tuned tower) or no separate head (it overrides ``forward``).
        """
        if not self.scores_features:
            return None
        return encoder_identity(self.backbone.describe(), self.backbone)

    @property
    def scores_features(self) -> bool:
        """Whether this scorer's head can be applied to features computed elsewhere."""
        cls = type(self)
        return cls.compute_scores is not Scorer.compute_scores and cls.forward is Scorer.forward

    # --- the head ------------------------------------------------------------------------------------
    def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
        """Uncalibrated scores of float32 features on the scorer's device (the head itself)."""
        raise NotImplementedError(f"{type(self).__name__} does not score features")

    @torch.inference_mode()
    def score_features(self, features: torch.Tensor) -> ScoreOutput:
        """Scores from image features of any dtype (a batch just encoded, or read from a feature cache).

        Heads always compute in float32, also under bf16/fp16 autocast: they are cheap, and half precision
        would round scores to ~0.01 and can flip close rankings.
        """
        features = features.to(self.device)
        with torch.autocast(self.device.type, enabled=False):
            output = self.compute_scores(features.float())
        if self.calibration is not None:
            output.score = self.calibration.apply(output.score)
        return output

    def tensors(self) -> dict[str, torch.Tensor]:
        """The head's trained tensors, as a scorer file stores them (none for prompt heads)."""
        return {}

    def config(self) -> dict:
        """JSON-serialisable description; saved scorer files carry it (subclasses add their own keys)."""
        return {
            "method": self.method,
            "backbone": self.backbone.describe(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "label_threshold": self.label_threshold,
        }

    @classmethod
    def from_saved(cls, config: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> Scorer:
        """Rebuild the scorer from a saved config and tensors on ``backbone`` (the file's encoder)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from a file")

    # --- pixels -> scores ----------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor) -> ScoreOutput:
        return self.score_features(self.encode(pixels))

    def label(self, score: torch.Tensor) -> torch.Tensor:
        """Binary label: True where the image is judged good."""
        return score > self.label_threshold

    @torch.inference_mode()
    def score_images(self, images: torch.Tensor, precision: str = "auto") -> ScoreOutput:
        """Score a uint8 batch (N, 3, H, W) prepared by the image pipeline; results in float32 on CPU.

        A batch too large for the GPU's memory is split in halves until it fits, so a large
        ``--batch-size`` is safe to ask for.
        """

        def run(part: torch.Tensor) -> ScoreOutput:
            with autocast(self.device, precision):
                return self(self.backbone.normalize(part)).to_cpu()

        return split_on_oom(run, images, ScoreOutput.cat)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, precision: str = "auto") -> torch.Tensor:
        """Features of a uint8 batch, on the scorer's device, in the precision the encoder gave them."""

        def run(part: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, precision):
                return self.encode(self.backbone.normalize(part))

        return split_on_oom(run, images, torch.cat)


def encoder_identity(description: dict, backbone: Backbone | None = None) -> str:
    """A frozen encoder's identity from its ``Backbone.describe()`` (as scorer files and caches store it).

    Spec, weights identity, activation and preprocessing decide the features; the ``pretrained`` field is
    left out (a default tag and the same tag named give the same weights id). Random weights are drawn anew
    by every load, so they are only the same encoder as the very same loaded ``backbone``.
    """
    keys = ("model", "kind", "feature_dim", "weights_id", "quick_gelu", "preprocess")
    identity = {k: description.get(k) for k in keys}
    if str(description.get("weights_id", "")).endswith(":random"):
        identity["instance"] = id(backbone) if backbone is not None else None
    return json.dumps(identity, sort_keys=True)


def split_on_oom(fn: Callable, images: torch.Tensor, join: Callable):
    """``fn(images)``, retried on halves (recursively) when the GPU runs out of memory."""
    try:
        return fn(images)
    except torch.OutOfMemoryError:
        if len(images) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(images) // 2
        return join([split_on_oom(fn, images[:half], join), split_on_oom(fn, images[half:], join)])
