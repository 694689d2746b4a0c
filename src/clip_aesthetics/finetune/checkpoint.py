"""Training checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint holds everything a resumed run needs: model, optimiser and scheduler states, the number of
finished epochs, the early-stopping state, the metrics history and the random number generator states.
One written in the middle of an epoch also holds every rank's :class:`EpochProgress`.
It is written with :func:`~clip_aesthetics.fileio.atomic_write`, so a crash while saving leaves the previous
checkpoint intact, never half a file.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write

FORMAT_VERSION = 1


@dataclass
class EpochProgress:
    """How far one rank is into an epoch: what a mid-epoch checkpoint keeps to continue that epoch exactly.

    Attributes:
        micro_done: micro-batches of this rank's epoch order already trained (always at an optimiser step).
        loss_sum, images, skipped, seconds: the epoch's running totals on this rank.
        lrs: the learning rates at the epoch's start (its metrics row reports those).
        rng: this rank's generator states after the last step.
    """

    micro_done: int
    loss_sum: float
    images: float
    skipped: int
    seconds: float
    lrs: dict
    rng: dict


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` with ``torch.save`` atomically."""
    return atomic_write(
        path, lambda handle: torch.save({**payload, "format": FORMAT_VERSION}, handle), binary=True
    )


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint onto the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or overwritten: torch would say "[Errno 22] Invalid argument"
        reason = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{path} is damaged (truncated or corrupt: {reason}); restore it from a copy, or start the run "
            "again in a new --out folder"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a fine-tuning checkpoint of format {FORMAT_VERSION}")
    return payload


class DiskFullError(OSError):
    """Writing failed because the disk (or quota) is full; the message says what is kept and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or anything in its chain is ENOSPC/EDQUOT.

    ``torch.save`` hides it in a RuntimeError reading "unexpected pos ..." (the OSError is its context);
    safetensors reports it as text ("No space left on device (os error 28)").
    """
    codes = (errno.ENOSPC, errno.EDQUOT)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return True
        if any(os.strerror(code) in str(exc) for code in codes):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def epoch_progress(checkpoint: dict, path: Path, ctx) -> EpochProgress | None:
    """This rank's progress through a checkpoint's unfinished epoch; None when saved between epochs.

    Raises:
        ValueError: the checkpoint was saved mid-epoch by another number of processes (each had its shard).
    """
    ranks = (checkpoint.get("partial_epoch") or {}).get("ranks")
    if not ranks:
        return None
    if len(ranks) != ctx.world_size:
        raise ValueError(
            f"{path} was saved during epoch {int(checkpoint['epoch']) + 1} by {len(ranks)} processes: "
            f"resume it with {len(ranks)} (this run has {ctx.world_size})"
        )
    return EpochProgress(**ranks[ctx.rank])


@contextmanager
def disk_full_reported(what: str, run_dir: Path) -> Iterator[None]:
    """Turn a full disk while writing ``what`` into a :class:`DiskFullError` that says what to do."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(
            errno.ENOSPC,
            f"disk full while saving {what} in {run_dir}; every file there is whole (written atomically). "
            f"Free some space, then continue with --resume {run_dir}",
        ) from None


def rng_states() -> dict:
    """The states of Python's, numpy's and torch's (CPU and CUDA) generators, as plain data and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        # this process's device only: asking for every device's state would open a context on each GPU
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
    }


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`rng_states` (the CUDA state goes to the current device)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator from (seed, epoch, rank).

    Dropout and augmentation draw from these generators; seeding at each epoch start makes an epoch's random
    numbers independent of what ran before it, so a run resumed at an epoch boundary matches an uninterrupted
    one exactly, and ranks draw different numbers.
    """
    mixed = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    random.seed(mixed)
    np.random.seed(mixed % 2**32)
    torch.manual_seed(mixed)  # also seeds every CUDA device
