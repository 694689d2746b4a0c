"""The paper's model is recognised by its weights' content, whichever route they come by (issue 19: 7, 8).

The OpenAI ViT-B/32 weights are stood in for by the real architecture with random weights, placed where the
``openai`` tag's file lives in a Hugging Face cache (the fixture of test_backbones.py). Whether QuickGELU is
on is checked against open_clip's own ``ViT-B-32-quickgelu`` / ``ViT-B-32`` models on the same file.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clip_aesthetics import load_backbone
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.encoders.known_weights import identify
from clip_aesthetics.study.reproduce import ReproduceConfig, Study
from test_backbones import real_vit_b32_openai_cache  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
PIXELS = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _features(backbone) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.encode_image(PIXELS)


def _open_clip_features(name: str, weights: Path) -> torch.Tensor:
    model = open_clip.create_model(name, pretrained=str(weights)).eval()
    with torch.inference_mode():
        return model.encode_image(PIXELS)


@pytest.fixture(scope="module")
def openai_file(real_vit_b32_openai_cache: Path) -> Path:  # noqa: F811
    load_backbone("ViT-B-32", "openai", device="cpu")  # the tag's file: from now on known by its content
    return real_vit_b32_openai_cache


def test_the_same_weights_give_the_same_model_whatever_the_file_name(
    openai_file: Path, tmp_path: Path
) -> None:
    hub_name, tag_name = tmp_path / "open_clip_model.safetensors", tmp_path / "ViT-B-32-openai.safetensors"
    for copy in (hub_name, tag_name):
        shutil.copyfile(openai_file, copy)
    first, second = (load_backbone("ViT-B-32", str(p), device="cpu") for p in (hub_name, tag_name))
    assert first.uses_quick_gelu and second.uses_quick_gelu
    assert first.known_weights == second.known_weights == "ViT-B-32:openai"
    expected = _open_clip_features("ViT-B-32-quickgelu", openai_file)  # OpenAI's activation
    torch.testing.assert_close(_features(first), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_features(second), expected, rtol=0, atol=1e-5)


def test_unknown_weights_keep_gelu_whatever_the_name_and_say_which_option_decides(tmp_path: Path) -> None:
    torch.manual_seed(11)  # not the tag's weights
    state = open_clip.create_model("ViT-B-32").state_dict()
    named = tmp_path / "ViT-B-32-openai.safetensors"  # a name that used to switch QuickGELU on
    save_file({k: v.half().contiguous() for k, v in state.items()}, named)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = load_backbone("ViT-B-32", str(named), device="cpu")
    assert not backbone.uses_quick_gelu and backbone.known_weights is None
    assert any("--model ViT-B-32-quickgelu" in str(w.message) for w in caught)
    torch.testing.assert_close(_features(backbone), _open_clip_features("ViT-B-32", named), rtol=0, atol=1e-5)
    assert load_backbone("ViT-B-32-quickgelu", str(named), device="cpu").uses_quick_gelu  # the option named


def test_a_local_dir_of_the_paper_weights_is_recognised(openai_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copyfile(openai_file, folder / "open_clip_model.safetensors")
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32"), "preprocess_cfg": {}}  # says GELU
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    backbone = load_backbone(f"local-dir:{folder}", device="cpu")
    assert backbone.known_weights == "ViT-B-32:openai" and backbone.uses_quick_gelu  # the weights decide


def test_paper_rows_attach_to_weights_given_offline(openai_file: Path, tmp_path: Path) -> None:
    ava = make_synthetic_ava(tmp_path / "AVA_dataset", n=12, seed=0, size=40)
    copy = tmp_path / "downloaded" / "open_clip_model.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(openai_file, copy)
    config = ReproduceConfig(ava=str(ava), out=str(tmp_path / "out"), pretrained=str(copy), device="cpu")
    study = Study(config, log=lambda _: None)
    assert study._weights_key("ViT-B-32", str(copy)) == "ViT-B-32:openai"  # the published rows' key
    assert study._weights_departure("ViT-B-32", str(copy)) == ""


def test_openai_checkpoints_are_known_by_the_digest_in_their_url() -> None:
    url = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["url"]
    known = identify("sha256:" + url.split("/")[-2])
    assert known is not None and known.label == "ViT-B-32:openai" and known.quick_gelu
    assert identify("sha256:" + "0" * 64) is None
