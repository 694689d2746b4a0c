"""Image features of whole datasets, cached on disk (float16 shards + Parquet metadata + a manifest).

``embed_dataset`` fills a cache through the shared image pipeline and resumes an interrupted one;
``load_features`` reads a complete cache back for probes and evaluations. The on-disk format is described
in :mod:`clip_aesthetics.features.cache`.
"""

from .cache import FeatureSet, feature_kind, load_features, read_manifest
from .embed import DEFAULT_SHARD_SIZE, DatasetSpec, EmbedReport, dataset_records, embed_dataset, embed_records

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DatasetSpec",
    "EmbedReport",
    "FeatureSet",
    "dataset_records",
    "embed_dataset",
    "embed_records",
    "feature_kind",
    "load_features",
    "read_manifest",
]
