"""Start or resume a fine-tuning run in a run folder; the entry point the CLI and scripts call."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from . import distributed as dist
from . import report
from .checkpoint import load_checkpoint
from .config import RESUMABLE_FIELDS, TrainConfig, option_name
from .train import FinetuneResult, Trainer, _log_nothing


def resume_config(run_dir: str | os.PathLike, **given) -> TrainConfig:
    """The configuration of the run in ``run_dir``, with the few options a resume may change.

    The original command line may be given again: options equal to the run's are accepted, so people can
    rerun the command they ran with ``--resume`` added.

    Args:
        run_dir: a run folder holding ``config.json`` and ``last.pt``.
        **given: options of :class:`TrainConfig` (None leaves a value as it was). ``max_epochs`` (same or
            larger), ``workers`` and ``device`` may change; any other must equal the run's.

    Raises:
        FileNotFoundError: ``run_dir`` holds no run.
        ValueError: options that differ from the run's (all named), or fewer epochs than the run had.
    """
    path = Path(run_dir) / report.CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no fine-tuning run (no {report.CONFIG_FILE})")
    original = json.loads(path.read_text(encoding="utf-8"))["config"]
    data, differing = dict(original), []
    for key, value in given.items():
        if value is None:
            continue
        if key in RESUMABLE_FIELDS:
            data[key] = value
        elif not _same_option(key, original.get(key), value):
            differing.append(f"{option_name(key)} {value!r} (the run has {original.get(key)!r})")
    if differing:
        allowed = ", ".join(option_name(k) for k in RESUMABLE_FIELDS)
        raise ValueError(
            f"{'; '.join(differing)}: fixed by the run being resumed (only {allowed} may change)"
        )
    if data["max_epochs"] < original["max_epochs"]:
        raise ValueError("--max-epochs cannot shrink on resume: pass the same or a larger number")
    return TrainConfig.from_dict(data)


def _same_option(key: str, original, value) -> bool:
    if key == "dataset":  # the same folder or file, however the path is written
        return original is not None and Path(original).resolve() == Path(value).resolve()
    if key not in TrainConfig.__dataclass_fields__:
        return False
    if isinstance(original, float) or isinstance(value, float):
        return original is not None and float(original) == float(value)
    return original == value


def _prepare_dir(run_dir: Path, resume: bool, is_main: bool) -> None:
    """Check the run folder on every rank and raise the same error everywhere (no rank left waiting).

    A run stopped before its first checkpoint (killed, diverged or out of disk in epoch 1) has a config but
    no ``last.pt``: nothing is lost by starting it over, so ``--resume`` starts it at epoch 1 and a fresh
    start may replace it. Only a run with a checkpoint is protected.
    """
    error = None
    started = (run_dir / report.CONFIG_FILE).is_file()
    if resume and not started and not (run_dir / report.LAST_CHECKPOINT).is_file():
        error = f"no checkpoint to resume from: {run_dir / report.LAST_CHECKPOINT}"
    elif not resume and is_main and (run_dir / report.LAST_CHECKPOINT).exists():
        error = (
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --output"
        )
    errors = [e for e in dist.all_gather_objects(error) if e]
    if errors:
        raise (FileNotFoundError if errors[0].startswith("no checkpoint") else ValueError)(errors[0])
    if is_main and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)


def finetune(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a backbone's image tower with a 10-bin head on a labelled dataset.

    Under ``torchrun`` every process calls this; it joins the process group (unless the caller already did),
    trains with DistributedDataParallel and leaves the group again. Only rank 0 writes to ``run_dir``.

    Args:
        config: the run's configuration (for a resume, see :func:`resume_config`).
        run_dir: the run folder: config.json, metrics.csv/.jsonl, loss.png, last.pt, best.safetensors,
            results.json.
        resume: continue from ``run_dir/last.pt`` (model, optimiser, schedule, early stopping, history, RNG).
        stop_after: stop after this epoch as if interrupted (a later resume continues); for time-boxed jobs.
        log: receives one line per epoch on rank 0.
    """
    run_dir = Path(run_dir)
    owns_group = not torch.distributed.is_initialized()
    ctx = dist.setup(config.device)
    try:
        _prepare_dir(run_dir, resume, ctx.is_main)
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 tensor cores, as is usual
        trainer = Trainer(config, run_dir, ctx, (log or _log_nothing) if ctx.is_main else _log_nothing)
        checkpoint = run_dir / report.LAST_CHECKPOINT
        if resume and checkpoint.is_file():
            trainer.load(load_checkpoint(checkpoint))
        elif resume:
            trainer.log(f"{run_dir} stopped before its first checkpoint: starting again at epoch 1")
        if ctx.is_main:
            report.write_json(run_dir / report.CONFIG_FILE, trainer.describe())
        dist.barrier()
        first_epoch = trainer.epoch
        trainer.fit(stop_after)
        finished = trainer.stopper.stopped or trainer.epoch >= config.max_epochs
        test = trainer.finish() if finished else None
        dist.barrier()
        return FinetuneResult(
            run_dir=run_dir,
            epochs=trainer.epoch,
            best_epoch=trainer.stopper.best_epoch,
            finished=finished,
            stopped_early=trainer.stopper.stopped,
            epochs_run=trainer.epoch - first_epoch,
            history=trainer.history,
            test=test,
            model=trainer.model,
        )
    finally:
        if owns_group:
            dist.cleanup()
