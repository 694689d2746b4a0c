"""Shared fixtures: tiny open_clip and timm models saved in real file layouts, and photo-like images.

Everything is offline: the Hugging Face cache and our own cache point into a temporary folder and the hub
is marked offline before any library reads its settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="clip-aesthetics-tests-"))
os.environ["HF_HUB_CACHE"] = str(_SESSION_DIR / "hf-cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CLIP_AESTHETICS_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["CLIP_AESTHETICS_CPU_BF16"] = "0"  # auto = fp32 on any CPU: tests compare with open_clip exactly

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# A tiny CLIP keeping the real 49408-token vocabulary, so open_clip's bundled tokenizer works unchanged.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_open_clip_dir(folder: Path, model_cfg: dict, seed: int = 0, dtype=torch.float32) -> Path:
    """Build an open_clip model with random weights and save it in the ``local-dir:`` / hub layout."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    return folder


def hub_snapshot(repo_id: str) -> Path:
    """The snapshot folder a file of ``repo_id`` has in the Hugging Face cache layout (refs/main -> hash)."""
    repo_dir = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    return repo_dir / "snapshots" / ("0" * 40)


def console_text(result) -> str:
    """A CLI run's output with rich's line wrapping undone: words joined by single spaces.

    rich wraps console lines to the terminal width (``COLUMNS``), so a phrase can be split across lines;
    assert on files and data first, and on a message only through this.
    """
    return " ".join(result.output.split())


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tiny_clip_dir(session_dir: Path) -> Path:
    return save_open_clip_dir(session_dir / "tiny-clip", TINY_CLIP_CONFIG)


@pytest.fixture(scope="session")
def tiny_clip_spec(tiny_clip_dir: Path) -> str:
    return f"local-dir:{tiny_clip_dir}"


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A photo-like RGB image: a gradient sky, a ground and a coloured disc."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = top + (bottom - top) * (y / height)[..., None]
    cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(0.1, 0.3) * height
    image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 8, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """Eight readable photos, JPEG and PNG, two in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(8):
        target = folder / "sub" if i >= 6 else folder
        photo(i).save(target / f"img{i}.{'png' if i % 3 == 0 else 'jpg'}")
    return folder
