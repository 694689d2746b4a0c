"""Linear probe scorers (paper section 4.2): standardised frozen image features -> a linear head.

The head is fitted by :func:`clip_aesthetics.features.fit_probe.fit_probe` on cached features. Two targets:

- ``mean``: one output, the mean score on 1-10.
- ``distribution``: ten outputs regressing the vote fractions p_1..p_10. A linear fit with an intercept keeps
  the outputs summing to 1 (each target row does), but not non-negative, so the prediction is clipped at 0
  and renormalised (uniform if everything was clipped); the mean score is sum_i i * p_i.

The scorer file holds the scaler (``scaler_mean``, ``scaler_std``), ``weight`` (outputs, D) and ``bias``,
plus a config naming the backbone, the target and how the head was fitted (solver, alpha, metrics).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..encoders.backbones import Backbone
from .base import BINS, Calibration, ScoreOutput, Scorer
from .registry import register_scorer

TARGETS = ("mean", "distribution")


class ProbeHead(nn.Module):
    """Standardisation followed by a linear map; turns features into a :class:`ScoreOutput`."""

    def __init__(
        self,
        scaler_mean: torch.Tensor,
        scaler_std: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        target: str = "mean",
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown probe target {target!r} (choose {', '.join(TARGETS)})")
        outputs = 1 if target == "mean" else len(BINS)
        if weight.ndim != 2 or weight.shape[0] != outputs or weight.shape[1] != scaler_mean.shape[0]:
            raise ValueError(f"probe weight has shape {tuple(weight.shape)}, expected ({outputs}, D)")
        if tuple(bias.shape) != (outputs,):
            raise ValueError(f"probe bias has shape {tuple(bias.shape)}, expected ({outputs},)")
        if scaler_mean.ndim != 1 or scaler_std.shape != scaler_mean.shape:
            raise ValueError(
                f"probe scaler shapes {tuple(scaler_mean.shape)} / {tuple(scaler_std.shape)}, expected (D,)"
            )
        self.target = target
        for name, value in (("scaler_mean", scaler_mean), ("scaler_std", scaler_std)):
            self.register_buffer(name, value.detach().float().clone())
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, features: torch.Tensor) -> ScoreOutput:
        # float32 even under bf16 autocast: the head is cheap, and bf16 would round scores to ~0.01
        with torch.autocast(features.device.type, enabled=False):
            standardised = (features.float() - self.scaler_mean) / self.scaler_std
            out = standardised @ self.weight.T + self.bias
        if self.target == "mean":
            return ScoreOutput(score=out[:, 0], raw=out[:, 0])
        clipped = out.clamp(min=0)
        total = clipped.sum(dim=1, keepdim=True)
        uniform = torch.full_like(clipped, 1.0 / clipped.shape[1])
        distribution = torch.where(total > 0, clipped / total.clamp(min=1e-12), uniform)
        return ScoreOutput(score=distribution @ BINS.to(distribution.device), distribution=distribution)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("scaler_mean", "scaler_std", "weight", "bias")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], target: str) -> ProbeHead:
        missing = {"scaler_mean", "scaler_std", "weight", "bias"} - set(tensors)
        if missing:
            raise ValueError(f"probe file lacks tensors {sorted(missing)}")
        return cls(tensors["scaler_mean"], tensors["scaler_std"], tensors["weight"], tensors["bias"], target)


def probe_config(head: ProbeHead, fit: dict | None) -> dict:
    """The probe-specific part of a scorer config (also written by fitting, which has no backbone loaded)."""
    return {
        "target": head.target,
        "features": {"input": "encode_image", "normalization": "none", "standardisation": "train split"},
        "fit": fit,
    }


@register_scorer
class ProbeScorer(Scorer):
    """A fitted linear probe on a frozen backbone: score = head(backbone.encode_image(pixels))."""

    method = "probe"

    def __init__(
        self,
        backbone: Backbone,
        head: ProbeHead,
        fit: dict | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(backbone, calibration)
        if head.feature_dim != backbone.feature_dim:
            raise ValueError(
                f"the probe expects {head.feature_dim}-d features, "
                f"but {backbone.spec} gives {backbone.feature_dim}-d"
            )
        self.head = head.to(backbone.device)
        self.fit = fit

    @property
    def has_distribution(self) -> bool:  # type: ignore[override]
        return self.head.target == "distribution"

    def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
        return self.head(features)

    def config(self) -> dict:
        return {**super().config(), **probe_config(self.head, self.fit)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.head.tensors()

    @classmethod
    def from_saved(cls, config: dict, tensors: dict, backbone: Backbone) -> ProbeScorer:
        fitted_on = (config.get("backbone") or {}).get("weights_id")
        if fitted_on and fitted_on.endswith(":random"):
            warnings.warn(
                f"probe was fitted on randomly initialised weights ({fitted_on}); loading draws new random "
                "weights, so its scores carry no meaning",
                stacklevel=2,
            )
        elif fitted_on and fitted_on != backbone.weights_id:
            warnings.warn(
                f"probe was fitted on features of {fitted_on!r} but is applied to {backbone.weights_id!r}",
                stacklevel=2,
            )
        head = ProbeHead.from_tensors(tensors, config.get("target", "mean"))
        return cls(backbone, head, config.get("fit"), Calibration.from_config(config))
