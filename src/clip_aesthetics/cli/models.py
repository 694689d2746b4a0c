"""`clip-aesthetics models`: the known backbones and whether their weights are on this machine."""

from __future__ import annotations

import open_clip
import timm
from rich.table import Table
from rich.text import Text

from ..weights import cached_hub_file
from .app import app, console

MIIL_RESNET50_FILE = "resnet50_miil_21k.pth"  # not on the Hugging Face hub: a file the user downloads

# (model, pretrained, role in the paper or in practice)
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
    """(Hugging Face repo, cached file or None) for a known backbone."""
    if pretrained == MIIL_RESNET50_FILE:
        return "-", None
    if model.startswith("timm:"):
        repo = timm.models.get_pretrained_cfg(model.removeprefix("timm:")).hf_hub_id
        return repo, cached_hub_file(repo, ("model.safetensors", "pytorch_model.bin"))
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


@app.command()
def models() -> None:
    """List the known backbones and mark which have their weights in the local Hugging Face cache."""
    table = Table(title="Backbones (any open_clip model or timm name also works)")
    for column in ("model", "pretrained", "offline", "what", "Hugging Face repo"):
        table.add_column(column)
    for row in backbone_rows():
        offline = Text("yes", style="green") if row["offline"] else "no"
        table.add_row(row["model"], row["pretrained"] or "-", offline, row["what"], row["repo"])
    console.print(table)
    console.print(
        "Weights download to the Hugging Face cache on first use; offline, pass "
        "--pretrained FILE or --model local-dir:FOLDER.",
        highlight=False,
    )
