"""The LAION aesthetic predictor (christophschuhmann/improved-aesthetic-predictor) as a scorer.

Its checkpoints (e.g. ``sac+logos+ava1-l14-linearMSE.pth``) are torch state dicts of an MLP with no
activations, applied to L2-normalised CLIP ViT-L/14 (OpenAI) image embeddings and predicting a mean score of
roughly 1-10::

    layers.0: Linear(768, 1024)   layers.1: Dropout(0.2)
    layers.2: Linear(1024, 128)   layers.3: Dropout(0.2)
    layers.4: Linear(128, 64)     layers.5: Dropout(0.1)
    layers.6: Linear(64, 16)      layers.7: Linear(16, 1)

Use it as ``clip-aesthetics score --scorer laion:/path/to/file.pth``; the backbone defaults to ViT-L-14 with
OpenAI weights (QuickGELU is resolved by :func:`~clip_aesthetics.encoders.backbones.load_backbone`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..encoders.backbones import Backbone, load_backbone
from .base import Calibration, ScoreOutput, Scorer
from .registry import register_scorer

LAION_MODEL = "ViT-L-14"
_LINEAR_INDICES = (0, 2, 4, 6, 7)
_DROPOUT = {1: 0.2, 3: 0.2, 5: 0.1}


def laion_mlp(input_dim: int = 768) -> nn.Sequential:
    """The predictor's MLP with the original layer indices (dropout is inactive in eval mode)."""
    widths = (input_dim, 1024, 128, 64, 16, 1)
    layers: list[nn.Module] = []
    for i in range(8):
        if i in _DROPOUT:
            layers.append(nn.Dropout(_DROPOUT[i]))
        else:
            j = _LINEAR_INDICES.index(i)
            layers.append(nn.Linear(widths[j], widths[j + 1]))
    return nn.Sequential(*layers)


def _load_weights_only(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers: a downloaded file must not run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False: never pass that on for a file from the internet.
        raise ValueError(
            f"{path} is not a plain state dict (it pickles other Python objects) and must not be loaded "
            "unsafely: unpickling it could run arbitrary code. Re-save its state_dict() where it is trusted"
        ) from None
    except Exception as exc:  # truncated, not a zip or pickle at all, ...
        reason = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable torch checkpoint ({reason})") from None


def read_laion_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The MLP's tensors from a ``.pth`` state dict (or ``.safetensors``), keys ``layers.N.weight/bias``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of that structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LAION predictor checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    else:
        state = _load_weights_only(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = {f"layers.{i}.{p}" for i in _LINEAR_INDICES for p in ("weight", "bias")}
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise ValueError(
            f"{path} is not a LAION aesthetic predictor checkpoint "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    return state


@register_scorer
class LaionScorer(Scorer):
    """score = MLP(normalize(encode_image(pixels))): the LAION aesthetic predictor's mean score."""

    method = "laion"

    def __init__(
        self,
        backbone: Backbone,
        state: dict[str, torch.Tensor],
        source: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(backbone, calibration)
        input_dim = int(state["layers.0.weight"].shape[1])
        if input_dim != backbone.feature_dim:
            raise ValueError(
                f"the LAION head expects {input_dim}-d CLIP embeddings but {backbone.spec} gives "
                f"{backbone.feature_dim}-d (the released heads need --model ViT-L-14 --pretrained openai)"
            )
        self.mlp = laion_mlp(input_dim)
        try:
            self.mlp.load_state_dict({k.removeprefix("layers."): v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise ValueError(
                f"LAION head tensors have unexpected shapes: {str(exc).splitlines()[-1]}"
            ) from None
        self.mlp.to(backbone.device).eval()
        self.source = source

    def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
        """Scores from (unnormalised) CLIP image embeddings; the MLP sees them L2-normalised."""
        raw = self.mlp(F.normalize(features, dim=-1)).squeeze(-1)
        return ScoreOutput(score=raw, raw=raw)

    def config(self) -> dict:
        return {**super().config(), "source": self.source, "architecture": "improved-aesthetic-predictor MLP"}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"layers.{k}": v for k, v in self.mlp.state_dict().items()}

    @classmethod
    def from_saved(cls, config: dict, tensors: dict, backbone: Backbone) -> LaionScorer:
        return cls(backbone, tensors, config.get("source"), Calibration.from_config(config))


def load_laion_scorer(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    backbone: Backbone | None = None,
) -> LaionScorer:
    """A LAION predictor checkpoint as a scorer on ViT-L-14/openai (or the given backbone).

    Args:
        path: the ``.pth`` checkpoint.
        model, pretrained: backbone override (default ``ViT-L-14`` / ``openai``; the released heads need it).
        device: where to run.
        backbone: an already loaded backbone (overrides ``model``/``pretrained``).
    """
    state = read_laion_state(path)
    if backbone is None:  # open_clip names default to the OpenAI weights the released heads were trained on
        backbone = load_backbone(model or LAION_MODEL, pretrained, device=device)
    return LaionScorer(backbone, state, str(Path(path).resolve())).eval()
