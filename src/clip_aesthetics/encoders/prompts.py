"""Prompt groups for zero-shot aesthetic scoring (paper section 4.1).

A group is a list of texts; one vector stands for it, by either zero-shot formula (see
:mod:`clip_aesthetics.scorers.zeroshot`): the mean of the texts' unnormalised CLIP embeddings (the authors'),
or the mean of the L2-normalised ones normalised again (prompt ensembling, as in open_clip's zero-shot
classifier). The paper's best setting is ``outstanding`` vs ``horrible``, context-aware over the 1000
ImageNet class names, ensembled.

Class names: the authors took the first synonym of each line of the classic
``imagenet1000_clsidx_to_labels.txt`` (the WordNet lemmas of the 1000 ImageNet-1k synsets: "hammerhead",
"cock", "kite"), shipped here as ``data/imagenet_classes.txt`` and used by default. open_clip's curated
names ("hammerhead shark", "rooster", "kite (bird of prey)") differ for about 300 classes; they are
available as the ``imagenet-curated`` list.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from open_clip import IMAGENET_CLASSNAMES
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..fileio import atomic_path, read_text
from ..progress import progress_bar

FIXED_TEMPLATE = "a {adjective} picture"
CONTEXT_TEMPLATE = "a {adjective} picture of a {content}"


def _authors_class_names() -> tuple[str, ...]:
    text = (
        resources.files("clip_aesthetics").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


IMAGENET_CLASSES: tuple[str, ...] = _authors_class_names()  # the authors' list, the default
IMAGENET_CURATED_CLASSES: tuple[str, ...] = tuple(IMAGENET_CLASSNAMES)  # open_clip's curated names
CLASS_LISTS = {"imagenet": IMAGENET_CLASSES, "imagenet-curated": IMAGENET_CURATED_CLASSES}

POSITIVE_ADJECTIVES = (
    "outstanding",
    "smashing",  # in the authors' notebook
    "excellent",
    "stunning",
    "beautiful",
    "professional",
    "amazing",
    "magnificent",
    "superb",
    "gorgeous",
    "brilliant",
    "breathtaking",
    "wonderful",
    "striking",
    "impressive",
    "exquisite",
    "captivating",
    "elegant",
    "perfect",
    "remarkable",
    "award-winning",
    "great",
    "good",
    "nice",
    "artistic",
)
NEGATIVE_ADJECTIVES = (
    "horrible",
    "atrocious",
    "ugly",
    "boring",
    "amateur",
    "terrible",
    "awful",
    "bad",
    "poor",
    "dull",
    "mediocre",
    "unappealing",
    "blurry",
    "dreadful",
    "lousy",
    "bland",
    "unattractive",
    "disappointing",
    "clumsy",
    "careless",
    "messy",
    "forgettable",
    "worst",
    "low-quality",
)


@dataclass(frozen=True)
class PromptGroups:
    """The texts of the positive and the negative group, used verbatim."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ValueError("both prompt groups need at least one text")
        if not all(isinstance(t, str) and t.strip() for t in (*self.positive, *self.negative)):
            # an empty prompt group scores every image 5.5: refuse it rather than rank noise
            raise ValueError("prompts must be non-empty texts (got an empty --positive/--negative?)")

    def to_dict(self) -> dict:
        return {"positive": list(self.positive), "negative": list(self.negative)}

    @classmethod
    def from_dict(cls, data: dict) -> PromptGroups:
        missing = {"positive", "negative"} - set(data)
        if missing:
            raise ValueError(f"prompt file needs keys 'positive' and 'negative' (missing: {sorted(missing)})")
        return cls(tuple(_as_texts(data["positive"])), tuple(_as_texts(data["negative"])))


def _as_texts(value) -> list[str]:
    if not isinstance(value, str | list | tuple):
        raise ValueError(f"prompts must be a text or a list of texts, not {type(value).__name__}")
    return [value] if isinstance(value, str) else list(value)


def expand(
    adjectives: tuple[str, ...] | list[str],
    contents: tuple[str, ...] | None = None,
    template: str | None = None,
) -> tuple[str, ...]:
    """Texts for adjectives, fixed (``a {adjective} picture``) or context-aware over ``contents``."""
    if contents is None:
        template = template or FIXED_TEMPLATE
        return tuple(template.format(adjective=a) for a in adjectives)
    template = template or CONTEXT_TEMPLATE
    return tuple(template.format(adjective=a, content=c) for a in adjectives for c in contents)


