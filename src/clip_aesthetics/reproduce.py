"""One-command reproduction of the paper's study: zero-shot prompts, linear probes, fine-tuning.

Every step writes a scorer file into the output folder and every scorer is then evaluated the way
``clip-aesthetics evaluate --scorer FILE --split test`` does, on the same test records, so each number in the
report can be re-derived with that command. Work is reused only when it was made from exactly this study's
setup (see :mod:`clip_aesthetics.provenance`): the same dataset ids and split, the same backbone and weights,
the same prompts and settings. Anything else is moved aside and rebuilt, and the log says what changed, so a
rerun gives the numbers of a fresh run into an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance
from .backbones import DEFAULT_PRETRAINED, load_backbone
from .constants import DEFAULT_IMAGENET_MODEL, DEFAULT_MODEL
from .constants import REPRODUCE_STEPS as STEPS
from .evaluation import EvaluationResult, evaluate_scorer, load_split, package_versions, plot_evaluation
from .features.embed import DatasetSpec, embed_dataset
from .metrics import plcc
from .probe import fit_probe
from .prompts import PromptRecipe
from .scorers import ZeroShotScorer, load_scorer, save_scorer
from .scorers.base import resolve_precision
from .study_report import PUBLISHED, format_metric, write_report_files

__all__ = ["DEFAULT_IMAGENET_MODEL", "STEPS", "ReproduceConfig", "Study", "format_metric", "write_report"]

# The paper's ResNet-50 pair: CLIP RN50 beside Alibaba-MIIL's ImageNet-21k ResNet-50 (a weights file).
MIIL_PAIR = (("CLIP", "RN50", None), ("ImageNet", "timm:resnet50", None))
# Fine-tuning decodes JPEGs with PIL: the whole study does, so each model is judged on one decode path.
DECODE = "cpu"
# Zero-shot configurations: the paper's fixed pair (accuracy 0.725), the same with 'horrible', and its best.
ZERO_SHOT = (
    ("fixed outstanding/atrocious", PromptRecipe(negative_adjectives=("atrocious",), context="none")),
    ("fixed outstanding/horrible", PromptRecipe(context="none")),
    ("ensembled outstanding/horrible over imagenet", PromptRecipe()),
)
# Fine-tuning options that do not change what a run computes (how long, where, with how many decoders).
RUN_ONLY = ("dataset", "max_epochs", "workers", "device")


@dataclass
class ReproduceConfig:
    """What to reproduce and with which models (see ``clip-aesthetics reproduce --help``)."""

    ava: str
    out: str
    split: str = "official"
    seed: int | None = None
    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    imagenet_models: tuple[str, ...] = (DEFAULT_IMAGENET_MODEL,)
    imagenet_pretrained: tuple[str | None, ...] = ()
    miil_weights: str | None = None
    steps: tuple[str, ...] = STEPS
    max_epochs: int = 100
    batch_size: int = 128
    workers: int | None = None
    device: str | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        unknown = set(self.steps) - set(STEPS)
        if unknown or not self.steps:
            raise ValueError(
                f"--steps takes a comma-separated subset of {', '.join(STEPS)} (got {self.steps})"
            )
        if self.split not in ("official", "random"):
            raise ValueError(f"--split-kind must be official or random, not {self.split!r}")
        if len(self.imagenet_pretrained) > len(self.imagenet_models):
            raise ValueError("--imagenet-pretrained is given once per --imagenet-model, in the same order")

    def imagenet_backbones(self) -> list[tuple[str, str, str | None]]:
        """(kind, model, pretrained) of each ImageNet baseline; '-' or no weights entry: the name's own."""
        weights = [*self.imagenet_pretrained, *[None] * len(self.imagenet_models)][
            : len(self.imagenet_models)
        ]
        pairs = zip(self.imagenet_models, weights, strict=True)
        return [("ImageNet", m, None if w in (None, "-") else w) for m, w in pairs]

    def finetuned_backbones(self) -> list[tuple[str, str, str | None]]:
        """The CLIP model and its ImageNet baselines (the paper fine-tuned the ViT pair)."""
        return [("CLIP", self.model, self.pretrained), *self.imagenet_backbones()]

    def probed_backbones(self) -> list[tuple[str, str, str | None]]:
        """The fine-tuned ones, plus CLIP RN50 vs MIIL's ResNet-50 when its weights are given."""
        if self.miil_weights is None:
            return self.finetuned_backbones()
        (clip_kind, clip, clip_weights), (kind, resnet, _) = MIIL_PAIR
        return [
            *self.finetuned_backbones(),
            (clip_kind, clip, clip_weights),
            (kind, resnet, self.miil_weights),
        ]


