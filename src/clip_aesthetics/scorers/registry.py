"""Scorer files: save any scorer, load it back by the ``method`` its config names.

A scorer with trained tensors is one ``.safetensors`` file whose metadata holds the JSON config; a scorer
without (zero-shot prompts) may be a plain ``.json`` file. Either names its backbone, so
``load_scorer(path)`` rebuilds everything needed to score new images. :func:`read_scorer_config` is the one
reader of a file's config (cheap: no tensors are read).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .. import __version__
from ..encoders.backbones import Backbone, load_backbone
from ..fileio import atomic_path, atomic_write_text, read_text

METADATA_KEY = "clip_aesthetics"
SCORERS: dict[str, type] = {}


def register_scorer(cls: type) -> type:
    """Class decorator: make a :class:`~clip_aesthetics.scorers.base.Scorer` subclass loadable by its
    ``method`` name (``save_scorer`` writes its ``config()`` and ``tensors()``; ``load_scorer`` calls its
    ``from_saved``)."""
    if cls.method in SCORERS and SCORERS[cls.method] is not cls:
        raise ValueError(f"scorer method {cls.method!r} is already registered by {SCORERS[cls.method]}")
    SCORERS[cls.method] = cls
    return cls


def save_scorer(scorer, path: str | os.PathLike, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``scorer``'s config and tensors to ``path`` (``.json`` only for tensor-free scorers), atomically.

    A scorer whose tensors its config can rebuild (``config_rebuilds_tensors``: zero-shot prompts, encoded
    again on load) may be saved as ``.json`` too, without them.

    Args:
        scorer: anything with ``method``, ``config()`` and ``tensors()`` (every registered scorer).
        tensors: tensors to store instead of ``scorer.tensors()`` (the trainer saves its best epoch's).
    """
    path = Path(path)
    config = {**scorer.config(), "version": __version__}
    tensors = scorer.tensors() if tensors is None else tensors
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        if tensors and not getattr(scorer, "config_rebuilds_tensors", False):
            raise ValueError(f"{scorer.method} scorers hold tensors: save them as .safetensors, not .json")
        return atomic_write_text(path, json.dumps(config, indent=2))
    if path.suffix != ".safetensors":
        raise ValueError(f"scorer files end in .json or .safetensors, not {path.suffix!r}")
    contiguous = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous or {"_empty": torch.zeros(1)}, tmp, metadata={METADATA_KEY: json.dumps(config)})
    return path


def _version(text: object) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(".")[:2])
    except ValueError:
        return ()


def _checked_config(path: Path, text: str) -> dict:
    """The parsed config of a scorer file, refused unless it has the shape every loader relies on."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the scorer config is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("method"), str):
        raise ValueError(f"{path}: the scorer config must be a JSON object with a 'method' name")
    backbone = config.get("backbone")
    if not isinstance(backbone, dict) or not isinstance(backbone.get("model"), str):
        raise ValueError(f"{path}: the scorer config must name its backbone as {{'model': ..., ...}}")
    if _version(config.get("version")) > _version(__version__):
        raise ValueError(
            f"{path} was written by clip-aesthetics {config['version']}, newer than this {__version__}; "
            "upgrade to load it"
        )
    return config


def _checked_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scorer file not found: {path}")
    if path.suffix not in (".json", ".safetensors"):
        hint = " (a LAION aesthetic head? pass --scorer laion:PATH)" if path.suffix in (".pth", ".pt") else ""
        raise ValueError(f"{path} is not a scorer file: they end in .json or .safetensors{hint}")
    return path


def read_scorer_file(
    path: str | os.PathLike, *, config_only: bool = False
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and tensors (none with ``config_only``) of a scorer file; ValueError if malformed."""
    path = _checked_path(path)
    if path.suffix == ".json":
        return _checked_config(path, read_text(path)), {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if METADATA_KEY not in metadata:
                raise ValueError(f"{path} is a safetensors file but not a clip-aesthetics scorer (no config)")
            config = _checked_config(path, metadata[METADATA_KEY])
            keys = [] if config_only else [k for k in handle.keys() if k != "_empty"]  # noqa: SIM118
            tensors = {k: handle.get_tensor(k) for k in keys}
    except SafetensorError as exc:  # truncated or crafted: safetensors' own error is a bare Exception
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    return config, tensors


def read_scorer_config(path: str | os.PathLike) -> dict:
    """The config a scorer file carries, without reading its tensors or loading a backbone."""
    return read_scorer_file(path, config_only=True)[0]


def scorer_file_method(path: str | os.PathLike) -> str:
    """The ``method`` a scorer file declares (``zeroshot``, ``probe``, ``finetune``, ...)."""
    return read_scorer_config(path)["method"]


def scorer_class(method: str | None, source: str | os.PathLike = "") -> type:
    """The registered class of ``method``."""
    if method not in SCORERS:
        raise ValueError(f"{source}: unknown scorer method {method!r} (known: {', '.join(sorted(SCORERS))})")
    return SCORERS[method]


def load_scorer(path: str | os.PathLike, *, device: str | None = None, backbone: Backbone | None = None):
    """Load a scorer file; its backbone is loaded from the spec it names unless one is given.

    Passing ``backbone`` puts the head on an encoder already loaded, so several heads share it (see
    :meth:`~clip_aesthetics.scorers.base.Scorer.encoder_key`).
    """
    config, tensors = read_scorer_file(path)
    return scorer_from_saved(config, tensors, device=device, backbone=backbone, source=path)


def scorer_from_saved(
    config: dict,
    tensors: dict,
    *,
    device: str | None = None,
    backbone: Backbone | None = None,
    source: str | os.PathLike = "",
):
    """The scorer a config and its tensors describe (a scorer file's contents, or a head handed over in
    memory); its backbone is loaded from the spec the config names unless one is given."""
    cls = scorer_class(config.get("method"), source)
    try:
        if backbone is None:
            backbone = backbone_for(config, device)
        return cls.from_saved(config, tensors, backbone).eval()
    except (KeyError, AttributeError, TypeError, IndexError) as exc:  # a field of the wrong shape or missing
        problem = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{source}: malformed {cls.method} scorer config ({problem})") from None


def backbone_for(config: dict, device: str | None = None) -> Backbone:
    """The backbone a scorer config names.

    A scorer whose file holds its whole image tower (fine-tuned) is rebuilt on random weights of the same
    architecture, activation and preprocessing, so it can be shared without the base model's weights.
    """
    cls, spec = scorer_class(config.get("method")), config["backbone"]
    own_tower = getattr(cls, "holds_tower_weights", False) and "quick_gelu" in spec
    if own_tower and not spec["model"].split("timm:")[-1].startswith(("hf-hub:", "local-dir:")):
        candidate = load_backbone(spec["model"], "none", device=device, quick_gelu=spec["quick_gelu"] or None)
        if json.dumps(candidate.preprocess_cfg.to_dict()) == json.dumps(spec["preprocess"]):
            return candidate
    recorded = spec.get("preprocess")  # as the head was made (the paper's MIIL ResNet-50: timm's default)
    preprocess = recorded if isinstance(recorded, dict) else None
    return load_backbone(spec["model"], spec.get("pretrained"), device=device, preprocess=preprocess)
