"""The scorer contract shared by every method (zero-shot, probe, fine-tuned).

A scorer maps normalised images to a mean aesthetic score on AVA's 1-10 scale (higher is better) and,
where the method has one, a distribution over the ten score bins. An optional affine calibration, fitted
on labelled data, is part of the scorer: it changes PLCC and MSE, never a ranking.
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone

SCORE_RANGE = (1.0, 10.0)
BINS = torch.arange(1, 11, dtype=torch.float32)


@dataclass
class ScoreOutput:
    """Scores of one batch: mean score (N,), optional distribution (N, 10), and the method's raw value."""

    score: torch.Tensor
    distribution: torch.Tensor | None = None
    raw: torch.Tensor | None = None

    def __getitem__(self, index: int) -> torch.Tensor | None:  # fields by position: score, distribution, raw
        return (self.score, self.distribution, self.raw)[index]


@dataclass(frozen=True)
class Calibration:
    """score' = slope * score + intercept, fitted by least squares on labelled data."""

    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, score: torch.Tensor) -> torch.Tensor:
        return score * self.slope + self.intercept

    def to_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept}


class Scorer(nn.Module):
    """Base class: subclasses implement :meth:`forward` on normalised pixels and :meth:`config`."""

    method: str = "base"
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

    def forward(self, pixels: torch.Tensor) -> ScoreOutput:
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description; saved scorer files carry it."""
        return {
            "method": self.method,
            "backbone": self.backbone.describe(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "label_threshold": self.label_threshold,
        }

    def label(self, score: torch.Tensor) -> torch.Tensor:
        """Binary label: True where the image is judged good."""
        return score > self.label_threshold

    def _calibrated(self, output: ScoreOutput) -> ScoreOutput:
        if self.calibration is not None:
            output.score = self.calibration.apply(output.score)
        return output

    @torch.inference_mode()
    def score_images(self, images: torch.Tensor, precision: str = "auto") -> ScoreOutput:
        """Score a uint8 batch (N, 3, H, W) prepared by the image pipeline; results in float32 on CPU.

        A batch too large for the GPU's memory is split in halves until it fits, so a large
        ``--batch-size`` is safe to ask for.
        """
        try:
            with autocast(self.device, precision):
                output = self(self.backbone.normalize(images))
        except torch.OutOfMemoryError:
            if len(images) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(images) // 2
            parts = [self.score_images(images[:half], precision), self.score_images(images[half:], precision)]
            return ScoreOutput(
                *(None if parts[0][k] is None else torch.cat([p[k] for p in parts]) for k in range(3))
            )
        return ScoreOutput(
            *(None if t is None else t.float().cpu() for t in (output.score, output.distribution, output.raw))
        )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where a bf16 tower runs ~2x fp32.

    ``CLIP_AESTHETICS_CPU_BF16=0`` answers no (keeps ``auto`` at fp32, e.g. to match open_clip exactly),
    ``=1`` answers yes.
    """
    forced = os.environ.get("CLIP_AESTHETICS_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _cpuinfo_bf16()


@functools.cache
def _cpuinfo_bf16() -> bool:
    try:
        return bf16_in_cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: keep fp32 (exact) rather than guess
        return False


def bf16_in_cpu_flags(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo`` text lists AVX512-BF16 or AMX-BF16."""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(device: torch.device, precision: str, *, cpu_bf16: bool = False) -> str:
    """``auto`` means bf16 on CUDA; on a CPU, bf16 when ``cpu_bf16`` is asked and the CPU computes bf16
    natively (:func:`cpu_has_native_bf16`), else fp32.

    Bulk scoring and embedding pass ``cpu_bf16=True`` (speed first); measurements (evaluate, reproduce,
    prompt search) keep ``auto`` at fp32 on CPUs so their numbers match open_clip's.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (choose auto, fp32, bf16 or fp16)")
    if precision == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16()):
            return "bf16"
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``precision`` on ``device`` (a no-op for fp32)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
