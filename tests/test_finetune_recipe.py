"""Fine-tuning: the paper's recipe defaults, early stopping, resuming with the original command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.finetune import TrainConfig, finetune
from clip_aesthetics.finetune.model import FinetuneModel
from clip_aesthetics.finetune.optim import build_optimizer
from clip_aesthetics.finetune.train import EarlyStopping, Trainer


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine spin-waiting OpenMP threads slow tiny models down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_recipe_defaults_are_the_papers() -> None:
    """../shared/AVA.md: "SGD momentum 0.5, lr 1e-4 backbone / 1e-2 head, batch 128, early stopping on
    validation EMD (patience 10), 224 px, no augmentation", EMD with r = 2, CLIP ViT-B/32."""
    config = TrainConfig()
    assert (config.optimizer, config.momentum) == ("sgd", 0.5)
    assert (config.lr_backbone, config.lr_head) == (0.0001, 0.01)
    assert (config.batch_size, config.accumulate) == (128, 1)
    assert (config.loss, config.patience) == ("emd", 10)
    assert config.augment is False and config.dropout == 0.0 and config.weight_decay == 0.0
    assert config.schedule == "constant" and config.warmup_epochs == 0.0
    assert (config.model, config.pretrained) == ("ViT-B-32", None)  # None: the openai tag


def test_paper_optimizer_is_built_with_those_values(tiny_clip_spec: str) -> None:
    from clip_aesthetics import load_backbone

    model = FinetuneModel.from_backbone(load_backbone(tiny_clip_spec, device="cpu"), 0.0)
    optimizer = build_optimizer(model, TrainConfig(model=tiny_clip_spec))
    assert isinstance(optimizer, torch.optim.SGD)
    rates = {g["name"]: (g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups}
    assert rates["head"] == (0.01, 0.5, 0.0) and rates["tower"] == (0.0001, 0.5, 0.0)
    head = {id(p) for p in model.head_parameters()}
    assert {
        id(p) for g in optimizer.param_groups if g["name"].startswith("head") for p in g["params"]
    } == head


def test_early_stopping_counts_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=3)
    values = [0.50, 0.40, 0.45, 0.40, 0.39, 0.41, 0.42, 0.43]  # 0.40 again is no improvement
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        stopper.update(value, epoch)
        if stopper.stopped:
            stopped_at = epoch
            break
    assert (stopped_at, stopper.best_epoch, stopper.best) == (8, 5, 0.39)


def test_run_stops_after_patience_and_keeps_the_best_epochs_weights(
    tiny_clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation EMD scripted to 0.5, 0.3, 0.4, 0.45 with patience 2: the run ends after epoch 4, and the
    scorer file and the test evaluation use the weights as they were after epoch 2, not the last ones."""
    ava = make_synthetic_ava(tmp_path / "AVA_dataset", n=60, seed=3, size=48)
    scripted, weights_at_validation = iter([0.5, 0.3, 0.4, 0.45]), []
    tested_with = []
    real_evaluate = Trainer.evaluate

    def scripted_evaluate(self, split, description):
        metrics = real_evaluate(self, split, description)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if description == "validation":
            weights_at_validation.append(state)
            metrics["emd"] = next(scripted)
        else:
            tested_with.append(state)
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", scripted_evaluate)
    config = TrainConfig(
        dataset=str(ava), model=tiny_clip_spec, optimizer="adamw", lr_backbone=1e-3, lr_head=1e-3,
        batch_size=16, max_epochs=10, patience=2, split="random", val_fraction=0.25, test_fraction=0.25,
        workers=0, device="cpu",
    )  # fmt: skip
    result = finetune(config, tmp_path / "run")
    assert (result.epochs, result.best_epoch, result.stopped_early) == (4, 2, True)
    assert [row["best"] for row in result.history] == [True, True, False, False]
    best = weights_at_validation[1]
    assert not torch.equal(best["head.weight"], weights_at_validation[3]["head.weight"])  # it did train on
    saved = load_file(tmp_path / "run" / "best.safetensors")
    for name, value in best.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
        torch.testing.assert_close(tested_with[0][name], value, rtol=0, atol=0)


def test_resume_accepts_the_original_command_line(tiny_clip_spec: str, tmp_path: Path) -> None:
    ava = make_synthetic_ava(tmp_path / "AVA_dataset", n=40, seed=4, size=40)
    run = tmp_path / "run"
    command = [
        "finetune", str(ava), "--model", tiny_clip_spec, "--optimizer", "adamw", "--lr-head", "1e-3",
        "--batch-size", "16", "--max-epochs", "2", "--split-kind", "random", "--val-fraction", "0.25",
        "--test-fraction", "0.25", "--workers", "0", "--device", "cpu", "--output", str(run),
    ]  # fmt: skip
    paused = CliRunner().invoke(app, [*command, "--stop-after", "1"])
    assert paused.exit_code == 0, paused.output
    assert not (run / "results.json").exists()

    # other values are refused, each one named with the run's value
    changed = [*command, "--resume", str(run)]
    changed[changed.index("--lr-head") + 1] = "0.5"
    changed[changed.index("--batch-size") + 1] = "8"
    refused = CliRunner().invoke(app, changed)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "--lr-head 0.5 (the run has 0.001)" in message and "--batch-size 8 (the run has 16)" in message

    resumed = CliRunner().invoke(app, [*command, "--resume", str(run)])  # the same command, --resume added
    assert resumed.exit_code == 0, resumed.output
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
