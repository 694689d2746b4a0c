"""Zero-shot aesthetic scoring with prompt groups (paper section 4.1).

For an image embedding ``f`` and group embeddings ``g+`` and ``g-`` (all L2-normalised) the raw score is
``raw = 100 * (cos(f, g+) - cos(f, g-))``: CLIP's logit difference between the two groups. It is mapped
onto 1-10 by ``score = 1 + 9 * sigmoid(raw)``, i.e. 1 + 9 * CLIP's probability that the positive group
fits better. The mapping is monotonic, so SRCC is that of ``raw``; the binary label is the closer group
(``raw > 0``, i.e. ``score > 5.5``), as in the paper.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..backbones import Backbone
from ..prompts import PromptGroups, default_prompts, encode_texts, group_embedding
from .base import Calibration, ScoreOutput, Scorer
from .registry import register_scorer

LOGIT_SCALE = 100.0


@register_scorer
class ZeroShotScorer(Scorer):
    """Positive vs negative prompt groups, each group's text embeddings ensembled."""

    method = "zeroshot"

    def __init__(
        self,
        backbone: Backbone,
        prompts: PromptGroups | None = None,
        calibration: Calibration | None = None,
        recipe: dict | None = None,
    ) -> None:
        super().__init__(backbone, calibration)
        if not backbone.has_text:
            raise TypeError(f"zero-shot scoring needs a CLIP model with a text encoder, not {backbone.spec}")
        self.prompts = prompts or default_prompts()
        self.recipe = recipe
        device = backbone.device
        self.register_buffer(
            "positive", group_embedding(encode_texts(backbone, self.prompts.positive)).to(device)
        )
        self.register_buffer(
            "negative", group_embedding(encode_texts(backbone, self.prompts.negative)).to(device)
        )

    @property
    def label_threshold(self) -> float:  # the closer group decides, unless calibrated onto AVA's scale
        return 5.0 if self.calibration else 5.5

    def score_features(self, image_features: torch.Tensor) -> ScoreOutput:
        """Scores from image embeddings (any dtype); used on cached features too."""
        features = F.normalize(image_features.float(), dim=-1)
        raw = LOGIT_SCALE * (features @ self.positive.float() - features @ self.negative.float())
        return self._calibrated(ScoreOutput(score=1.0 + 9.0 * torch.sigmoid(raw), raw=raw))

    def forward(self, pixels: torch.Tensor) -> ScoreOutput:
        return self.score_features(self.backbone.encode_image(pixels))

    def config(self) -> dict:
        return {
            **super().config(),
            "prompts": self.prompts.to_dict(),
            "recipe": self.recipe,
            "logit_scale": LOGIT_SCALE,
        }

    @classmethod
    def from_saved(cls, config: dict, tensors: dict, backbone: Backbone) -> ZeroShotScorer:
        calibration = Calibration(**config["calibration"]) if config.get("calibration") else None
        return cls(backbone, PromptGroups.from_dict(config["prompts"]), calibration, config.get("recipe"))
