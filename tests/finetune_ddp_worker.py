"""Worker for test_finetune's torchrun test: fine-tune under DDP, then write this rank's parameter checksum.

Run as ``torchrun --standalone --nproc-per-node 2 tests/finetune_ddp_worker.py DATASET MODEL RUN OUT``.
Each rank takes micro-batches of 4 (global batch 16 = 2 ranks x 2 accumulation steps x 4), which covers
DDP's no_sync path. The run stops after its second epoch (``stop_after``, so the model keeps its last-epoch
weights rather than the best epoch's) and every rank writes ``rank<R>.json`` with a float64 sum and a byte
hash of its parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from clip_aesthetics.finetune import TrainConfig, finetune


def main(dataset: str, model: str, run_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the test machine's cores
    config = TrainConfig(
        dataset=dataset, model=model, optimizer="adamw", lr_backbone=1e-3, lr_head=1e-3, batch_size=16,
        max_epochs=3, split="random", val_fraction=0.25, test_fraction=0.25, workers=0, device="cpu",
        dropout=0.1, augment=True, accumulate=2,
    )  # fmt: skip
    result = finetune(config, run_dir, stop_after=2)
    state = result.model.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(state[name].detach().cpu().numpy().tobytes())
    rank = int(os.environ["RANK"])
    summary = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "sum": float(sum(v.double().sum() for v in state.values())),
        "sha256": digest.hexdigest(),
        "epochs": result.epochs,
        "val_n": [row["val_n"] for row in result.history],
        "train_images": [row["train_images"] for row in result.history],
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:5])
