"""Fine-tuned image towers: a backbone's image model without its projection, plus a 10-bin score head.

This is the encoder of a fine-tuned scorer (it carries its own weights) and the model the fine-tuning loop
trains. It lives outside both :mod:`clip_aesthetics.scorers` and :mod:`clip_aesthetics.finetune` so that
the trainer can import the scorers and the scorers never import the trainer.

The tower is a copy of the backbone's image model without its output projection, as in the paper:

- open_clip ``VisionTransformer`` (ViT-B/32 ...): ``proj`` set to None, so features are the 768-d pooled
  token after ``ln_post`` rather than CLIP's 512-d joint embedding;
- open_clip ``ModifiedResNet`` (RN50 ...) and other open_clip towers: their own pooled output (RN50: the
  attention pool's output);
- a timm ImageNet model: already built without its classifier (``num_classes=0``), pre-logits features.

The model normalises uint8 pixels itself (the backbone's mean/std), so training never needs the backbone's
text tower on the device.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..metrics import N_BINS
from .backbones import Backbone


def score_bins(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The scores 1..10 of the ten bins."""
    return torch.arange(1, N_BINS + 1, device=device, dtype=dtype)


def distribution_mean(probs: torch.Tensor) -> torch.Tensor:
    """Mean score ``sum_i i * p_i`` of distributions (N, 10); in [1, 10] for probabilities."""
    return probs @ score_bins(probs.device, probs.dtype)


def image_tower(backbone: Backbone) -> tuple[nn.Module, int, str]:
    """A trainable copy of the backbone's image model, its output width and a short name of its kind."""
    if backbone.kind == "timm":
        return copy.deepcopy(backbone.model), int(backbone.model.num_features), "timm"
    visual = backbone.model.visual
    if getattr(visual, "proj", None) is not None and visual.__class__.__name__ == "VisionTransformer":
        # CLIP's projection maps into the text-image joint space; the paper fine-tunes the wider token
        tower = copy.deepcopy(visual)
        tower.proj = None
        return tower, int(tower.ln_post.normalized_shape[0]), "clip-vit"
    tower = copy.deepcopy(visual)
    return tower, _probe_width(tower, backbone.preprocess_cfg.size), f"clip-{visual.__class__.__name__}"


def _probe_width(tower: nn.Module, size: int) -> int:
    """Output width of a tower with no declared one: run one blank image through it."""
    was_training = tower.training
    tower.eval()
    param = next(tower.parameters())
    with torch.no_grad():
        width = int(tower(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)).shape[-1])
    tower.train(was_training)
    return width


class FinetuneModel(nn.Module):
    """Image tower + dropout + Linear(width, 10); ``forward`` gives logits over the ten score bins."""

    def __init__(
        self, tower: nn.Module, width: int, mean: tuple, std: tuple, dropout: float = 0.0, kind: str = ""
    ) -> None:
        super().__init__()
        self.tower = tower
        self.width = width
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, N_BINS)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)

    @classmethod
    def from_backbone(cls, backbone: Backbone, dropout: float = 0.0) -> FinetuneModel:
        """Build the model on the backbone's image tower (copied: the backbone is left unchanged)."""
        tower, width, kind = image_tower(backbone)
        cfg = backbone.preprocess_cfg
        return cls(tower, width, cfg.mean, cfg.std, dropout, kind).to(backbone.device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float pixels on the model's device."""
        images = images.to(self.pixel_mean.device, non_blocking=True)
        return (images.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tower output (N, width)."""
        out = self.tower(pixels)
        return out[0] if isinstance(out, tuple) else out  # towers built with output_tokens return a pair

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(pixels)))

    def predict(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (N, 10), predicted mean (N,)), in float32."""
        probs = F.softmax(self(pixels).float(), dim=-1)
        return probs, distribution_mean(probs)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def tower_parameters(self) -> list[nn.Parameter]:
        return list(self.tower.parameters())
