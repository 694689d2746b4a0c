"""A photographer's own taste: a ridge head on CLIP embeddings on top of the generic zero-shot score.

predicted stars = intercept + prior_slope * generic + weight . f / |f|

where ``generic`` is the zero-shot score (1-10) from the prompt-group embeddings stored in the file, and
``f`` the image embedding. The head is fitted by :func:`clip_aesthetics.culling.fit_taste.fit_taste`; the
penalty on ``weight`` is chosen by cross-validation, so with few or inconsistent ratings the head falls
back to the generic score (the prior). The score is the predicted stars mapped onto 1-10
(0 stars -> 1, 5 stars -> 10); ``raw`` is the predicted stars.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn import functional as F

from ..encoders.backbones import Backbone
from .base import Calibration, ScoreOutput, Scorer
from .registry import register_scorer
from .zeroshot import LOGIT_SCALE

TENSORS = ("prior_positive", "prior_negative", "weight", "coef")


def generic_score(features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The zero-shot score (ensembled prompt groups) of image features, as ZeroShotScorer computes it."""
    unit = F.normalize(features.float(), dim=-1)
    return 1.0 + 9.0 * torch.sigmoid(LOGIT_SCALE * (unit @ positive.float() - unit @ negative.float()))


def stars_to_score(stars: torch.Tensor) -> torch.Tensor:
    return 1.0 + 1.8 * stars


@register_scorer
class TasteScorer(Scorer):
    """Personal ratings learned on a frozen CLIP backbone (see the module docstring)."""

    method = "taste"

    def __init__(
        self,
        backbone: Backbone,
        tensors: dict[str, torch.Tensor],
        fit: dict | None = None,
        prompts: dict | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(backbone, calibration)
        missing = set(TENSORS) - set(tensors)
        if missing:
            raise ValueError(f"taste file lacks tensors {sorted(missing)}")
        if tensors["weight"].shape != (backbone.feature_dim,):
            raise ValueError(
                f"the taste head expects {tensors['weight'].shape[0]}-d features, "
                f"but {backbone.spec} gives {backbone.feature_dim}-d"
            )
        for name in TENSORS:
            self.register_buffer(name, tensors[name].detach().float().clone().to(backbone.device))
        self.fit, self.prompts = fit, prompts

    def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
        generic = generic_score(features, self.prior_positive, self.prior_negative)
        stars = self.coef[0] + self.coef[1] * generic + F.normalize(features, dim=-1) @ self.weight
        return ScoreOutput(score=stars_to_score(stars), raw=stars)

    def config(self) -> dict:
        return {**super().config(), "fit": self.fit, "prior": {"method": "zeroshot", "prompts": self.prompts}}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in TENSORS}

    @classmethod
    def from_saved(cls, config: dict, tensors: dict, backbone: Backbone) -> TasteScorer:
        fitted_on = (config.get("backbone") or {}).get("weights_id")
        if fitted_on and fitted_on != backbone.weights_id:  # the probe's check: features of other weights
            warnings.warn(
                f"taste head was fitted on features of {fitted_on!r} but is applied to "
                f"{backbone.weights_id!r}",
                stacklevel=2,
            )
        prompts = (config.get("prior") or {}).get("prompts")
        return cls(backbone, tensors, config.get("fit"), prompts, Calibration.from_config(config))
