"""The fine-tuning loop: one process, or one per GPU under ``torchrun`` (DistributedDataParallel).

Every rank parses the dataset, builds the same model and walks its shard of each epoch; gradients are
averaged by DDP, validation predictions are all-gathered so every metric covers the whole validation set,
and only rank 0 writes files. See :mod:`clip_aesthetics.finetune` for the launch lines.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..encoders.backbones import Backbone, load_backbone
from ..encoders.compute import autocast
from ..metrics import compute_metrics, emd
from ..scorers.finetuned import FinetunedScorer
from ..scorers.registry import read_scorer_file, save_scorer
from . import distributed as dist
from . import guard, report
from .checkpoint import (
    EpochProgress,
    disk_full_reported,
    epoch_progress,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    seed_epoch,
)
from .config import TrainConfig
from .data import LabelledSplit, augment_batch, epoch_order, iter_indexed_batches, load_splits, shard
from .guard import RunGuard
from .loss import distribution_mean, get_loss
from .model import FinetuneModel, freeze
from .optim import build_optimizer, build_scheduler


@dataclass
class EarlyStopping:
    """Stop when the validation metric (lower is better) has not improved for ``patience`` epochs."""

    patience: int
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the best so far."""
        improved = value < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= self.patience
        return improved


@dataclass
class FinetuneResult:
    """What a call to :func:`finetune` did: epochs finished so far, the best epoch, final test metrics.

    ``model`` is this process's trained model: the best epoch's weights once the run has finished (they were
    loaded for the test evaluation), the last epoch's weights when it stopped early via ``stop_after``.
    """

    run_dir: Path
    epochs: int
    best_epoch: int
    finished: bool
    stopped_early: bool
    epochs_run: int = 0
    history: list[dict] = field(default_factory=list)
    test: dict | None = None
    model: FinetuneModel | None = None


def _log_nothing(message: str) -> None:
    return None


