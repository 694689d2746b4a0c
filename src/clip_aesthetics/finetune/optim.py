"""Optimiser and learning-rate schedule of a fine-tuning run."""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig
from .model import FinetuneModel


def _groups(params: list[torch.nn.Parameter], lr: float, weight_decay: float, name: str) -> list[dict]:
    # biases and norm scales (1-D) are not decayed: shrinking them only hurts (the usual AdamW practice)
    trainable = [p for p in params if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: FinetuneModel, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW; the tower and the head have their own learning rates."""
    groups = _groups(model.head_parameters(), config.lr_head, config.weight_decay, "head")
    if config.lr_backbone > 0:
        groups += _groups(model.tower_parameters(), config.lr_backbone, config.weight_decay, "tower")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr_head, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr_head)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rates at optimiser step ``step`` (0-based).

    Linear warm-up from 1/warmup_steps to 1, then constant or a cosine decay to 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """The per-step schedule; its horizon is ``max_epochs`` (a resume with more epochs stretches it)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    factor = functools.partial(
        lr_factor,
        warmup_steps=warmup,
        total_steps=config.max_epochs * steps_per_epoch,
        schedule=config.schedule,
    )
    return LambdaLR(optimizer, factor)
