"""The options every command shares, declared once so that one name always means one thing.

The vocabulary (README, "Options"): the dataset root is the first argument; ``--dataset/-d`` its format;
``--split-kind`` official or random; ``--split`` the part (train, val, test, all); ``--split-seed``;
``--output/-o`` the command's main output; ``--model/-m``, ``--pretrained``, ``--scorer``; and
``--batch-size``, ``--workers``, ``--device``, ``--precision``, ``--decode`` for the image pipeline.
A command passes its own default (``dataset: Dataset = "ava"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import (
    ALL_DATASETS,
    BATCH_SIZE_CPU,
    BATCH_SIZE_CUDA,
    EVAL_DATASETS,
    SPLIT_KINDS,
    SPLITS,
    ZEROSHOT_FORMULAS,
)

DatasetRoot = Annotated[Path, typer.Argument(help="Dataset folder (for --dataset csv: the CSV file).")]
Dataset = Annotated[str, typer.Option("--dataset", "-d", help=f"Format: {', '.join(EVAL_DATASETS)}.")]
AnyDataset = Annotated[str, typer.Option("--dataset", "-d", help=f"Format: {', '.join(ALL_DATASETS)}.")]
Split = Annotated[str, typer.Option("--split", help=f"Part of the split: {', '.join(SPLITS)} (all records).")]
SplitKind = Annotated[
    str,
    typer.Option(
        "--split-kind",
        help=f"{', '.join(SPLIT_KINDS)}: the dataset's own split, a seeded 80/10/10 one, or the authors' "
        "split files (--split-file).",
    ),
]
SplitFile = Annotated[
    Path | None,
    typer.Option(
        "--split-file",
        help="With --split-kind file: a folder with the authors' AVA_test.csv and AVA_train_split.csv + "
        "AVA_val_split.csv (or AVA_train.csv), or one file of test ids.",
    ),
]
SplitSeed = Annotated[
    int | None, typer.Option("--split-seed", help="Seed of a random split or of the val carve-out.")
]
Model = Annotated[
    str | None, typer.Option("--model", "-m", help="Backbone: ViT-B-32, RN50, timm:NAME, local-dir:PATH, ...")
]
Pretrained = Annotated[
    str | None, typer.Option("--pretrained", help="Weights: a tag (default openai), a file, or 'none'.")
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help=f"Images per model call (default: {BATCH_SIZE_CPU} on CPU, {BATCH_SIZE_CUDA} on CUDA).",
    ),
]


def batch_size_for(device: str, batch_size: int | None) -> int:
    """``batch_size``, or the default for ``device`` (see ``encoders.compute.default_batch_size``)."""
    if batch_size is not None:
        return batch_size
    from ..encoders.backbones import resolve_device  # torch: only once a command runs
    from ..encoders.compute import default_batch_size

    return default_batch_size(resolve_device(device))


Workers = Annotated[
    int | None, typer.Option("--workers", min=0, help="Decoding processes (default: depends on the device).")
]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")]
# One rule for every command: bf16 also on CPUs that compute it natively (AVX512-BF16, AMX).
Precision = Annotated[
    str,
    typer.Option(
        "--precision", help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, bf16, fp16."
    ),
]
CpuBf16Precision = Precision  # the name score and embed used when the rule was theirs alone
ZeroShotScore = Annotated[
    str | None,
    typer.Option(
        "--zeroshot-score",
        help=f"Zero-shot score: {' or '.join(ZEROSHOT_FORMULAS)} (authors: 100 f.(mean t+ - mean t-) of "
        "unnormalised text embeddings, as the paper's code; cosine: normalised ensembling; default cosine).",
    ),
]
Decode = Annotated[str, typer.Option("--decode", help="JPEG decoding: auto (nvJPEG on CUDA), cpu, gpu.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", min=1, help="Larger images count as unreadable.")]