class Trainer:
    """Holds a run's model, optimiser, data and state; :meth:`fit` trains, :meth:`finish` tests."""

    def __init__(self, config: TrainConfig, run_dir: Path, ctx: dist.DistContext, log) -> None:
        self.config, self.run_dir, self.ctx, self.log = config, run_dir, ctx, log
        self.splits, self.split_info, self.parse_summary = load_splits(config)
        torch.manual_seed(config.seed)  # random-weight backbones and the head start the same on every rank
        self.backbone: Backbone = load_backbone(config.model, config.pretrained, device="cpu")
        self.model = FinetuneModel.from_backbone(self.backbone, config.dropout)
        self.frozen = freeze(self.model, backbone=config.freeze_backbone, blocks=config.freeze_blocks)
        self.model.to(ctx.device)
        self.micro = config.micro_batch(ctx.world_size)
        n_local = math.ceil(len(self.splits["train"]) / ctx.world_size)
        self.steps_per_epoch = math.ceil(math.ceil(n_local / self.micro) / config.accumulate)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.loss_fn = get_loss(config.loss)
        self.metric = config.loss  # early stopping watches the validation value of the training loss
        self.stopper = EarlyStopping(config.patience)
        self.history: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch = 0
        self.progress: EpochProgress | None = None  # where a mid-epoch checkpoint left this rank's epoch
        self.guard = RunGuard(run_dir / report.LAST_CHECKPOINT, ctx.is_main, self.log)
        self.workers = config.workers
        if self.workers is None:
            # decoding is what limits a GPU's training rate: use every core this process's share of the
            # machine has (the shared pipeline's default stops at 8), keeping one for the training loop
            self.workers = max(1, (os.cpu_count() or 1) // ctx.local_world_size - 1)
        self.ddp = self.model
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True)

    # ----- state
    def load(self, checkpoint: dict) -> None:
        """Continue from a checkpoint of this run (all ranks read the same file)."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.stopper = EarlyStopping(**checkpoint["early_stopping"])
        self.stopper.patience = self.config.patience
        self.history = list(checkpoint["history"])
        self.epoch = int(checkpoint["epoch"])
        restore_rng_states(checkpoint["rng"])
        self.progress = epoch_progress(checkpoint, self.run_dir / report.LAST_CHECKPOINT, self.ctx)
        where = f"micro-batch {self.progress.micro_done} of epoch {self.epoch + 1}" if self.progress else ""
        self.guard.note_saved(where or f"epoch {self.epoch}")
        best = self.run_dir / report.BEST_SCORER
        if best.is_file():
            self.best_state = read_scorer_file(best)[1]

    def _checkpoint(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": vars(self.stopper).copy(),
            "history": self.history,
            "rng": rng_states(),
            "config": self.config.to_dict(),
            "world_size": self.ctx.world_size,
        }

    def describe(self) -> dict:
        """The contents of ``config.json``."""
        train, val = self.splits["train"], self.splits["val"]
        mean_dist = train.targets.mean(dim=0, keepdim=True).expand(len(val), -1)
        return {
            "config": self.config.to_dict(),
            "backbone": self.backbone.describe(),
            "tower": {"kind": self.model.kind, "width": self.model.width, "frozen_parameters": self.frozen},
            "split": self.split_info.to_dict(),
            "dataset": self.parse_summary,
            "world_size": self.ctx.world_size,
            "micro_batch": self.micro,
            "steps_per_epoch": self.steps_per_epoch,
            "early_stopping_metric": f"val_{self.metric}",
            "baselines": {  # what predicting the train set's average achieves on validation
                "val_emd_train_mean_distribution": float(emd(mean_dist.numpy(), val.targets.numpy()).mean()),
                "val_mse_train_mean": float(np.mean((val.means - train.means.mean()) ** 2)),
            },
            "version": __version__,
        }

    # ----- training
    def train_epoch(self, lrs: dict) -> dict:
        """One pass over this rank's shard (the rest of it after a mid-epoch checkpoint); returns train loss,
        image and skip counts, throughput."""
        config, ctx, split = self.config, self.ctx, self.splits["train"]
        self.model.train()
        if config.freeze_backbone:
            self.model.tower.eval()  # a frozen tower keeps its normalisation statistics too
        resumed, self.progress = self.progress, None
        first = resumed.micro_done if resumed else 0
        order = epoch_order(len(split), config.seed, self.epoch, ctx.rank, ctx.world_size)
        n_micro = math.ceil(len(order) / self.micro)
        # running totals on the device: no sync per step
        loss_sum = torch.tensor(resumed.loss_sum if resumed else 0.0, dtype=torch.float64, device=ctx.device)
        images, skipped, earlier = (
            (resumed.images, resumed.skipped, resumed.seconds) if resumed else (0.0, 0, 0.0)
        )
        start = time.perf_counter()
        batches = iter_indexed_batches(
            split.paths, order[first * self.micro :], self.backbone.preprocess_cfg, batch_size=self.micro,
            workers=self.workers, pin_memory=ctx.device.type == "cuda",
            progress=None if ctx.is_main else False, description=f"epoch {self.epoch + 1}",
        )  # fmt: skip
        for i, (batch, indices) in enumerate(batches, start=first):
            if resumed is not None and i == first:  # after the loader drew its seed, as it had before
                restore_rng_states(resumed.rng)
            group = min(config.accumulate, n_micro - (i // config.accumulate) * config.accumulate)
            sync = (i + 1) % config.accumulate == 0 or i + 1 == n_micro
            skipped += len(batch.errors)
            loss_sum += self._step(batch.images, indices, split, group, sync)
            images += len(indices)
            if sync:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step = i // config.accumulate + 1
                if step % guard.FINITE_CHECK_STEPS == 0 or (self.guard.signals and not ctx.distributed):
                    seconds = earlier + time.perf_counter() - start
                    progress = EpochProgress(i + 1, 0.0, images, skipped, seconds, lrs, {})
                    self._check_in_epoch(loss_sum, progress)
        seconds = earlier + time.perf_counter() - start
        totals = torch.stack([loss_sum, loss_sum.new_tensor(images), loss_sum.new_tensor(skipped)])
        loss_sum, images, skipped = dist.all_reduce_sum(totals).tolist()
        self.guard.check(torch.tensor(loss_sum), "training loss", self.epoch + 1)
        return {
            "train_loss": loss_sum / max(images, 1.0),
            "train_images": int(images),
            "train_skipped": int(skipped),
            "train_seconds": seconds,
            "images_per_s": images / seconds if seconds > 0 else float("nan"),
        }

    def _check_in_epoch(self, loss_sum: torch.Tensor, progress: EpochProgress) -> None:
        """Every rank at once: stop if the loss (or, before a save, a weight) is NaN/inf anywhere, save
        mid-epoch when any rank asks (time, or a stop signal), and stop after saving if a signal came."""
        due, stop = self.guard.save_due(), bool(self.guard.signals)
        value = loss_sum + self.guard.weights_finite(self.model) if due else loss_sum
        what = f"training loss by micro-batch {progress.micro_done}"
        due, stop = self.guard.check(value, what, self.epoch + 1, [due, stop])
        if due:
            progress.loss_sum, progress.rng = float(loss_sum), rng_states()
            self._save(improved=False, val=None, ranks=dist.all_gather_objects(vars(progress)))
        self.guard.stop_if_asked(stop, self.run_dir)

    def _step(
        self, images: torch.Tensor, indices: list[int], split: LabelledSplit, group: int, sync: bool
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns the summed per-image loss (on the device)."""
        weight = 1.0
        if not indices:  # every image unreadable: a zero-weight stand-in keeps DDP's collectives in step
            size = self.backbone.preprocess_cfg.size
            images, indices, weight = torch.zeros(1, 3, size, size, dtype=torch.uint8), [0], 0.0
        images = images.to(self.ctx.device, non_blocking=True)
        if self.config.augment:
            images = augment_batch(images)
        target = split.targets[indices].to(self.ctx.device, non_blocking=True)
        no_sync = self.ddp.no_sync() if self.ctx.distributed and not sync else nullcontext()
        with no_sync:
            with autocast(self.ctx.device, self.config.precision):
                logits = self.ddp(self.model.normalize(images))
            per_image = self.loss_fn(logits, target)
            (per_image.mean() * (weight / group)).backward()
        return per_image.detach().sum().double() * weight

    # ----- evaluation
    @torch.no_grad()
    def evaluate(self, split: LabelledSplit, description: str) -> dict:
        """Metrics of the current model over a whole split (predictions gathered from every rank)."""
        self.model.eval()
        ctx, indices, probs, skipped = self.ctx, [], [], 0
        for batch, batch_indices in iter_indexed_batches(
            split.paths, shard(len(split), ctx.rank, ctx.world_size), self.backbone.preprocess_cfg,
            batch_size=self.micro, workers=self.workers, pin_memory=ctx.device.type == "cuda",
            progress=None if ctx.is_main else False, description=description,
        ):  # fmt: skip
            skipped += len(batch.errors)
            if batch_indices:
                with autocast(ctx.device, self.config.precision):
                    batch_probs, _ = self.model.predict(self.model.normalize(batch.images))
                indices += batch_indices
                probs.append(batch_probs.float().cpu())
        local = (indices, torch.cat(probs).numpy() if probs else np.zeros((0, 10), np.float32), skipped)
        gathered = dist.all_gather_objects(local)
        order = np.array([i for part in gathered for i in part[0]], dtype=np.int64)
        pred = np.concatenate([part[1] for part in gathered]).astype(np.float64)
        if order.size < 2:
            raise ValueError(f"{description}: fewer than 2 readable images, metrics are undefined")
        true = split.targets.numpy()[order].astype(np.float64) if split.has_votes else None
        pred_mean = distribution_mean(torch.from_numpy(pred)).numpy()
        metrics = compute_metrics(pred_mean, split.means[order], pred if true is not None else None, true)
        return {**metrics, "skipped": sum(part[2] for part in gathered)}

    # ----- the loop
    def fit(self, stop_after: int | None = None) -> None:
        """Train until ``max_epochs``, early stopping, or (as if interrupted) after epoch ``stop_after``."""
        with self.guard.deferring_signals():
            self._fit(stop_after)

    def _fit(self, stop_after: int | None) -> None:
        config = self.config
        while self.epoch < config.max_epochs and not self.stopper.stopped:
            if stop_after is not None and self.epoch >= stop_after:
                return
            if self.progress is None:  # a fresh epoch; a resumed one restores its generators itself
                seed_epoch(config.seed, self.epoch, self.ctx.rank)
                lrs = {
                    f"lr_{g['name']}": g["lr"]
                    for g in self.optimizer.param_groups
                    if "no_decay" not in g["name"]
                }
            else:
                lrs = self.progress.lrs
            row = {"epoch": self.epoch + 1, **lrs, **self.train_epoch(lrs)}
            val = self.evaluate(self.splits["val"], "validation")
            what, signalled = f"validation {self.metric}", bool(self.guard.signals)
            (stop,) = self.guard.check(torch.tensor(val[self.metric]), what, self.epoch + 1, [signalled])
            row.update({f"val_{k}": v for k, v in val.items()})
            self.epoch += 1
            improved = self.stopper.update(val[self.metric], self.epoch)
            row["best"] = improved
            self.history.append(row)
            if improved:
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self._save(improved, val)
            self.log(self._summary_line(row))
            self.guard.stop_if_asked(stop, self.run_dir)

    def _summary_line(self, row: dict) -> str:
        return (
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val {self.metric.upper()} "
            f"{row[f'val_{self.metric}']:.4f}, SRCC {row['val_srcc']:.3f}, PLCC {row['val_plcc']:.3f}, "
            f"acc {row['val_accuracy']:.3f}, {row['images_per_s']:.1f} images/s"
            + (f", {row['train_skipped']} unreadable" if row["train_skipped"] else "")
            + (" (best)" if row["best"] else "")
        )

    def _save(self, improved: bool, val: dict | None, ranks: list[dict] | None = None) -> None:
        """Write the epoch's files, or with ``ranks`` (every rank's progress) a mid-epoch ``last.pt``."""
        where = (
            f"micro-batch {ranks[0]['micro_done']} of epoch {self.epoch + 1}"
            if ranks
            else f"epoch {self.epoch}"
        )
        if self.ctx.is_main:
            with disk_full_reported(where, self.run_dir):
                self._write_epoch(improved, val, ranks)
        self.guard.note_saved(where)
        dist.barrier()

    def _write_epoch(self, improved: bool, val: dict | None, ranks: list[dict] | None) -> None:
        if ranks:
            save_checkpoint(
                {**self._checkpoint(), "partial_epoch": {"ranks": ranks}},
                self.run_dir / report.LAST_CHECKPOINT,
            )
            return
        if improved:
            recipe = {"config": self.config.to_dict(), "epoch": self.epoch, "val": val}
            scorer = FinetunedScorer(self.backbone, self.model, recipe=recipe)
            save_scorer(scorer, self.run_dir / report.BEST_SCORER, tensors=self.best_state)
        save_checkpoint(self._checkpoint(), self.run_dir / report.LAST_CHECKPOINT)
        report.write_metrics(self.history, self.run_dir)
        report.plot_curves(self.history, self.run_dir / report.CURVES_PNG, self.metric)

    def finish(self) -> dict | None:
        """Test metrics of the best epoch's weights (when there is a test split); written to results.json."""
        test = None
        if self.best_state is not None and len(self.splits["test"]) >= 2:
            self.model.load_state_dict(self.best_state)
            test = self.evaluate(self.splits["test"], "test")
        if self.ctx.is_main:
            best = self.history[self.stopper.best_epoch - 1] if self.stopper.best_epoch else {}
            results = {
                "best_epoch": self.stopper.best_epoch,
                "epochs": self.epoch,
                "stopped_early": self.stopper.stopped,
                "val": {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")},
                "test": test,
                "split": self.split_info.to_dict(),
                "scorer": str(self.run_dir / report.BEST_SCORER),
            }
            report.write_json(self.run_dir / report.RESULTS_FILE, results)
        return test
