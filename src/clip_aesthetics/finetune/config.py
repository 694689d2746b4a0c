"""The typed configuration of a fine-tuning run; defaults are the paper's recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..constants import DEFAULT_MODEL, SPLIT_KINDS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")

# Options a resumed run may change: they alter how long or where it runs, not what it computes.
RESUMABLE_FIELDS = ("max_epochs", "workers", "device")
# Fields whose command-line option has another name (the CLI's shared vocabulary).
OPTION_NAMES = {"split": "--split-kind", "dataset_kind": "--dataset"}


def option_name(field: str) -> str:
    """The `clip-aesthetics finetune` option that sets a TrainConfig field."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (saved as ``config.json`` in the run folder).

    The defaults follow Hentschel et al. (2022): SGD with momentum 0.5, lr 1e-4 for the tower and 1e-2 for
    the head, batch 128, EMD loss (r = 2), early stopping on validation EMD with patience 10, the model's own
    input size, no augmentation, no dropout (the paper names none; NIMA used 0.75). Two defaults are the
    project's: ``precision`` auto (bf16 autocast on CUDA; the authors trained in fp32) and ``max_epochs``
    100 (the authors ran CLIP for at most 50); ``reproduce --recipe paper`` sets both to the authors'.

    ``batch_size`` is the global batch per optimiser step: each of ``world_size`` processes takes
    ``batch_size / (world_size * accumulate)`` images per forward pass.
    """

    dataset: str = ""
    dataset_kind: str = "ava"
    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    loss: str = "emd"
    optimizer: str = "sgd"
    lr_backbone: float = 1e-4
    lr_head: float = 1e-2
    momentum: float = 0.5
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    batch_size: int = 128
    accumulate: int = 1
    max_epochs: int = 100
    patience: int = 10
    dropout: float = 0.0
    freeze_backbone: bool = False
    freeze_blocks: int = 0
    augment: bool = False
    split: str = "official"
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    split_seed: int | None = None
    seed: int = 0
    precision: str = "auto"
    workers: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a one-line message for an inconsistent configuration."""
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (
                self.split in SPLIT_KINDS[:2] or self.split.startswith("file:"),
                f"--split-kind must be one of {', '.join(SPLIT_KINDS)} (file: with --split-file)",
            ),
            (self.loss in ("emd", "mse"), "--loss must be emd or mse"),
            (self.batch_size >= 1 and self.accumulate >= 1, "--batch-size and --accumulate must be >= 1"),
            (self.max_epochs >= 1 and self.patience >= 1, "--max-epochs and --patience must be >= 1"),
            (0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)"),
            (self.freeze_blocks >= 0, "--freeze-blocks must be >= 0"),
            (not (self.freeze_backbone and self.freeze_blocks), "use --freeze-backbone or --freeze-blocks"),
            (0.0 < self.val_fraction < 1.0, "--val-fraction must be in (0, 1)"),
            (
                0.0 <= self.test_fraction < 1.0 - self.val_fraction,
                "--test-fraction + --val-fraction must be < 1",
            ),
            (self.warmup_epochs >= 0.0, "--warmup-epochs must be >= 0"),
            (self.lr_backbone >= 0.0 and self.lr_head > 0.0, "learning rates must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def micro_batch(self, world_size: int) -> int:
        """Images per forward pass on one process."""
        per_step = world_size * self.accumulate
        if self.batch_size % per_step:
            raise ValueError(
                f"--batch-size {self.batch_size} is not divisible by processes x --accumulate = {per_step}"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
