"""Finding pretrained weights: the Hugging Face cache first, a download only when the hub is reachable.

``hf_hub_download`` retries for about half a minute per file when there is no network. A user without
network (or with a typo in a tag) should instead get one clear line at once that says what to download
or which flag to pass, so every hub file goes through :func:`hub_file` here.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from ..fileio import file_digest


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable right now."""


def cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """Path of the first of ``filenames`` present in the local Hugging Face cache, else None."""
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def snapshot_identity(cached_file: str | os.PathLike) -> str:
    """``<revision>:sha256:<hex>`` of a file in the Hugging Face cache: which weights were actually loaded.

    A tag or a hub name resolves through ``refs/main`` to ``snapshots/<commit>/FILE``; when the ref moves
    (a newer upload, another cache copied in) the same name gives other weights, so every cache keys on
    this instead. The content digest is free where the hub left it: a snapshot file links to
    ``blobs/<sha256>`` (large files are stored under their sha256); a plain copy is hashed once per process.
    """
    path = Path(cached_file)
    parts = path.parts[:-1]
    at = max((i for i, part in enumerate(parts) if part == "snapshots"), default=None)
    revision = parts[at + 1] if at is not None and at + 1 < len(parts) else "local"
    blob = Path(os.path.realpath(path))
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return f"{revision}:sha256:{blob.name}"
    return f"{revision}:{file_digest(path)}"


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face endpoint answers a TCP connection within ``timeout`` seconds."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(hf_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_file(repo_id: str, filenames: tuple[str, ...], what: str, offline_hint: str) -> str:
    """Local path of a hub file: from the cache, else downloaded, else a clear error at once.

    Args:
        repo_id: Hugging Face repository, e.g. ``timm/vit_base_patch32_clip_224.openai``.
        filenames: candidate file names in order of preference (safetensors first).
        what: human description used in the error ("ViT-B-32 weights 'openai'").
        offline_hint: the flag that avoids the hub, appended to the error.
    """
    found = cached_hub_file(repo_id, filenames)
    if found:
        return found
    if not hub_reachable():
        raise WeightsNotFoundError(
            f"{what} are not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) and the hub cannot be "
            f"reached. On a connected machine run `hf download {repo_id}` (then copy the cache), "
            f"or {offline_hint}."
        )
    errors = []
    for name in filenames:
        try:
            return hf_hub_download(repo_id, name)
        except Exception as exc:  # the next candidate name may exist; report all if none does
            errors.append(f"{name}: {type(exc).__name__}")
    raise WeightsNotFoundError(f"{what}: no weights file in hub repo {repo_id} ({'; '.join(errors)}).")


MIIL_RESNET50_FILE = "resnet50_miil_21k.pth"  # not on the Hugging Face hub: a file the user downloads

# (model, pretrained, role in the paper or in practice): what `clip-aesthetics models` lists.
KNOWN_BACKBONES = (
    ("ViT-B-32", "openai", "CLIP ViT-B/32, the paper's model (default)"),
    ("RN50", "openai", "CLIP ResNet-50, paper's probe comparison"),
    ("ViT-B-16", "openai", "CLIP ViT-B/16"),
    ("ViT-L-14", "openai", "CLIP ViT-L/14, base of the LAION aesthetic predictor"),
    ("ViT-B-32", "laion2b_s34b_b79k", "OpenCLIP ViT-B/32 trained on LAION-2B"),
    ("timm:vit_base_patch32_224.augreg_in21k", None, "ImageNet-21k ViT-B/32, paper's baseline"),
    (
        "timm:resnet50",
        MIIL_RESNET50_FILE,
        "ImageNet-21k ResNet-50 (Alibaba-MIIL), paper's baseline: weights file from "
        "github.com/Alibaba-MIIL/ImageNet21K, given with --pretrained",
    ),
    (
        "timm:resnetv2_50x1_bit.goog_in21k",
        None,
        "ImageNet-21k ResNet-50 (BiT), a substitute for the paper's MIIL ResNet-50",
    ),
    ("timm:resnet50.a1_in1k", None, "ImageNet-1k ResNet-50"),
)


def weights_location(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """(Hugging Face repo, cached file or None) of an open_clip model or a ``timm:NAME`` model."""
    if pretrained == MIIL_RESNET50_FILE:
        return "-", None
    if model.startswith("timm:"):
        import timm  # here, not at the top: the registries cost seconds to import

        repo = timm.models.get_pretrained_cfg(model.removeprefix("timm:")).hf_hub_id
        return repo, cached_hub_file(repo, ("model.safetensors", "pytorch_model.bin"))
    import open_clip

    hf_hub = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub", "").rstrip("/")
    return hf_hub, cached_hub_file(hf_hub, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))


def backbone_rows() -> list[dict]:
    """The known backbones with their weights' repository and whether the weights are cached here."""
    rows = []
    for model, pretrained, what in KNOWN_BACKBONES:
        repo, cached = weights_location(model, pretrained)
        rows.append(
            {"model": model, "pretrained": pretrained, "offline": bool(cached), "what": what, "repo": repo}
        )
    return rows
