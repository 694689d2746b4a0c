"""Finding pretrained weights: the Hugging Face cache first, a download only when the hub is reachable.

``hf_hub_download`` retries for about half a minute per file when there is no network. A user without
network (or with a typo in a tag) should instead get one clear line at once that says what to download
or which flag to pass, so every hub file goes through :func:`hub_file` here.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable right now."""


def cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """Path of the first of ``filenames`` present in the local Hugging Face cache, else None."""
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


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
