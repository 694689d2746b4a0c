"""Backbones: CLIP models from open_clip and ImageNet models from timm behind one small interface.

A backbone spec follows open_clip: ``ViT-B-32`` with ``pretrained`` = a tag (``openai``), a file path or
``none`` (random weights); ``hf-hub:org/repo``; ``local-dir:/path`` (``open_clip_config.json`` plus weights);
and ``timm:<name>`` for ImageNet baselines, where ``<name>`` is anything ``timm.create_model`` accepts.

Images reach a backbone as uint8 batches (N, 3, H, W) already resized and cropped by the image pipeline;
:meth:`Backbone.normalize` turns them into the model's input on its own device, so only bytes cross PCIe.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import timm
import torch
from torch import nn

from ..constants import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..fileio import file_digest, folder_digest
from .known_weights import KnownWeights, architecture, identify_file, remember, weights_file
from .weights import WeightsNotFoundError, hub_file, snapshot_identity

RANDOM_WEIGHTS = ("none", "random")
_OPEN_CLIP_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TIMM_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class PreprocessConfig:
    """What the image pipeline must do before a model sees an image.

    The shorter side is resized to ``resize_size`` and the centre ``size`` x ``size`` crop is kept
    (``resize_mode='shortest'``), or the image is squashed to ``size`` x ``size`` (``'squash'``).
    """

    size: int
    resize_size: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = open_clip.OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = open_clip.OPENAI_DATASET_STD
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"unsupported resize mode {self.resize_mode!r} (supported: shortest, squash)")

    def to_dict(self) -> dict:
        return asdict(self)


class Backbone(nn.Module):
    """A CLIP or ImageNet image model with its preprocessing, tokenizer (CLIP) and identity.

    Attributes:
        spec: the model spec the user gave (``ViT-B-32``, ``timm:resnet50``, ``local-dir:...``).
        pretrained: the weights tag or file, ``none`` for random weights, None where the spec names them.
        kind: ``clip`` or ``timm``.
        feature_dim: width of :meth:`encode_image` output.
        preprocess_cfg: the model's own preprocessing.
        known_weights: the published weights these are (``ViT-B-32:openai``), recognised by their content
            whatever route they came by (:mod:`~clip_aesthetics.encoders.known_weights`); None when unknown.
        weights_id: the weights' identity, which changes whenever the weights do (caches are keyed on it):
            a tag, a hub repository at its revision, or the sha256 of a weights file or local-dir folder.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        spec: str,
        pretrained: str | None,
        kind: str,
        preprocess_cfg: PreprocessConfig,
        weights_id: str,
        tokenizer=None,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.pretrained = pretrained
        self.kind = kind
        self.preprocess_cfg = preprocess_cfg
        self.weights_id = weights_id
        self.known_weights: str | None = None  # published weights recognised by content: "ViT-B-32:openai"
        self._tokenizer = tokenizer
        self.register_buffer("_mean", torch.tensor(preprocess_cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(preprocess_cfg.std).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = self._probe_feature_dim()

    @property
    def has_text(self) -> bool:
        return self.kind == "clip"

    @property
    def uses_quick_gelu(self) -> bool:
        """Whether the model uses OpenAI's QuickGELU activation (needed to rebuild it for its weights)."""
        return any(isinstance(m, open_clip.transformer.QuickGELU) for m in self.model.modules())

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def describe(self) -> dict:
        """JSON-serialisable description, stored in every file made with this backbone."""
        return {
            "model": self.spec,
            "pretrained": self.pretrained,
            "kind": self.kind,
            "feature_dim": self.feature_dim,
            "preprocess": self.preprocess_cfg.to_dict(),
            "weights_id": self.weights_id,
            "quick_gelu": self.uses_quick_gelu,
        }

    def set_preprocessing(self, preprocess: PreprocessConfig | dict) -> None:
        """Preprocess images another way than the model's own (as a scorer file records it)."""
        if isinstance(preprocess, dict):
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()}
            preprocess = PreprocessConfig(**fields)
        self.preprocess_cfg = preprocess
        self._mean.copy_(torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self._std.copy_(torch.tensor(preprocess.std).view(1, 3, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) in 0..255 -> float model input, on the backbone's device."""
        images = images.to(self.device, non_blocking=True)
        return (images.float() / 255.0 - self._mean) / self._std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features: CLIP's projected embedding, or a timm model's pre-logits features."""
        if self.device.type == "cpu" and _cpu_bf16_autocast():
            # CPU autocast re-casts every weight on every call; a bf16 copy of the tower is ~2x faster
            with torch.autocast("cpu", enabled=False):
                return self._bf16_image_tower()(pixels.to(torch.bfloat16))
        return self._image_tower()(pixels)

    def _image_tower(self) -> nn.Module:
        return self.model.visual if self.kind == "clip" else self.model

    def _bf16_image_tower(self) -> nn.Module:
        tower = self.__dict__.get("_bf16_tower")  # kept out of the module tree: not saved, not moved
        if tower is None:
            tower = copy.deepcopy(self._image_tower()).to(torch.bfloat16).eval()
            self.__dict__["_bf16_tower"] = tower
        return tower

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP text embeddings (unnormalised) of tokenized texts (N, context length).

        A causal text tower (CLIP's own) is run only up to the position it pools from, the batch's longest
        text: the padding after it cannot change the result, and a prompt of a dozen tokens then costs a
        sixth of the 77-token context. Other towers (Hugging Face text models) see the whole context.
        """
        if not self.has_text:
            raise TypeError(f"{self.spec} is an image-only model: it has no text encoder")
        tokens = tokens.to(self.device)
        causal = self._causal_text()
        return self.model.encode_text(tokens) if causal is None else causal.encode(tokens)

    def text_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens the text tower must see for each text: up to the pooled one, or the whole context."""
        causal = self._causal_text() if self.has_text else None
        if causal is None:
            return torch.full((len(tokens),), tokens.shape[-1])
        return causal.pool_index(tokens) + 1

    def _causal_text(self) -> CausalTextTower | None:
        if "_causal_tower" not in self.__dict__:  # decided once; kept out of the module tree (not saved)
            self.__dict__["_causal_tower"] = causal_text_tower(self.model)
        return self.__dict__["_causal_tower"]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if not self.has_text:
            raise TypeError(f"{self.spec} is an image-only model: it has no tokenizer")
        return self._tokenizer(texts)

    def _probe_feature_dim(self) -> int:
        if self.kind == "clip":
            return int(self.model.visual.output_dim)
        return int(self.model.num_features)


@dataclass(frozen=True)
class CausalTextTower:
    """An open_clip text transformer whose pooled output depends only on the tokens up to the pooled one.

    That holds for CLIP's text tower (and a ``CustomTextCLIP``'s ``TextTransformer``) with its causal mask
    and argmax/eos/first pooling: each position attends to earlier positions only, every other layer works
    per token. :meth:`encode` repeats open_clip's ``encode_text`` on the first ``L`` tokens, and computes
    the positions every text of a batch shares ("a outstanding picture of a ...") once.
    """

    tower: nn.Module  # holds token_embedding, positional_embedding, transformer, ln_final, text_projection
    pool_type: str
    eos_id: int | None
    shares_prefix: bool = False  # standard blocks: a prefix common to the batch can be computed once

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """The position pooled from (open_clip's ``text_global_pool``): EOT (argmax), eos, or the first."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        tower, index = self.tower, self.pool_index(tokens)
        length = int(index.max()) + 1 if len(tokens) else 1
        tokens = tokens[:, :length]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
        mask = tower.attn_mask[:length, :length]
        shared = _common_prefix(tokens) if self.shares_prefix else 0
        if shared >= 2:  # "a outstanding picture of a": 6 of the default prompts' 9 tokens on average
            x = _with_shared_prefix(tower.transformer.resblocks, x, mask, shared)
        else:
            x = tower.transformer(x, attn_mask=mask)
        x = tower.ln_final(x)[torch.arange(len(tokens), device=x.device), index]
        projection = tower.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _common_prefix(tokens: torch.Tensor) -> int:
    """Leading positions where every row has the same token (at most all but the last position)."""
    same = (tokens == tokens[:1]).all(dim=0).int()
    return min(int(same.cumprod(dim=0).sum()), tokens.shape[1] - 1)


def _with_shared_prefix(
    blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor, shared: int
) -> torch.Tensor:
    """The transformer's output for a batch whose first ``shared`` positions are alike in every row.

    Causal positions never see later ones, so the shared positions are computed once (batch of one); the
    other positions take them as keys and values. Each step is ``ResidualAttentionBlock.forward``'s, with
    queries from the rest only.
    """
    head, rest = x[:1, :shared], x[:, shared:]
    for block in blocks:
        keys = block.ln_1(torch.cat([head.expand(len(rest), -1, -1), rest], dim=1))
        attended = block.attention(q_x=keys[:, shared:], k_x=keys, v_x=keys, attn_mask=mask[shared:])
        rest = rest + block.ls_1(attended)
        rest = rest + block.ls_2(block.mlp(block.ln_2(rest)))
        head = block(head, attn_mask=mask[:shared, :shared])
    return torch.cat([head.expand(len(rest), -1, -1), rest], dim=1)


_PER_TOKEN_BLOCKS = (
    open_clip.transformer.ResidualAttentionBlock,
    open_clip.transformer.CustomResidualAttentionBlock,
)


def causal_text_tower(model: nn.Module) -> CausalTextTower | None:
    """The model's text tower when running it on fewer tokens is exact by construction, else None.

    Checked, not assumed: the very open_clip classes whose code :meth:`CausalTextTower.encode` repeats, a
    strictly causal mask, no class token or padding mask (both see the tokens after the text), a pooling
    that picks one position, and blocks in which only the masked attention mixes positions.
    """
    layers = open_clip.transformer
    if type(model) is open_clip.CLIP:
        tower, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif type(model) is open_clip.CustomTextCLIP and type(model.text) is layers.TextTransformer:
        tower, pool_type, eos_id = model.text, model.text.pool_type, model.text.eos_id
        if tower.cls_emb is not None or tower.use_pad_mask or tower.output_tokens:
            return None
    else:
        return None  # e.g. a Hugging Face text model: bidirectional, keep the full context
    blocks = getattr(tower.transformer, "resblocks", ())
    if (
        pool_type not in ("argmax", "eos", "first")
        or type(tower.transformer) not in (layers.Transformer, layers.CustomTransformer)
        or not all(type(block) in _PER_TOKEN_BLOCKS for block in blocks)
        or not _is_causal_mask(tower.attn_mask)
    ):
        return None
    standard = type(tower.transformer) is layers.Transformer and tower.transformer.batch_first
    standard = standard and all(
        type(block) is layers.ResidualAttentionBlock and not hasattr(block, "ln_1_kv") for block in blocks
    )
    return CausalTextTower(tower, pool_type, eos_id, shares_prefix=standard)


def _is_causal_mask(mask: torch.Tensor | None) -> bool:
    """An additive mask that hides exactly the later positions (-inf above the diagonal, 0 elsewhere)."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1] or not mask.is_floating_point():
        return False
    later = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.equal(torch.isneginf(mask), later) and (mask[~later] == 0).all())


def _cpu_bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _hub_identity(repo: str, cached_file: str) -> str:
    """``repo@revision:sha256:...``: the snapshot and the weights file actually loaded from the cache."""
    return f"{repo}@{snapshot_identity(cached_file)}"


def _clip_preprocess(model: nn.Module) -> PreprocessConfig:
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size if isinstance(size, int) else int(size[0])
    return PreprocessConfig(
        size=size,
        resize_size=size,
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )


def _quick_gelu_for_file(name: str, path: str) -> bool:
    """QuickGELU for a weights file: what its content is known to need, never what its name suggests.

    Unknown content (see :mod:`~clip_aesthetics.encoders.known_weights`) of an architecture that has QuickGELU
    weights (OpenAI's) gets the architecture's own GELU and a warning naming the ``-quickgelu`` model.
    """
    known = identify_file(path)
    if known is not None:
        return known.quick_gelu
    base = architecture(name)
    if name == base and any(
        open_clip.get_pretrained_cfg(base, tag).get("quick_gelu")
        for tag in open_clip.list_pretrained_tags_by_model(base)
    ):
        warnings.warn(
            f"{path}: cannot tell from its content whether these are OpenAI's weights (trained with "
            f"QuickGELU); using {name} as configured (GELU). If they are, pass --model {base}-quickgelu",
            stacklevel=4,
        )
    return name != base


def _known_in_folder(folder: str | os.PathLike, kwargs: dict, quick_gelu: bool | None) -> KnownWeights | None:
    """The known weights of a local-dir/hub folder; their activation unless one is forced."""
    weights = weights_file(folder)
    known = identify_file(weights) if weights is not None else None
    if known is not None and known.quick_gelu and quick_gelu is None:
        kwargs["force_quick_gelu"] = True  # the folder's config may say GELU: the weights decide
    return known


def _local_dir_checked(path: str) -> str:
    folder = Path(path).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise WeightsNotFoundError(f"local-dir:{path} has no open_clip_config.json")
    if not any(next(folder.glob(pattern), None) for pattern in ("*.safetensors", "*.bin", "*.pth")):
        raise WeightsNotFoundError(
            f"local-dir:{path} has no weights file (expected open_clip_model.safetensors beside the config)"
        )
    return str(folder.resolve())


def _load_open_clip(spec: str, pretrained: str | None, quick_gelu: bool | None) -> Backbone:
    kwargs: dict = {}
    if spec.startswith(("hf-hub:", "local-dir:")) and pretrained is not None:
        # such a model brings its own weights: a --pretrained (even 'none') would be silently ignored
        raise ValueError(
            f"{spec.split(':')[0]}: models bring their own weights: drop --pretrained {pretrained} "
            "(random weights: name the architecture, e.g. --model ViT-B-32 --pretrained none)"
        )
    if spec.startswith("hf-hub:"):
        repo = spec.removeprefix("hf-hub:")
        hint = "pass --model local-dir:FOLDER with open_clip_config.json and the weights"
        config = hub_file(repo, ("open_clip_config.json",), f"config of {repo}", hint)
        weights = hub_file(repo, _OPEN_CLIP_WEIGHT_NAMES, f"weights of {repo}", hint)
        # both files sit in one cache snapshot folder: load it as a local dir, nothing touches the network
        name, weights_id = f"local-dir:{Path(config).parent}", f"hf-hub:{_hub_identity(repo, weights)}"
        known = _known_in_folder(Path(config).parent, kwargs, quick_gelu)
    elif spec.startswith("local-dir:"):
        folder = _local_dir_checked(spec.removeprefix("local-dir:"))
        name, weights_id = f"local-dir:{folder}", folder_digest(folder)
        known = _known_in_folder(folder, kwargs, quick_gelu)
    else:
        name = spec.replace("/", "-")
        if name not in open_clip.list_models():
            raise ValueError(
                f"unknown model {spec!r}: see `clip-aesthetics models` or open_clip.list_models()"
            )
        pretrained = DEFAULT_PRETRAINED if pretrained is None else pretrained
        known = None
        if pretrained in RANDOM_WEIGHTS:
            kwargs["force_quick_gelu"] = bool(quick_gelu)
            weights_id = f"{name}:random"
        elif os.path.isfile(pretrained):
            kwargs["pretrained"] = pretrained
            known = identify_file(pretrained)
            kwargs["force_quick_gelu"] = (
                _quick_gelu_for_file(name, pretrained) if quick_gelu is None else quick_gelu
            )
            weights_id = file_digest(pretrained)
        else:
            cfg = open_clip.get_pretrained_cfg(name, pretrained)
            if not cfg:
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
                raise WeightsNotFoundError(
                    f"--pretrained {pretrained!r} is neither a file nor a known tag of {name} (tags: {tags})"
                )
            kwargs["pretrained"] = _tag_file(name, pretrained, cfg)
            known = KnownWeights(architecture(name), pretrained, bool(cfg.get("quick_gelu")))
            remember(kwargs["pretrained"], known)  # the same file given by another route is then known
            # the activation must match the one the weights were trained with (OpenAI weights: QuickGELU)
            kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu")) if quick_gelu is None else quick_gelu
            kwargs["force_preprocess_cfg"] = {
                k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg
            }
            # the tag names the weights only at one hub revision: the snapshot and file loaded say which
            weights_id = f"{name}:{pretrained}@{snapshot_identity(kwargs['pretrained'])}"
    model = open_clip.create_model(name, **kwargs)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    backbone = Backbone(
        model,
        spec=spec,
        pretrained=pretrained if not spec.startswith(("hf-hub:", "local-dir:")) else None,
        kind="clip",
        preprocess_cfg=_clip_preprocess(model),
        weights_id=weights_id,
        tokenizer=tokenizer,
    )
    backbone.known_weights = known.label if known is not None else None
    return backbone


def _tag_file(name: str, tag: str, cfg: dict) -> str:
    hint = f"pass --pretrained /path/to/{name}-{tag}.safetensors"
    repo = cfg.get("hf_hub", "")
    if not repo:
        raise WeightsNotFoundError(
            f"{name}/{tag} weights are only published at {cfg.get('url')}: download that file and {hint}"
        )
    repo_id, filename = os.path.split(repo.rstrip("/")) if not repo.endswith("/") else (repo.rstrip("/"), "")
    names = (
        _OPEN_CLIP_WEIGHT_NAMES
        if not filename
        else (re.sub(r"\.(bin|pth)$", ".safetensors", filename), filename)
    )
    return hub_file(repo_id, tuple(dict.fromkeys(names)), f"{name} weights '{tag}'", hint)


def _timm_preprocess(model: nn.Module) -> PreprocessConfig:
    return _timm_data_preprocess(timm.data.resolve_model_data_config(model))


def timm_default_preprocess(name: str) -> PreprocessConfig:
    """What timm's default configuration of architecture ``name`` does to an image, whatever the weights.

    The paper's authors ran Alibaba-MIIL's ResNet-50 through it (ImageNet mean/std, bicubic, crop 0.95 for
    ``resnet50``) rather than MIIL's own preprocessing.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no default configuration for {name!r}")
    return _timm_data_preprocess(timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict()))


def _timm_data_preprocess(cfg: dict) -> PreprocessConfig:
    size = int(cfg["input_size"][-1])
    crop_pct = cfg.get("crop_pct", 1.0) or 1.0
    mode = cfg.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise ValueError(f"timm crop mode {mode!r} is not supported (supported: center, squash)")
    # timm's eval transform resizes the shorter side to floor(size / crop_pct) and centre-crops `size`
    return PreprocessConfig(
        size=size,
        resize_size=int(size / crop_pct) if mode == "center" else size,
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize_mode="shortest" if mode == "center" else "squash",
    )


def _load_timm(name: str, pretrained: str | None) -> Backbone:
    kwargs: dict = {"num_classes": 0}
    spec = f"timm:{name}"  # as given: a hub name must not be recorded as this machine's cache folder
    if pretrained in RANDOM_WEIGHTS:
        weights_id = f"timm:{name}:random"
    elif pretrained is not None and os.path.isfile(pretrained):
        overlay = {"file": pretrained, **_timm_file_preprocessing(pretrained)}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
        weights_id = file_digest(pretrained)
    elif pretrained is not None:
        raise WeightsNotFoundError(
            f"--pretrained {pretrained!r} for timm:{name} is not a file "
            "(timm models take their weights from the name, a file, or 'none')"
        )
    elif name.startswith("local-dir:"):
        kwargs["pretrained"] = True
        weights_id = folder_digest(Path(name.removeprefix("local-dir:")).expanduser())
    else:
        repo = name.removeprefix("hf-hub:") if name.startswith("hf-hub:") else _timm_hub_id(name)
        hint = f"pass --pretrained /path/to/{name.split('/')[-1]}.safetensors"
        weights = hub_file(repo, _TIMM_WEIGHT_NAMES, f"timm:{name} weights", hint)
        if name.startswith("hf-hub:"):
            hub_file(repo, ("config.json",), f"config of {repo}", hint)
            name = f"local-dir:{Path(weights).parent}"  # config + weights from the cache, no network
            kwargs["pretrained"] = True
        else:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": weights})
        weights_id = f"timm:{_hub_identity(repo, weights)}"
    model = timm.create_model(name, **kwargs)
    model.eval()
    return Backbone(
        model,
        spec=spec,
        pretrained=pretrained,
        kind="timm",
        preprocess_cfg=_timm_preprocess(model),
        weights_id=weights_id,
    )


def _timm_file_preprocessing(path: str) -> dict:
    """Preprocessing a weights file needs beyond its architecture's default, recognised by its name.

    Alibaba-MIIL's ImageNet-21k weights (``resnet50_miil_21k.pth``, the paper's ResNet-50 baseline) expect
    pixels in 0..1 without mean/std normalisation and bilinear resizing, as timm's own MIIL models do.
    """
    if "miil" in Path(path).name.lower():
        return {
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "interpolation": "bilinear",
            "crop_pct": 0.875,
        }
    return {}


def _timm_hub_id(name: str) -> str:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise WeightsNotFoundError(
            f"timm:{name} has no Hugging Face weights: pass --pretrained FILE or 'none'"
        )
    return cfg.hf_hub_id


def load_backbone(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    device: str | None = None,
    quick_gelu: bool | None = None,
    preprocess: PreprocessConfig | dict | None = None,
) -> Backbone:
    """Load a CLIP or timm backbone, weights from a file, a local folder or the Hugging Face cache.

    Args:
        model: ``ViT-B-32``, ``hf-hub:org/repo``, ``local-dir:/path`` or ``timm:<name>``.
        pretrained: for open_clip names a tag (default ``openai``), a file, or ``none`` for random weights;
            for timm a file or ``none`` (default: the weights the name selects).
        device: ``cuda``, ``cpu``, ... (default: CUDA when available).
        quick_gelu: force the activation for a weights file; by default it follows the weights' content.
        preprocess: the image pipeline's preprocessing instead of the model's own (a scorer file's recorded
            one, or :func:`timm_default_preprocess` for the paper's MIIL ResNet-50).

    Raises:
        WeightsNotFoundError: weights are neither cached nor downloadable; the message says what to do.
    """
    if model.startswith("timm:"):
        backbone = _load_timm(model.removeprefix("timm:"), pretrained)
    else:
        backbone = _load_open_clip(model, pretrained, quick_gelu)
    if preprocess is not None:
        backbone.set_preprocessing(preprocess)
    return backbone.to(resolve_device(device))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but CUDA is not available on this machine")
    return resolved
