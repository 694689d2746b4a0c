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


STRATEGIES = ("ensemble", "context")


@register_scorer
class ZeroShotScorer(Scorer):
    """Positive vs negative prompt groups.

    Strategies (paper section 4.1):
        ``ensemble``: each group's text embeddings are averaged (the default and the paper's best);
        ``context``: the groups are aligned per content word (``positive[i]`` and ``negative[i]`` name the
        same ImageNet class); each image is compared with the pair of its best-matching class, found with
        the neutral ``context_prompts`` ("a picture of a {class}").
    """

    method = "zeroshot"

    def __init__(
        self,
        backbone: Backbone,
        prompts: PromptGroups | None = None,
        calibration: Calibration | None = None,
        recipe: dict | None = None,
        strategy: str = "ensemble",
        context_prompts: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(backbone, calibration)
        if not backbone.has_text:
            raise TypeError(f"zero-shot scoring needs a CLIP model with a text encoder, not {backbone.spec}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown zero-shot strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
        self.prompts = prompts or default_prompts()
        self.recipe, self.strategy, self.context_prompts = recipe, strategy, context_prompts
        positive, negative = (
            encode_texts(backbone, texts) for texts in (self.prompts.positive, self.prompts.negative)
        )
        if strategy == "context":
            if context_prompts is None or not len(positive) == len(negative) == len(context_prompts):
                raise ValueError(
                    "the context strategy needs equally long positive, negative and context prompts"
                )
            self.register_buffer("contexts", encode_texts(backbone, context_prompts).to(backbone.device))
        else:
            positive, negative = group_embedding(positive), group_embedding(negative)
        self.register_buffer("positive", positive.to(backbone.device))
        self.register_buffer("negative", negative.to(backbone.device))

    @property
    def label_threshold(self) -> float:  # the closer group decides, unless calibrated onto AVA's scale
        return 5.0 if self.calibration else 5.5

    def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
        """Scores from float32 image embeddings (normalised here): the head of the contract."""
        features = F.normalize(features, dim=-1)
        positive, negative = self.positive.float(), self.negative.float()
        if self.strategy == "context":
            best = (features @ self.contexts.float().T).argmax(dim=-1)
            positive, negative = positive[best], negative[best]
            similarity = (features * (positive - negative)).sum(dim=-1)
        else:
            similarity = features @ positive - features @ negative
        raw = LOGIT_SCALE * similarity
        return ScoreOutput(score=1.0 + 9.0 * torch.sigmoid(raw), raw=raw)

    def config(self) -> dict:
        return {
            **super().config(),
            "prompts": self.prompts.to_dict(),
            "strategy": self.strategy,
            "context_prompts": list(self.context_prompts) if self.context_prompts else None,
            "recipe": self.recipe,
            "logit_scale": LOGIT_SCALE,
        }

    @classmethod
    def from_saved(cls, config: dict, tensors: dict, backbone: Backbone) -> ZeroShotScorer:
        calibration = Calibration.from_config(config)
        context = tuple(config["context_prompts"]) if config.get("context_prompts") else None
        return cls(
            backbone,
            PromptGroups.from_dict(config["prompts"]),
            calibration,
            config.get("recipe"),
            strategy=config.get("strategy", "ensemble"),
            context_prompts=context,
        )
