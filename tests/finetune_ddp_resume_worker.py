"""Worker for test_hardening_finetune's torchrun test: a DDP run cut in the middle of an epoch, then resumed.

Run as ``torchrun --standalone --nproc-per-node 2 tests/finetune_ddp_resume_worker.py MODE DATASET MODEL RUN
OUT`` with MODE ``first`` (two epochs straight in ``RUN/straight``, then in ``RUN/cut`` a run saving mid-epoch
at every step with both ranks stopped before micro-batch 3 of epoch 2) or ``resume`` (continue ``RUN/cut``
to the end of epoch 2). Each finished run writes ``<name>-rank<R>.json`` with a byte hash of its parameters.
One process group serves both runs of ``first``: a launch costs more than a tiny run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from clip_aesthetics.finetune import TrainConfig, finetune, guard, resume_config
from clip_aesthetics.finetune import distributed as dist
from clip_aesthetics.finetune.train import Trainer


class Cut(Exception):
    """Stands for a kill: raised on every rank at the same micro-batch."""


def _write(result, out_dir: str, name: str) -> None:
    digest = hashlib.sha256()
    state = result.model.state_dict()
    for key in sorted(state):
        digest.update(state[key].detach().cpu().numpy().tobytes())
    summary = {"sha256": digest.hexdigest(), "history": result.history}
    Path(out_dir, f"{name}-rank{os.environ['RANK']}.json").write_text(json.dumps(summary, default=str))


def _cut_run(config: TrainConfig, run_dir: Path) -> None:
    saved = guard.FINITE_CHECK_STEPS, guard.CHECKPOINT_SECONDS, Trainer._step
    guard.FINITE_CHECK_STEPS, guard.CHECKPOINT_SECONDS = 1, 0.0
    calls = []

    def step(self, *args):
        calls.append(self.epoch)
        if calls.count(1) == 3:
            raise Cut
        return saved[2](self, *args)

    Trainer._step = step
    try:
        finetune(config, run_dir)
    except Cut:
        pass
    finally:
        guard.FINITE_CHECK_STEPS, guard.CHECKPOINT_SECONDS, Trainer._step = saved


def main(mode: str, dataset: str, model: str, run_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the test machine's cores
    config = TrainConfig(
        dataset=dataset, model=model, optimizer="adamw", lr_backbone=1e-3, lr_head=1e-3, batch_size=16,
        max_epochs=2, split="random", val_fraction=0.25, test_fraction=0.25, workers=0, device="cpu",
        dropout=0.1, augment=True, accumulate=2,
    )  # fmt: skip
    runs = Path(run_dir)
    if mode == "resume":
        _write(finetune(resume_config(runs / "cut"), runs / "cut", resume=True), out_dir, "resume")
        return
    dist.setup("cpu")
    try:
        _write(finetune(config, runs / "straight"), out_dir, "straight")
        _cut_run(config, runs / "cut")
    finally:
        dist.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:6])
