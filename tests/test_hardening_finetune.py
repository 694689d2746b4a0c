"""Fine-tuning that fails: killed or out of disk in the first epoch, diverging to NaN, a damaged last.pt.

Each ends in one clear message, keeps every finished epoch, and leaves a run that continues or restarts.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.finetune import TrainConfig, finetune, resume_config
from clip_aesthetics.finetune import checkpoint as checkpoint_module
from clip_aesthetics.finetune import guard as guard_module
from clip_aesthetics.finetune.checkpoint import (
    DiskFullError,
    is_disk_full,
    load_checkpoint,
    save_checkpoint,
)
from clip_aesthetics.finetune.guard import DivergenceError
from clip_aesthetics.finetune.train import Trainer

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only spin on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_ava(tmp_path_factory.mktemp("ava") / "AVA_dataset", n=48, seed=3, size=32)


def config(dataset: Path, model: str, **overrides) -> TrainConfig:
    options = dict(
        dataset=str(dataset), model=model, optimizer="adamw", lr_backbone=1e-3, lr_head=1e-3, batch_size=8,
        max_epochs=2, split="random", val_fraction=0.25, test_fraction=0.25, workers=0, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def _message(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    return " ".join(result.output[result.output.index("error:") :].split())  # after any epoch lines


def _crash_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, error: BaseException) -> None:
    """Make training die inside epoch ``epoch`` (1-based), as a kill or a crash would."""
    real = Trainer.train_epoch

    def train_epoch(self: Trainer, *args) -> dict:
        if self.epoch + 1 == epoch:
            raise error
        return real(self, *args)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_a_run_killed_in_its_first_epoch_resumes_or_restarts(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = finetune(config(ava, tiny_clip_spec), tmp_path / "straight")
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _crash_in_epoch(patch, 1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            finetune(config(ava, tiny_clip_spec), run)
    assert (run / "config.json").is_file() and not (run / "last.pt").exists()
    # --resume continues (from the start), and gives the uninterrupted run's numbers
    resumed = CliRunner().invoke(app, ["finetune", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    history = load_checkpoint(run / "last.pt")["history"]
    assert [row["val_emd"] for row in history] == pytest.approx([r["val_emd"] for r in straight.history])
    # and a run killed the same way may simply be started again with its original command
    again = tmp_path / "again"
    with monkeypatch.context() as patch:
        _crash_in_epoch(patch, 1, RuntimeError("killed"))
        with pytest.raises(RuntimeError):
            finetune(config(ava, tiny_clip_spec), again)
    restarted = finetune(config(ava, tiny_clip_spec), again)
    assert restarted.finished and restarted.history[-1]["val_emd"] == pytest.approx(
        straight.history[-1]["val_emd"]
    )
    with pytest.raises(ValueError, match="already holds a run"):  # a run with a checkpoint stays protected
        finetune(config(ava, tiny_clip_spec), again)


def _kill_at_micro_batch(monkeypatch: pytest.MonkeyPatch, epoch: int, micro: int) -> None:
    """Raise KeyboardInterrupt (as Ctrl-C would) before micro-batch ``micro`` (1-based) of ``epoch``."""
    real_step, calls = Trainer._step, []

    def step(self: Trainer, *args) -> torch.Tensor:
        if self.epoch + 1 == epoch:
            calls.append(1)
            if len(calls) == micro:
                raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "_step", step)


@pytest.mark.parametrize("epoch", [1, 2])
def test_a_run_killed_mid_epoch_resumes_exactly_from_a_mid_epoch_checkpoint(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: int
) -> None:
    # every random part at once (dropout, augmentation, warm-up + cosine) and accumulation across the cut
    recipe = dict(schedule="cosine", warmup_epochs=0.5, dropout=0.2, augment=True, accumulate=2)
    straight = finetune(config(ava, tiny_clip_spec, **recipe), tmp_path / "straight")
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(guard_module, "FINITE_CHECK_STEPS", 1)  # check (and save) at every optimiser step
        patch.setattr(guard_module, "CHECKPOINT_SECONDS", 0.0)
        _kill_at_micro_batch(patch, epoch, micro=4)  # micro-batches 1-2 and 3-4 make the epoch's steps
        with pytest.raises(KeyboardInterrupt):
            finetune(config(ava, tiny_clip_spec, **recipe), run)
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] == epoch - 1 and saved["partial_epoch"]["ranks"][0]["micro_done"] == 2
    _assert_same_run(straight, finetune(resume_config(run), run, resume=True))


def _assert_same_run(straight, resumed) -> None:
    """A resumed run reports and ends exactly as the uninterrupted one."""
    assert resumed.finished and [row["epoch"] for row in resumed.history] == [1, 2]
    for a, b in zip(straight.history, resumed.history, strict=True):
        for key in ("train_loss", "train_images", "val_emd", "val_srcc", "lr_tower"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)]
)
def test_a_stop_signal_saves_at_the_next_step_and_resumes_exactly(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum, raised
) -> None:
    recipe = dict(dropout=0.2, augment=True, accumulate=2)
    straight = finetune(config(ava, tiny_clip_spec, **recipe), tmp_path / "straight")
    run, lines = tmp_path / "run", []
    real_step, calls = Trainer._step, []

    def step(self: Trainer, *args) -> torch.Tensor:
        calls.append(self.epoch)
        if calls.count(1) == 3:  # micro-batch 3 of epoch 2: the signal arrives mid-accumulation
            os.kill(os.getpid(), signum)
        return real_step(self, *args)

    handler_before = signal.getsignal(signum)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", step)
        with pytest.raises(raised) as err:
            finetune(config(ava, tiny_clip_spec, **recipe), run, log=lines.append)
    if raised is SystemExit:
        assert err.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signum) is handler_before  # the trainer's handler is gone again
    saved = load_checkpoint(run / "last.pt")  # saved after the step that micro-batch 4 completed
    assert saved["epoch"] == 1 and saved["partial_epoch"]["ranks"][0]["micro_done"] == 4
    name = signal.Signals(signum).name
    kept = f"{run / 'last.pt'} keeps micro-batch 4 of epoch 2"
    assert lines[-1] == f"stopped by {name}: {kept}; continue with --resume {run}"
    _assert_same_run(straight, finetune(resume_config(run), run, resume=True))


def test_a_mid_epoch_checkpoint_needs_the_same_number_of_processes(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(guard_module, "FINITE_CHECK_STEPS", 1)
        patch.setattr(guard_module, "CHECKPOINT_SECONDS", 0.0)
        _kill_at_micro_batch(patch, 1, micro=3)
        with pytest.raises(KeyboardInterrupt):
            finetune(config(ava, tiny_clip_spec), run)
    saved = load_checkpoint(run / "last.pt")
    ranks = saved["partial_epoch"]["ranks"]
    save_checkpoint({**saved, "partial_epoch": {"ranks": ranks * 2}}, run / "last.pt")
    with pytest.raises(ValueError, match="saved during epoch 1 by 2 processes: resume it with 2"):
        finetune(resume_config(run), run, resume=True)


def test_a_diverging_run_stops_with_a_clear_message(ava: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    huge = config(ava, tiny_clip_spec, optimizer="sgd", lr_backbone=1e30, lr_head=1e30)
    with pytest.raises(DivergenceError, match="NaN or infinite") as err:
        finetune(huge, run)
    assert "no epoch had finished" in str(err.value) and not (run / "last.pt").exists()


def test_nan_in_a_later_epoch_keeps_the_finished_epochs(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real_step = Trainer._step

    def step(self: Trainer, *args) -> torch.Tensor:
        loss = real_step(self, *args)
        return loss * float("nan") if self.epoch == 1 else loss  # epoch 2 produces a NaN loss

    monkeypatch.setattr(Trainer, "_step", step)
    result = CliRunner().invoke(app, ["finetune", str(ava), "-m", tiny_clip_spec, "--output", str(run),
                                      "--max-epochs", "3", "--batch-size", "8", "--workers", "0",
                                      "--split-kind", "random", "--device", "cpu"])  # fmt: skip
    message = _message(result)
    assert "training diverged" in message and "epoch 2" in message
    assert f"{run / 'last.pt'} keeps epoch 1" in message
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1


@pytest.mark.parametrize("keep", [0, 20, 0.5])
def test_a_damaged_checkpoint_is_a_one_line_error(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, keep: float
) -> None:
    run = tmp_path / "run"
    finetune(config(ava, tiny_clip_spec, max_epochs=2), run, stop_after=1)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: int(keep * len(data)) if keep < 1 else keep])
    with pytest.raises(ValueError, match="is damaged"):
        load_checkpoint(run / "last.pt")
    message = _message(CliRunner().invoke(app, ["finetune", "--resume", str(run)]))
    assert f"{run / 'last.pt'} is damaged (truncated or corrupt" in message and "Errno" not in message


def test_disk_full_while_saving_is_reported_and_the_run_continues(
    ava: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save(obj, handle, *args, **kwargs):  # the second checkpoint hits a full disk, as torch reports it
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
            ) from None

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", save)
        with pytest.raises(DiskFullError, match="disk full while saving epoch 2") as err:
            finetune(config(ava, tiny_clip_spec, max_epochs=3), run)
    assert f"--resume {run}" in str(err.value) and "Errno" not in str(err.value)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous checkpoint is whole
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary files
    result = finetune(resume_config(run), run, resume=True)
    assert result.finished and result.epochs == 3


def test_disk_full_is_found_in_any_form() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(Exception("No space left on device (os error 28)"))  # safetensors' wording
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("unexpected pos 1 vs 2") from None
    except RuntimeError as exc:
        assert is_disk_full(exc)
    assert not is_disk_full(RuntimeError("unexpected pos 1 vs 2"))


def test_torchrun_resumes_mid_epoch_exactly(ava: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(mode: str, runs: Path) -> None:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(TESTS / "finetune_ddp_resume_worker.py"), mode, str(ava), tiny_clip_spec, str(runs), str(out),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun("first", tmp_path)  # a straight run, and a run cut in epoch 2
    ranks = load_checkpoint(tmp_path / "cut" / "last.pt")["partial_epoch"]["ranks"]
    assert [r["micro_done"] for r in ranks] == [2, 2]  # both ranks' progress, saved by rank 0
    torchrun("resume", tmp_path)
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in
               ("straight-rank0", "straight-rank1", "resume-rank0", "resume-rank1")}  # fmt: skip
    assert len({r["sha256"] for r in results.values()}) == 1  # identical on every rank, as if never cut
    for a, b in zip(results["straight-rank0"]["history"], results["resume-rank0"]["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
