"""Watching a training run: NaN/inf losses, stop signals, and when a mid-epoch checkpoint is due.

Each check is one collective over the ranks, so all of them stop, or save, at the same optimiser step; and
every failure message says what ``last.pt`` holds at that moment.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed as dist

# How often (optimiser steps) the running loss is checked for NaN/inf: each check waits for the device, and
# a diverged run should not burn a whole epoch first. At a check, once CHECKPOINT_SECONDS have passed since
# the last save, last.pt is written mid-epoch too: a kill loses at most about that much training.
FINITE_CHECK_STEPS = 20
CHECKPOINT_SECONDS = 600.0


class DivergenceError(RuntimeError):
    """The loss or a validation metric became NaN or infinite; the message says what was kept."""


class RunGuard:
    """What a run has saved, which stop signals arrived, and the checks that every rank passes together."""

    def __init__(self, checkpoint: Path, is_main: bool, log: Callable[[str], None]) -> None:
        self.checkpoint, self.is_main, self.log = checkpoint, is_main, log
        self.saved = "no epoch had finished, so none was saved"
        self.last_save = time.monotonic()
        self.signals: list[int] = []  # SIGINT/SIGTERM received while training: save, then stop

    def note_saved(self, where: str) -> None:
        """Record that ``last.pt`` now holds ``where`` (e.g. "epoch 3")."""
        self.saved = f"{self.checkpoint} keeps {where}"
        self.last_save = time.monotonic()

    def save_due(self) -> bool:
        """Whether this rank asks for a mid-epoch save: a stop signal, or (rank 0) enough time passed."""
        return bool(self.signals) or (
            self.is_main and time.monotonic() - self.last_save >= CHECKPOINT_SECONDS
        )

    def check(self, value: torch.Tensor, what: str, epoch: int, flags: Sequence[bool] = ()) -> list[bool]:
        """Raise :class:`DivergenceError` on every rank at once when ``value`` is NaN/inf on any rank.

        In the same collective, returns for each of ``flags`` whether any rank set it.
        """
        local = [~torch.isfinite(value.detach().double()).cpu(), *map(torch.tensor, flags)]
        bad, *anywhere = dist.all_reduce_sum(torch.stack(local).float().to(value.device)).tolist()
        if bad == 0:
            return [count > 0 for count in anywhere]
        raise DivergenceError(
            f"training diverged: the {what} in epoch {epoch} is NaN or infinite; the state after it was not "
            f"saved ({self.saved}). Lower the learning rates or use --precision fp32, in a new run folder"
        )

    def weights_finite(self, model: torch.nn.Module) -> torch.Tensor:
        """NaN when any parameter is NaN/inf (a finite loss can precede non-finite weights), else 0."""
        finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        return torch.where(finite, 0.0, math.nan)

    def stop_if_asked(self, stop: bool, run_dir: Path) -> None:
        """After a save: raise what the signal means (KeyboardInterrupt, or exit 143 for SIGTERM)."""
        if not stop:
            return
        signum = self.signals[0] if self.signals else signal.SIGTERM  # only another rank had the signal
        self.log(f"stopped by {signal.Signals(signum).name}: {self.saved}; continue with --resume {run_dir}")
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    @contextmanager
    def deferring_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM only land in :attr:`signals`; the trainer saves at its next
        check and stops there, rather than dying mid-update. A second signal stops at once."""
        self.signals = []
        if threading.current_thread() is not threading.main_thread():  # handlers only work there
            yield
            return

        def note(signum: int, frame: object) -> None:
            if self.signals:
                raise KeyboardInterrupt
            self.signals.append(signum)

        previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