@dataclass
class StepResult:
    """One evaluated scorer of the study."""

    step: str
    name: str
    model: str
    key: str
    scorer_file: str
    result: EvaluationResult = field(repr=False)

    def row(self) -> dict:
        metrics = self.result.metrics
        row = {
            "step": self.step,
            "name": self.name,
            "model": self.model,
            "key": self.key,
            "scorer_file": self.scorer_file,
            "n": self.result.n_scored,
            "n_failed": self.result.n_failed,
            **{k: metrics.get(k) for k in ("srcc", "plcc", "accuracy", "emd", "mse")},
        }
        if self.step == "zeroshot":  # the authors' PLCC: on the raw similarity difference
            scored = self.result.scored
            row["plcc_score"] = row["plcc"]
            row["plcc"] = plcc(self.result.raw[scored], self.result.true[scored]) if scored.size > 1 else None
        return row


_SLUG_MAX = 48


def _slug(text: str) -> str:
    """A file-name-safe form of ``text``; long ones (a local-dir: path) keep their end plus a digest.

    File names are limited to 255 bytes, and a model spec can be a whole path: the end names the model, the
    digest of the full text keeps two models whose ends agree apart.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    if len(slug) <= _SLUG_MAX:
        return slug
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug[-(_SLUG_MAX - 11) :].lstrip('_.-')}-{digest}"


def _config_key(step: str, variant: str, model: str, pretrained: str | None) -> str:
    """What identifies a configuration for pairing with a published figure."""
    if pretrained is None and not model.startswith(("timm:", "hf-hub:", "local-dir:")):
        pretrained = DEFAULT_PRETRAINED
    return f"{step}|{variant}|{model}|{pretrained}"


class Study:
    """Runs the configured steps into ``config.out`` and evaluates each scorer on the test split."""

    def __init__(self, config: ReproduceConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.test = load_split("ava", config.ava, "test", config.split, seed=config.seed)
        info = self.test.info
        self.split_provenance = {
            "dataset": {"name": "ava", "ids": provenance.ids_digest(r.id for r in self.test.dataset.records)},
            "split": {
                "kind": info.kind,
                "seed": info.seed,
                "fractions": info.fractions,
                "digests": info.digests,
            },
        }
        self.results: list[StepResult] = []
        self._backbones: dict = {}

    def run(self) -> list[StepResult]:
        for step in self.config.steps:
            getattr(self, f"_{step}")()
        return self.results

    def _backbone(self, model: str, pretrained: str | None):
        if (model, pretrained) not in self._backbones:
            self._backbones[model, pretrained] = load_backbone(model, pretrained, device=self.config.device)
        return self._backbones[model, pretrained]

    def _identity(self, model: str, pretrained: str | None) -> dict:
        """The backbone as the user gave it, and the identity of its weights' content."""
        return {
            "model": model,
            "pretrained": pretrained,
            "weights": self._backbone(model, pretrained).weights_id,
        }

    def _precision(self, model: str, pretrained: str | None) -> str:
        return resolve_precision(self._backbone(model, pretrained).device, self.config.precision)

    def _evaluate(self, step: str, name: str, model: str, key: str, scorer_file: Path) -> None:
        scorer = load_scorer(scorer_file, device=self.config.device)
        self.log(f"evaluating {name} on {len(self.test.records)} test images")
        result = evaluate_scorer(
            scorer,
            self.test.records,
            batch_size=self.config.batch_size,
            workers=self.config.workers,
            precision=self.config.precision,
            decode=DECODE,
            progress=False,
        )
        plot_evaluation(result, self.out / "plots" / _slug(name), title=name)
        self.results.append(StepResult(step, name, model, key, str(scorer_file), result))

    def _zeroshot(self) -> None:
        c = self.config
        for variant, recipe in ZERO_SHOT:
            path = self.out / f"zeroshot-{_slug(variant)}-{_slug(c.model)}.json"
            groups = recipe.groups()
            wanted = {
                "backbone": self._identity(c.model, c.pretrained),
                "recipe": recipe.to_dict(),
                "prompts": [provenance.texts_digest(t) for t in (groups.positive, groups.negative)],
            }
            if not provenance.reusable(path, wanted, self.log):
                backbone = self._backbone(c.model, c.pretrained)
                save_scorer(ZeroShotScorer(backbone, groups, recipe=recipe.to_dict()), path)
                provenance.record(path, wanted)
            name = f"Zero-shot, {variant}, CLIP {c.model}"
            self._evaluate(
                "zeroshot", name, c.model, _config_key("zeroshot", variant, c.model, c.pretrained), path
            )

    def _features(self, model: str, pretrained: str | None) -> tuple[Path, dict]:
        c = self.config
        cache = self.out / f"features-{_slug(model)}"
        wanted = {
            **self.split_provenance,
            "backbone": self._identity(model, pretrained),
            "precision": self._precision(model, pretrained),
            "decode": DECODE,
            "batch_size": c.batch_size,  # sets the shard layout of the cache
        }
        if not provenance.reusable(cache, wanted, self.log):
            provenance.record(cache, wanted)  # before embedding: an interrupted cache of this setup resumes
        self.log(f"embedding with {model} into {cache}")
        spec = DatasetSpec("ava", c.ava, split=c.split, seed=c.seed)
        embed_dataset(
            spec, self._backbone(model, pretrained), cache, batch_size=c.batch_size, workers=c.workers,
            precision=c.precision, decode=DECODE, progress=False,
        )  # fmt: skip
        return cache, wanted

    def _probe(self) -> None:
        for kind, model, pretrained in self.config.probed_backbones():
            path = self.out / f"probe-{_slug(model)}.safetensors"
            cache, features = self._features(model, pretrained)
            wanted = {"features": features, "solver": "ols", "target": "mean"}
            if not provenance.reusable(path, wanted, self.log):
                fit_probe(cache, solver="ols").save(path)
                provenance.record(path, wanted)
            key = _config_key("probe", "ols", model, pretrained)
            self._evaluate("probe", f"Linear probe, {kind} {model}", model, key, path)

    def _finetune(self) -> None:
        from .finetune import TrainConfig

        c = self.config
        for kind, model, pretrained in c.finetuned_backbones():
            run_dir = self.out / f"finetune-{_slug(model)}"
            train = TrainConfig(
                dataset=c.ava, model=model, pretrained=pretrained, max_epochs=c.max_epochs,
                batch_size=c.batch_size, split=c.split, val_fraction=0.05 if c.split == "official" else 0.1,
                test_fraction=0.1, split_seed=c.seed, workers=c.workers, device=c.device,
                precision=c.precision,
            )  # fmt: skip
            settings = {k: v for k, v in train.to_dict().items() if k not in RUN_ONLY}
            wanted = {
                **self.split_provenance,
                "backbone": self._identity(model, pretrained),
                "train": {**settings, "precision": self._precision(model, pretrained)},
            }
            if not provenance.reusable(run_dir, wanted, self.log):
                provenance.record(
                    run_dir, wanted
                )  # before training: an interrupted run of this setup resumes
            self._train_or_resume(train, run_dir, wanted)
            self._check_split(run_dir)
            key = _config_key("finetune", "paper recipe", model, pretrained)
            self._evaluate("finetune", f"Fine-tuned {kind} {model}", model, key, run_dir / "best.safetensors")

    def _train_or_resume(self, train, run_dir: Path, wanted: dict) -> None:
        from .finetune import finetune, resume_config

        results = run_dir / "results.json"  # written when a run has finished
        if results.is_file():
            done = json.loads(results.read_text())
            epochs, stopped = done.get("epochs", 0), done.get("stopped_early", False)
            if epochs == train.max_epochs or (stopped and epochs < train.max_epochs):
                self.log(f"reusing the finished run {run_dir}")
                return
            if epochs > train.max_epochs:  # a fresh run would have stopped sooner: not the same result
                why = f"trained {epochs} epochs, more than --max-epochs {train.max_epochs}"
                provenance.move_aside(run_dir, why, self.log)
                provenance.record(run_dir, wanted)
        # fewer epochs than asked, not stopped early: continue (constant schedule: as a longer fresh run)
        resume = (run_dir / "last.pt").is_file()
        config = resume_config(run_dir, max_epochs=train.max_epochs) if resume else train
        self.log(f"{'resuming' if resume else 'fine-tuning'} {train.model} in {run_dir}")
        finetune(config, run_dir, resume=resume, log=self.log)

    def _check_split(self, run_dir: Path) -> None:
        """A fine-tuning run makes its own split: it must be the study's, or its test numbers mean nothing."""
        run_split = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["split"]
        if run_split["digests"] != self.test.info.digests:
            raise RuntimeError(f"{run_dir} was trained on another split than the study's test split")

    def report(self) -> dict:
        """The study as a JSON-serialisable document."""
        c = self.config
        return {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(c).items()},
            "decode": DECODE,
            "split": self.test.describe(),
            "provenance": self.split_provenance,
            "results": [r.row() for r in self.results],
            "published": list(PUBLISHED),
            "versions": package_versions(),
        }


def write_report(study: Study) -> dict:
    """Write report.json, report.md and plots/summary.png into the study's folder; returns the document."""
    return write_report_files(study.report(), study.out)
