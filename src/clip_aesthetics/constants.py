"""Constants shared across the package, defined once.

This module imports nothing, so the CLI can use these values in option defaults and help texts without
paying for torch, open_clip or timm at start-up (``clip-aesthetics --help`` must be instant).
"""

from __future__ import annotations

# Scores: AVA's 1-10 scale, one bin per integer score.
N_BINS = 10

# Images per model call when none is given, one default per device for every command (see
# encoders.compute.default_batch_size for why).
BATCH_SIZE_CPU, BATCH_SIZE_CUDA = 64, 256

# The backbone used when none is named: CLIP ViT-B/32, the paper's model.
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
# The ImageNet baseline of the paper's probe and fine-tuning comparisons.
DEFAULT_IMAGENET_MODEL = "timm:vit_base_patch32_224.augreg_in21k"

# Files an image folder is searched for (lower-case suffixes): what Pillow reads, camera RAW files (rawpy,
# i.e. LibRaw) and HEIC/HEIF/AVIF (pillow-heif).
RAW_EXTENSIONS = frozenset(
    {".nef", ".nrw", ".cr2", ".cr3", ".arw", ".raf", ".orf", ".rw2", ".pef", ".dng", ".srw"}
)
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif"})
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", *RAW_EXTENSIONS, *HEIF_EXTENSIONS}
)
# Larger images are refused: 100 MP is above any camera and well below a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000

# Labelled dataset formats (``folder`` adds unlabelled image folders where labels are not needed).
EVAL_DATASETS = ("ava", "csv", "aadb", "tad66k", "para", "koniq")
ALL_DATASETS = (*EVAL_DATASETS, "folder")
SPLIT_KINDS = ("official", "random", "file")
SPLITS = ("train", "val", "test", "all")
# The broken-image manifest a dataset folder may hold (written by `clip-aesthetics datasets verify`).
DEFAULT_MANIFEST = "broken_images.json"
# HTML reports embed thumbnails of at most this many images (the best ones).
DEFAULT_MAX_THUMBNAILS = 2000
# The steps of `clip-aesthetics reproduce`, in the order they run.
REPRODUCE_STEPS = ("zeroshot", "probe", "finetune")
# Prompt search (`clip-aesthetics prompts search`): prompt strategies tried and the metrics pairs rank by.
PROMPT_STRATEGIES = ("fixed", "context", "content", "ensemble")
# The zero-shot score: the authors' (unnormalised text embeddings averaged) or cosine (normalised ensembling).
ZEROSHOT_FORMULAS = ("authors", "cosine")
PROMPT_METRICS = ("srcc", "plcc", "accuracy")
# Metrics shown in comparison tables, in this order (a column only when some scorer has the metric).
TABLE_METRICS = ("srcc", "plcc", "accuracy", "emd", "mse", "mae")
# Vote-count columns (one per score bin) in CSV label files and feature-cache metadata.
VOTE_COLUMNS = tuple(f"votes_{score}" for score in range(1, N_BINS + 1))
