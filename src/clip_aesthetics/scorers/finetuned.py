"""Fine-tuned scorer: the backbone's image tower trained end to end with a 10-bin head (paper's third step).

Its encoder is the fine-tuned tower, which carries its own weights (so its features are never shared with
other heads); its head is Linear(width, 10) + softmax. The file (``best.safetensors`` of a fine-tuning run)
holds the tower and head weights and names the backbone; :func:`~clip_aesthetics.scorers.load_scorer`
rebuilds the backbone from that name (on random weights when the architecture, activation and preprocessing
can be rebuilt without the original ones), copies its image tower, then loads the fine-tuned weights over
it. The score is the predicted distribution's mean ``sum_i i * p_i`` on 1-10; the distribution is reported
too.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..encoders.backbones import Backbone
from ..encoders.towers import FinetuneModel, distribution_mean
from .base import Calibration, ScoreOutput, Scorer
from .registry import register_scorer


@register_scorer
class FinetunedScorer(Scorer):
    """A fine-tuned image tower (the encoder) + Linear(width, 10) + softmax over the score bins (the head)."""

    method = "finetune"
    has_distribution = True
    holds_tower_weights = True  # the file has the whole tower: loading needs no base weights

    def __init__(
        self,
        backbone: Backbone,
        model: FinetuneModel,
        calibration: Calibration | None = None,
        recipe: dict | None = None,
    ) -> None:
        super().__init__(backbone, calibration)
        self.model = model
        self.recipe = recipe

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The fine-tuned tower's features (N, width), not the frozen backbone's."""
        return self.model.features(pixels)

    def encoder_key(self) -> None:
        return None  # its own tower: no other head shares these features

    def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
        head = self.model.head
        probs = F.softmax(F.linear(features, head.weight.float(), head.bias.float()), dim=-1)
        mean = distribution_mean(probs)
        return ScoreOutput(score=mean, distribution=probs, raw=mean.clone())

    def config(self) -> dict:
        return {
            **super().config(),
            "head": {"tower": self.model.kind, "width": self.model.width, "dropout": self.model.dropout.p},
            "recipe": self.recipe,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tower and head weights (the file carries the whole encoder)."""
        return self.model.state_dict()

    @classmethod
    def from_saved(cls, config: dict, tensors: dict, backbone: Backbone) -> FinetunedScorer:
        head = config.get("head") or {}
        model = FinetuneModel.from_backbone(backbone, dropout=float(head.get("dropout", 0.0)))
        if head.get("width") not in (None, model.width):
            raise ValueError(
                f"scorer was trained on a {head['width']}-wide tower but {backbone.spec} gives {model.width}"
            )
        model.load_state_dict({k: v.to(model.pixel_mean.device) for k, v in tensors.items()})
        return cls(backbone, model, Calibration.from_config(config), config.get("recipe"))
