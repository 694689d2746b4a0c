"""Scoring stored image embeddings (``score --embeddings`` files) without touching the images.

A ``ranked.embeddings.parquet`` file holds one row per scored image, in input order: ``path`` (text, see
:func:`~clip_aesthetics.fileio.text_name`) and ``embedding`` (float32, the backbone's ``encode_image``
output), and in its metadata the backbone that made them. ``score --from-embeddings FILE --scorer HEAD``
applies any head that scores embeddings (zero-shot prompts, probe, LAION MLP) to them batch by batch, as
LAION-Aesthetics scored LAION-5B from precomputed CLIP embeddings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ..fileio import file_digest, name_from_text, text_name
from ..scorers.base import Scorer
from .score import ScoredBatch, check_embeddings_supported, split_non_finite

EMBEDDINGS_FORMAT = "clip-aesthetics-embeddings"
METADATA_KEY = b"clip_aesthetics"


@dataclass
class StoredEmbeddings:
    """An embeddings file: its image names (as the file system spells them), dimension and metadata."""

    path: Path
    names: list[str]
    dim: int
    info: dict

    @classmethod
    def open(cls, path: str | os.PathLike) -> StoredEmbeddings:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no embeddings file at {text_name(path)}")
        try:
            schema = pq.read_schema(path)
            info = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
            names = [name_from_text(n) for n in pq.read_table(path, columns=["path"])["path"].to_pylist()]
        except Exception as exc:  # not Parquet, or without a path column
            raise ValueError(
                f"{text_name(path)} is not an embeddings file: {str(exc).splitlines()[0]}"
            ) from None
        if info.get("format") != EMBEDDINGS_FORMAT or "embedding" not in schema.names:
            raise ValueError(
                f"{text_name(path)} is not an embeddings file written by `score --embeddings` "
                "(no path/embedding columns with clip-aesthetics metadata)"
            )
        return cls(path, names, schema.field("embedding").type.list_size, info)

    def backbone_spec(self) -> tuple[str | None, str | None]:
        """(model, pretrained) of the backbone that made the embeddings."""
        backbone = self.info.get("backbone") or {}
        return backbone.get("model"), backbone.get("pretrained")

    def identity(self) -> dict:
        """What a resumed run must match: the file's content and its backbone."""
        return {"file": file_digest(self.path), "backbone": self.info.get("backbone")}

    def check_scorer(self, scorer: Scorer) -> None:
        """Refuse a scorer whose backbone is not the one that made the embeddings (silently wrong scores)."""
        check_embeddings_supported(scorer)
        made_by = self.info.get("backbone") or {}
        ours = scorer.backbone.describe()
        if made_by.get("feature_dim", self.dim) != ours["feature_dim"] or any(
            made_by.get(key) != ours[key] for key in ("model", "weights_id")
        ):
            raise ValueError(
                f"{text_name(self.path)} holds embeddings of {made_by.get('model')} "
                f"({made_by.get('weights_id')}), but the scorer uses {ours['model']} ({ours['weights_id']})"
            )

    def batches(self, scorer: Scorer, order: Sequence[int], batch_size: int) -> Iterator[ScoredBatch]:
        """Scores of the rows at ``order`` (ascending positions), in batches of positions
        ``[k * batch_size, (k + 1) * batch_size)``: a resumed run batches every row as a whole run does."""
        position_of = {p: j for j, p in enumerate(order)}  # batches index the run's pending list
        pending: list[tuple[int, np.ndarray]] = []
        start = 0
        for chunk in pq.ParquetFile(self.path).iter_batches(batch_size=4096, columns=["embedding"]):
            flat = chunk.column(0).flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            for row in range(chunk.num_rows):
                position = start + row
                if position not in position_of:
                    continue
                if pending and pending[0][0] // batch_size != position // batch_size:
                    yield self._score(scorer, pending, position_of)
                    pending = []
                pending.append((position, flat[row]))
            start += chunk.num_rows
        if pending:
            yield self._score(scorer, pending, position_of)

    @staticmethod
    @torch.inference_mode()
    def _score(
        scorer: Scorer, rows: list[tuple[int, np.ndarray]], position_of: dict[int, int]
    ) -> ScoredBatch:
        features = torch.from_numpy(np.stack([f for _, f in rows]).astype(np.float32))
        output = scorer.score_features(features).to_cpu()
        return split_non_finite(ScoredBatch([position_of[p] for p, _ in rows], output, None, []))
