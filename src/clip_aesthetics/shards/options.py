"""What a shard run is asked to do; light to import (the CLI builds these before loading any model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..encoders.prompts import PromptGroups


@dataclass(frozen=True)
class ScorerRecipe:
    """How to build the scorer, picklable so that Ray actors can build their own copy."""

    source: str = "zeroshot"
    model: str | None = None
    pretrained: str | None = None
    prompts: PromptGroups | None = None
    formula: str | None = None  # the zero-shot score (--zeroshot-score)

    def build(self, device: str | None = None):
        from ..runs.score import build_scorer

        return build_scorer(
            self.source, model=self.model, pretrained=self.pretrained, prompts=self.prompts, device=device,
            formula=self.formula,
        )  # fmt: skip


DEFAULT_METADATA = ("url", "caption", "width", "height")  # img2dataset's per-sample fields worth keeping


@dataclass
class EngineOptions:
    """What the engines need besides the scorer; the Ray fields are ignored by the local engine."""

    engine: str = "local"
    batch_size: int = 64
    workers: int | None = None
    precision: str = "auto"
    device: str = "auto"
    max_pixels: int | None = None  # None: the image pipeline's default guard
    draft: bool = True
    embeddings: bool = False
    image_column: str | None = None
    key_column: str | None = None
    metadata: tuple[str, ...] = DEFAULT_METADATA  # fields of each sample's .json (Parquet: columns) kept
    ray_address: str | None = None
    ray_timeout: float = 60.0  # seconds to wait for --ray-address before giving up
    stall_timeout: float = 600.0  # Ray: seconds without a scored batch before the run stops with a message
    actors: int | None = None  # None: from the cluster's CPUs/GPUs (engine_ray.plan_actors)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None

    def read_columns(self) -> dict:
        """What the readers take from a shard besides the image."""
        return {"image_column": self.image_column, "key_column": self.key_column, "metadata": self.metadata}
