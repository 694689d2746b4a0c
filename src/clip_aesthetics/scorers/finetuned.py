"""Fine-tuned scorer: the backbone's image tower trained end to end with a 10-bin head (paper's third step).

The file (``best.safetensors`` of a fine-tuning run) holds the tower and head weights and names the
backbone; :func:`~clip_aesthetics.scorers.load_scorer` rebuilds the backbone from that name (on random
weights when the architecture, activation and preprocessing can be rebuilt without the original ones),
copies its image tower, then loads the fine-tuned weights over it. The score is
the predicted distribution's mean ``sum_i i * p_i`` on 1-10; the distribution is reported too.
"""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..finetune.model import FinetuneModel
from .base import Calibration, ScoreOutput, Scorer
from .registry import register_scorer


@register_scorer
class FinetunedScorer(Scorer):
    """A fine-tuned image tower + Linear(width, 10) + softmax over the score bins."""

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

    def forward(self, pixels: torch.Tensor) -> ScoreOutput:
        probs, mean = self.model.predict(pixels)
        return self._calibrated(ScoreOutput(score=mean, distribution=probs, raw=mean.clone()))

    def config(self) -> dict:
        return {
            **super().config(),
            "head": {"tower": self.model.kind, "width": self.model.width, "dropout": self.model.dropout.p},
            "recipe": self.recipe,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the scorer file stores: the tower and head weights."""
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
        calibration = Calibration(**config["calibration"]) if config.get("calibration") else None
        return cls(backbone, model, calibration, config.get("recipe"))
