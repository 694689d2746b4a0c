"""Losses on 10-bin score distributions: EMD (the paper's and NIMA's), and MSE on the predicted mean.

EMD with ``r = 2`` compares cumulative distributions: per image
``sqrt(mean_k (CDF_p(k) - CDF_q(k))^2)`` over the ten bins, averaged over the batch. It matches
:func:`clip_aesthetics.metrics.emd` (numpy, used for validation) to float precision.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..encoders.towers import distribution_mean, score_bins
from ..metrics import N_BINS

__all__ = ["N_BINS", "distribution_mean", "emd", "emd_loss", "get_loss", "mean_mse_loss", "score_bins"]

# sqrt has an infinite slope at 0: a prediction equal to its target would give NaN gradients without a floor
_EMD_FLOOR = 1e-12


def emd(pred: torch.Tensor, target: torch.Tensor, r: float = 2.0) -> torch.Tensor:
    """Per-image EMD ``(mean_k |CDF_pred(k) - CDF_target(k)|^r)^(1/r)``, shape (N,).

    Args:
        pred: predicted probabilities (N, 10).
        target: target probabilities (N, 10), rows summing to 1.
        r: norm exponent (the paper uses 2).
    """
    if pred.shape != target.shape or pred.shape[-1] != N_BINS:
        raise ValueError(
            f"EMD needs two (N, {N_BINS}) tensors, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    diff = (torch.cumsum(pred, dim=-1) - torch.cumsum(target, dim=-1)).abs()
    return diff.pow(r).mean(dim=-1).clamp_min(_EMD_FLOOR).pow(1.0 / r)


def emd_loss(logits: torch.Tensor, target: torch.Tensor, r: float = 2.0) -> torch.Tensor:
    """Per-image EMD of ``softmax(logits)`` against ``target``, computed in float32, shape (N,)."""
    return emd(F.softmax(logits.float(), dim=-1), target.float(), r)


def mean_mse_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image squared error of the predicted mean against the target distribution's mean, shape (N,)."""
    pred = distribution_mean(F.softmax(logits.float(), dim=-1))
    return (pred - distribution_mean(target.float())) ** 2


LOSSES = {"emd": emd_loss, "mse": mean_mse_loss}


def get_loss(name: str):
    """The per-image loss function called ``name`` (``emd`` or ``mse``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r} (choose {', '.join(LOSSES)})")
    return LOSSES[name]
