"""Recognising published weights by their content, whichever way they reach the tool.

The same weights can come as a tag (``--pretrained openai``, from the Hugging Face cache), a file, a
``local-dir:`` folder or an ``hf-hub:`` repository. What the model must be (OpenAI's weights need QuickGELU)
and which published figures a run reproduces depend on what the weights *are*, so they are recognised by
the sha256 of the weights file, never by its name:

- OpenAI's original checkpoints (``ViT-B-32.pt`` as OpenAI's ``clip`` package downloads them): open_clip's
  pretrained table names each one's sha256 in its URL;
- any file loaded here through a tag: its digest is remembered in ``known_weights.json`` in the
  clip-aesthetics cache (``$CLIP_AESTHETICS_CACHE``), so the same file given later by another route is known.

Weights recognised by neither are unknown: the caller says so and names the option that decides.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from ..fileio import atomic_write_json, file_digest

REGISTRY_NAME = "known_weights.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KnownWeights:
    """Published weights: the open_clip architecture and tag they are, and the activation they need."""

    model: str
    tag: str
    quick_gelu: bool

    @property
    def label(self) -> str:
        """``ViT-B-32:openai``."""
        return f"{self.model}:{self.tag}"


def architecture(name: str) -> str:
    """The open_clip architecture without its activation variant (``ViT-B-32-quickgelu`` -> ``ViT-B-32``)."""
    return name.removesuffix("-quickgelu")


@cache
def _published_digests() -> dict[str, KnownWeights]:
    """sha256 -> weights for every open_clip checkpoint whose URL carries its digest (OpenAI's)."""
    import open_clip

    known = {}
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        parts = str(cfg.get("url", "")).split("/")
        if len(parts) >= 2 and _SHA256.fullmatch(parts[-2]):
            known["sha256:" + parts[-2]] = KnownWeights(architecture(model), tag, bool(cfg.get("quick_gelu")))
    return known


def _registry_path() -> Path:
    from .prompts import cache_dir

    return cache_dir() / REGISTRY_NAME


def _registry() -> dict[str, dict]:
    try:
        data = json.loads(_registry_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def weights_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a weights file; a Hugging Face cache blob is named by it (no need to read it)."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return "sha256:" + real.name
    return file_digest(real)


def identify(digest: str) -> KnownWeights | None:
    """The published weights with this content digest, or None."""
    known = _published_digests().get(digest)
    if known is not None:
        return known
    entry = _registry().get(digest)
    try:
        return KnownWeights(**entry) if isinstance(entry, dict) else None
    except TypeError:  # an entry of another shape: not known
        return None


def identify_file(path: str | os.PathLike) -> KnownWeights | None:
    return identify(weights_digest(path))


def remember(path: str | os.PathLike, weights: KnownWeights) -> None:
    """Record that the file at ``path`` holds ``weights`` (it was loaded through their tag)."""
    digest = weights_digest(path)
    registry = _registry()
    if registry.get(digest) == asdict(weights) or digest in _published_digests():
        return
    registry[digest] = asdict(weights)
    try:
        _registry_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_registry_path(), registry)
    except OSError:  # a read-only cache: the weights are still known by their tag this time
        pass


def weights_file(folder: str | os.PathLike) -> Path | None:
    """The weights file of a ``local-dir:`` folder or hub snapshot (open_clip's names first)."""
    folder = Path(folder)
    for pattern in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "*.safetensors", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None
