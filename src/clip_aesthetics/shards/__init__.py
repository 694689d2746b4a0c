"""Web-scale scoring: WebDataset / Parquet shards in, one Parquet file per shard out, resumable by shard.

``score_shards`` runs the local engine (``engine_local``: DataLoader workers) or the Ray Data engine
(``engine_ray``); both share the steps in ``pipeline``. ``filter`` selects keys or writes new shards from a
score folder. Names are imported lazily: the CLI reaches ``options`` without loading torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "EngineOptions": "options",
    "ScorerRecipe": "options",
    "Shard": "readers",
    "Sample": "readers",
    "ShardReadError": "readers",
    "expand_braces": "readers",
    "iter_shard": "readers",
    "resolve_shards": "readers",
    "ShardRunReport": "run",
    "score_shards": "run",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