@dataclass(frozen=True)
class PromptRecipe:
    """How a pair of groups was built from adjectives (kept in scorer files for the record)."""

    positive_adjectives: tuple[str, ...] = ("outstanding",)
    negative_adjectives: tuple[str, ...] = ("horrible",)
    context: str = "imagenet"  # a key of CLASS_LISTS (1000 class names) or "none" (fixed prompt)

    def __post_init__(self) -> None:
        if self.context != "none" and self.context not in CLASS_LISTS:
            raise ValueError(f"unknown class-name list {self.context!r} (choose {', '.join(CLASS_LISTS)})")

    def groups(self) -> PromptGroups:
        contents = CLASS_LISTS.get(self.context)
        return PromptGroups(
            expand(self.positive_adjectives, contents), expand(self.negative_adjectives, contents)
        )

    def to_dict(self) -> dict:
        return asdict(self)


def default_prompts(class_names: str = "imagenet") -> PromptGroups:
    """The paper's best: outstanding vs horrible over the ImageNet class names, ensembled.

    ``class_names``: ``imagenet`` (the authors' list, default) or ``imagenet-curated`` (open_clip's).
    """
    return PromptRecipe(context=class_names).groups()


def load_prompt_file(path: str | os.PathLike) -> PromptGroups:
    """Read ``{"positive": [...], "negative": [...]}`` from a JSON or YAML file."""
    text = read_text(path)
    import yaml

    try:
        data = yaml.safe_load(text) if Path(path).suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())  # YAML's message spans lines: keep it on one
        raise ValueError(
            f"{path} is not valid {'JSON' if Path(path).suffix == '.json' else 'YAML'}: {reason}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'positive' and 'negative' lists")
    return PromptGroups.from_dict(data)


def cache_dir() -> Path:
    """Where computed embeddings are cached: ``$CLIP_AESTHETICS_CACHE`` or ``~/.cache/clip-aesthetics``."""
    return Path(os.environ.get("CLIP_AESTHETICS_CACHE", Path.home() / ".cache" / "clip-aesthetics"))


@torch.inference_mode()
def encode_texts(
    backbone,
    texts: tuple[str, ...] | list[str],
    batch_size: int = 256,
    use_cache: bool = True,
    *,
    normalize: bool = True,
    precision: str = "auto",
) -> torch.Tensor:
    """Text embeddings (len(texts), D), float32 on CPU, cached on disk per text tower, precision and texts.

    The cache holds the text tower's output as it is; ``normalize=False`` returns it so (the authors'
    zero-shot formula averages unnormalised embeddings), the default L2-normalises each row. ``precision``
    follows the image tower's rule for bulk work (:func:`~clip_aesthetics.encoders.compute.resolve_precision`
    with ``cpu_bf16``): ``auto`` is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere.
    """
    from ..encoders.compute import resolve_precision

    precision = resolve_precision(backbone.device, precision, cpu_bf16=True)
    use_cache = use_cache and not backbone.weights_id.endswith(":random")  # drawn anew by each load
    identity = [backbone.weights_id, backbone.spec, backbone.uses_quick_gelu, precision, "unnormalised"]
    key = hashlib.sha256(json.dumps([*identity, list(texts)]).encode()).hexdigest()
    path = cache_dir() / "text" / f"{key[:32]}.safetensors"
    embeddings = _read_cached(path) if use_cache else None
    if embeddings is None or len(embeddings) != len(texts):
        embeddings = _encode_by_length(backbone, texts, batch_size, precision)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:  # a concurrent reader never sees half a file
                save_file({"embeddings": embeddings.contiguous()}, tmp)
    return torch.nn.functional.normalize(embeddings, dim=-1) if normalize else embeddings


def _read_cached(path: Path) -> torch.Tensor | None:
    try:
        return load_file(path)["embeddings"]
    except (OSError, KeyError, SafetensorError):  # absent, or damaged (a full disk): encode again
        return None


def _encode_by_length(backbone, texts, batch_size: int, precision: str) -> torch.Tensor:
    """The text tower's output for ``texts`` in batches of similar token length, float32 on CPU.

    The tower runs each batch up to its longest text (``Backbone.encode_text``), so sorting by length
    leaves little padding: the 2 x 1,000 default prompts average 9 of 77 tokens.
    """
    from ..encoders.compute import autocast, threads_beside_workers

    tokens = backbone.tokenize(list(texts))
    # by length, then by the tokens themselves: prompts of one adjective share a batch and its first words
    keys = [*tokens.T.flip(0).cpu().numpy(), backbone.text_lengths(tokens).cpu().numpy()]
    order = torch.from_numpy(np.lexsort(keys))
    chunks = []
    with (
        threads_beside_workers(0, backbone.device),  # no more threads than idle cores
        progress_bar(len(texts), "encoding prompts (cached after)") as advance,
    ):
        for start in range(0, len(texts), batch_size):
            batch = tokens[order[start : start + batch_size]]
            with autocast(backbone.device, precision):
                chunks.append(backbone.encode_text(batch).float().cpu())
            advance(len(batch))
    embeddings = torch.empty_like(torch.cat(chunks))
    embeddings[order] = torch.cat(chunks)
    return embeddings
