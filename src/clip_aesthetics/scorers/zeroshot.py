"""Zero-shot aesthetic scoring with prompt groups (paper section 4.1).

Two formulas (``formula``) turn an image embedding ``f`` (L2-normalised) and the two groups' per-prompt text
embeddings ``t`` into ``raw``:

- ``authors`` (Hentschel et al.'s code): each group's *unnormalised* text embeddings are averaged,
  ``raw = 100 * f . (mean(t+) - mean(t-))``;
- ``cosine``: each text embedding is normalised, averaged and normalised again (open_clip's ensembling),
  ``raw = 100 * (cos(f, g+) - cos(f, g-))``: CLIP's logit difference between the groups.

Both mean "the positive group fits better" when ``raw > 0`` (the paper's binary label); they rank images
almost alike but not identically. ``raw`` is mapped onto 1-10 by ``score = 1 + 9 * sigmoid(raw)``; metrics
that the paper reports (SRCC, PLCC) are computed on ``raw``. Files written before the choice existed used
``cosine`` and still load with it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..encoders.backbones import Backbone
from ..encoders.prompts import PromptGroups, default_prompts, encode_texts
from .base import Calibration, ScoreOutput, Scorer
from .registry import register_scorer

LOGIT_SCALE = 100.0
FORMULAS = ("authors", "cosine")
LEGACY_FORMULA = "cosine"  # what a file without a "formula" entry computed

STRATEGIES = ("ensemble", "context", "content")


def prompt_vectors(embeddings: torch.Tensor, formula: str) -> torch.Tensor:
    """Per-prompt text vectors from the text tower's output: as they are (authors) or normalised (cosine)."""
    check_formula(formula)
    return embeddings if formula == "authors" else F.normalize(embeddings, dim=-1)


def group_vector(embeddings: torch.Tensor, formula: str) -> torch.Tensor:
    """One vector for a group of prompts (rows of unnormalised text embeddings) under ``formula``."""
    mean = prompt_vectors(embeddings, formula).mean(dim=0)
    return mean if formula == "authors" else F.normalize(mean, dim=-1)


def check_formula(formula: str) -> str:
    if formula not in FORMULAS:
        raise ValueError(f"unknown zero-shot score {formula!r} (choose {', '.join(FORMULAS)})")
    return formula


@register_scorer
class ZeroShotScorer(Scorer):
    """Positive vs negative prompt groups.

    Strategies (paper section 4.1):
        ``ensemble``: each group's text embeddings are averaged (the default and the paper's best);
        ``context``: the groups are aligned per content word (``positive[i]`` and ``negative[i]`` name the
        same ImageNet class); each image is compared with the pair of its best-matching class, found with
        the neutral ``context_prompts`` ("a picture of a {class}");
        ``content``: the authors' content mode: the image's best prompt of each group,
        ``raw = 100 * (max_i f . t+_i - max_j f . t-_j)``, so the label is the group of the best of all
        prompts (argmax over both groups).
    ``formula``: ``authors`` or ``cosine`` (see the module docstring); every text vector follows it.
    """

    method = "zeroshot"
    config_rebuilds_tensors = True  # a .json file keeps the prompts only; they are encoded on load

    def __init__(
        self,
        backbone: Backbone,
        prompts: PromptGroups | None = None,
        calibration: Calibration | None = None,
        recipe: dict | None = None,
        strategy: str = "ensemble",
        context_prompts: tuple[str, ...] | None = None,
        formula: str = "cosine",
        encoded: dict[str, torch.Tensor] | None = None,
        text_precision: str = "auto",
    ) -> None:
        super().__init__(backbone, calibration)
        if not backbone.has_text:
            raise TypeError(f"zero-shot scoring needs a CLIP model with a text encoder, not {backbone.spec}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown zero-shot strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
        self.prompts = prompts or default_prompts()
        self.formula = check_formula(formula)
        self.recipe, self.strategy, self.context_prompts = recipe, strategy, context_prompts
        self.text_precision = text_precision  # of the text tower (reproduce's paper recipe: fp32)
        if encoded is not None:  # the groups as a scorer file holds them: the text tower is not run
            for name, tensor in _checked_encoded(encoded, strategy, backbone).items():
                self.register_buffer(name, tensor.to(backbone.device))
            return
        positive, negative = (
            encode_texts(backbone, texts, normalize=False, precision=text_precision)
            for texts in (self.prompts.positive, self.prompts.negative)
        )
        if strategy == "context":
            if context_prompts is None or not len(positive) == len(negative) == len(context_prompts):
                raise ValueError(
                    "the context strategy needs equally long positive, negative and context prompts"
                )
            contexts = encode_texts(backbone, context_prompts, normalize=False, precision=text_precision)
            self.register_buffer("contexts", prompt_vectors(contexts, formula).to(backbone.device))
        if strategy == "ensemble":
            positive, negative = group_vector(positive, formula), group_vector(negative, formula)
        else:
            positive, negative = prompt_vectors(positive, formula), prompt_vectors(negative, formula)
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
        elif self.strategy == "content":
            similarity = (features @ positive.T).amax(dim=-1) - (features @ negative.T).amax(dim=-1)
        else:
            similarity = features @ (positive - negative)  # f . (g+ - g-): no cancellation of two dots
        raw = LOGIT_SCALE * similarity
        return ScoreOutput(score=1.0 + 9.0 * torch.sigmoid(raw), raw=raw)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The encoded prompt groups: a loaded ``.safetensors`` file (a Ray actor, the app, a rerun) scores
        with them instead of running 2 x 1,000 prompts through the text tower again."""
        return dict(self.named_buffers(recurse=False))

    def config(self) -> dict:
        return {
            **super().config(),
            "prompts": self.prompts.to_dict(),
            "strategy": self.strategy,
            "context_prompts": list(self.context_prompts) if self.context_prompts else None,
            "recipe": self.recipe,
            "formula": self.formula,
            "text_precision": self.text_precision,
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
            formula=config.get("formula", LEGACY_FORMULA),
            text_precision=config.get("text_precision", "auto"),
            encoded=tensors if tensors and _same_text_tower(config["backbone"], backbone) else None,
        )


def _same_text_tower(described: dict, backbone: Backbone) -> bool:
    """Whether a file's groups were encoded by this backbone's text tower (weights, model, activation),
    so that its tensors stand for the prompts; otherwise they are encoded again (a ``.json`` file, or a
    file put on other weights with ``load_scorer(path, backbone=...)``)."""
    mine = backbone.describe()
    if mine["weights_id"].endswith(":random"):  # random weights are drawn anew by every load
        return False
    return all(described.get(k) == mine[k] for k in ("model", "weights_id", "quick_gelu"))


def _checked_encoded(encoded: dict, strategy: str, backbone: Backbone) -> dict[str, torch.Tensor]:
    names = {"positive", "negative"} | ({"contexts"} if strategy == "context" else set())
    if set(encoded) != names or any(t.shape[-1] != backbone.feature_dim for t in encoded.values()):
        shapes = {k: tuple(v.shape) for k, v in encoded.items()}
        raise ValueError(f"encoded prompt groups {shapes} do not fit a {strategy} head on {backbone.spec}")
    return encoded
