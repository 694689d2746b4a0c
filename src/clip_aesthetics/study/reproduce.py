"""One-command reproduction of the paper's study: zero-shot prompts, linear probes, fine-tuning.

Every step writes a scorer file into the output folder and every scorer is then evaluated the way
``clip-aesthetics evaluate --scorer FILE --split test`` does, on the same test records, so each number in the
report can be re-derived with that command. Work is reused only when it was made from exactly this study's
setup (see :mod:`clip_aesthetics.study.provenance`): the same dataset ids and split, the same backbone and
weights, the same prompts and settings. Anything else is moved aside and rebuilt, and the log says what
changed, so a rerun gives the numbers of a fresh run into an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..constants import DEFAULT_IMAGENET_MODEL, DEFAULT_MODEL
from ..constants import REPRODUCE_STEPS as STEPS
from ..datasets import AUTHORS_FRACTIONS, AUTHORS_SEED, split_kind
from ..encoders.backbones import DEFAULT_PRETRAINED, load_backbone, timm_default_preprocess
from ..encoders.compute import resolve_precision
from ..encoders.prompts import PromptRecipe
from ..features.embed import DatasetSpec, embed_dataset
from ..features.fit_probe import fit_probe
from ..runs.evaluate import (
    EvaluationResult,
    evaluate_scorer,
    load_split,
    package_versions,
    plot_evaluation,
    write_predictions,
)
from ..scorers import ZeroShotScorer, load_scorer, save_scorer
from ..scorers.zeroshot import FORMULAS
from . import provenance
from .paper_report import PUBLISHED, format_metric, write_report_files

__all__ = [
    "DEFAULT_IMAGENET_MODEL",
    "RECIPES",
    "STEPS",
    "Recipe",
    "ReproduceConfig",
    "Study",
    "format_metric",
    "write_report",
]


@dataclass(frozen=True)
class Recipe:
    """The settings a reported figure depends on (the split is chosen in :meth:`ReproduceConfig.split`)."""

    name: str
    zeroshot_score: str  # the zero-shot formula of the configurations the paper reports
    probe_fit_on: tuple[str, ...]  # the splits a linear probe is fitted on
    miil_preprocess: str  # "timm-default" (the authors') or "native" (MIIL's own)
    precision: str  # of features, evaluation and fine-tuning
    clip_epochs: int  # fine-tuning epochs at most
    imagenet_epochs: int


# The authors' settings (shiemn/CLIP-knows-IA): their split files or proportions, probes fitted on their whole
# training file, timm's default preprocessing for MIIL's ResNet-50, their zero-shot score, fp32, CLIP
# fine-tuned for at most 50 epochs. Their limit for the ImageNet models is not confirmed: 100 as for ours.
PAPER = Recipe("paper", "authors", ("train", "val"), "timm-default", "fp32", 50, 100)
# The project's own: the official split, probes fitted on train only (validation held out), each model's
# native preprocessing, cosine ensembling, bf16 on CUDA, up to 100 epochs.
IMPROVED = Recipe("improved", "cosine", ("train",), "native", "auto", 100, 100)
RECIPES = {recipe.name: recipe for recipe in (PAPER, IMPROVED)}

# The paper's ResNet-50 pair: CLIP RN50 beside Alibaba-MIIL's ImageNet-21k ResNet-50 (a weights file).
MIIL_PAIR = (("CLIP", "RN50", None), ("ImageNet", "timm:resnet50", None))
MIIL_IDENTITY = "timm:resnet50:miil_21k"  # the MIIL row's identity (the file is given as --miil-weights)
# The published weights each CLIP architecture of the paper stands for.
PAPER_WEIGHTS = {"ViT-B-32": "ViT-B-32:openai", "RN50": "RN50:openai"}
# Fine-tuning decodes JPEGs with PIL: the whole study does, so each model is judged on one decode path.
DECODE = "cpu"
# Zero-shot configurations (name, prompts, strategy): the paper's fixed pair (accuracy 0.725), the same with
# 'horrible', its best (ensembled over the ImageNet class names) and the authors' content mode.
ZERO_SHOT = (
    (
        "fixed outstanding/atrocious",
        PromptRecipe(negative_adjectives=("atrocious",), context="none"),
        "ensemble",
    ),
    ("fixed outstanding/horrible", PromptRecipe(context="none"), "ensemble"),
    ("ensembled outstanding/horrible over imagenet", PromptRecipe(), "ensemble"),
    ("content mode outstanding/horrible over imagenet", PromptRecipe(), "content"),
)
ENSEMBLED = 2  # the configuration also computed with the other formula, as its own row
# Fine-tuning options that do not change what a run computes (how long, where, with how many decoders).
RUN_ONLY = ("dataset", "max_epochs", "workers", "device")


@dataclass
class ReproduceConfig:
    """What to reproduce, with which recipe and models (see ``clip-aesthetics reproduce --help``).

    ``split``, ``seed``, ``max_epochs``, ``precision`` and ``zeroshot_score`` left None take the recipe's
    value; a value given departs from the paper where it differs, and the report says so per row.
    """

    ava: str
    out: str
    recipe: str = "paper"
    split: str | None = None
    split_file: str | None = None
    seed: int | None = None
    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    imagenet_models: tuple[str, ...] = (DEFAULT_IMAGENET_MODEL,)
    imagenet_pretrained: tuple[str | None, ...] = ()
    miil_weights: str | None = None
    steps: tuple[str, ...] = STEPS
    max_epochs: int | None = None
    batch_size: int = 128
    workers: int | None = None
    device: str | None = None
    precision: str | None = None
    zeroshot_score: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.steps) - set(STEPS)
        if unknown or not self.steps:
            raise ValueError(
                f"--steps takes a comma-separated subset of {', '.join(STEPS)} (got {self.steps})"
            )
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be {' or '.join(RECIPES)}, not {self.recipe!r}")
        if self.split not in (None, "official", "random", "file"):
            raise ValueError(f"--split-kind must be official, random or file, not {self.split!r}")
        if self.zeroshot_score not in (None, *FORMULAS):
            raise ValueError(f"--zeroshot-score must be {' or '.join(FORMULAS)}, not {self.zeroshot_score!r}")
        if len(self.imagenet_pretrained) > len(self.imagenet_models):
            raise ValueError("--imagenet-pretrained is given once per --imagenet-model, in the same order")
        split_kind(self.split_kind, self.split_file)  # --split-file with another kind is refused

    @property
    def settings(self) -> Recipe:
        return RECIPES[self.recipe]

    @property
    def split_kind(self) -> str:
        """official, random or file: as given, the files when given, else the recipe's choice."""
        if self.split is not None:
            return self.split
        if self.split_file is not None:
            return "file"
        return "random" if self.recipe == "paper" else "official"

    def split_spec(self) -> tuple[str, tuple[float, float, float], int | None]:
        """(kind as the loaders take it, random fractions, seed): the paper's random split has the authors'
        proportions (test 10%, validation 20% of the rest) and seed 42."""
        kind = split_kind(self.split_kind, self.split_file)
        authors = self.recipe == "paper" and kind == "random"
        fractions = AUTHORS_FRACTIONS if authors else (0.8, 0.1, 0.1)
        seed = self.seed if self.seed is not None else (AUTHORS_SEED if authors else None)
        return kind, fractions, seed

    @property
    def formula(self) -> str:
        return self.zeroshot_score or self.settings.zeroshot_score

    @property
    def run_precision(self) -> str:
        return self.precision or self.settings.precision

    def epochs(self, kind: str) -> int:
        if self.max_epochs is not None:
            return self.max_epochs
        return self.settings.clip_epochs if kind == "CLIP" else self.settings.imagenet_epochs

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
    """One evaluated scorer of the study, with the recipe it ran and where it departs from the paper."""

    step: str
    name: str
    model: str
    key: str
    scorer_file: str
    result: EvaluationResult = field(repr=False)
    recipe: str = "paper"
    departures: list[str] = field(default_factory=list)

    def row(self) -> dict:
        metrics = self.result.metrics
        return {
            "step": self.step,
            "name": self.name,
            "model": self.model,
            "key": self.key,
            "scorer_file": self.scorer_file,
            "n": self.result.n_scored,
            "n_failed": self.result.n_failed,
            # zero-shot: SRCC and PLCC of raw, as the authors (evaluate does so); plcc_score: of 1-10
            **{k: metrics.get(k) for k in ("srcc", "plcc", "plcc_score", "accuracy", "emd", "mse")},
            "recipe": self.recipe,
            "departures": self.departures,
        }


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


def _config_key(step: str, variant: str, identity: str) -> str:
    """What identifies a configuration for pairing with a published figure: step, variant, weights."""
    return f"{step}|{variant}|{identity}"


class Study:
    """Runs the configured steps into ``config.out`` and evaluates each scorer on the test split."""

    def __init__(self, config: ReproduceConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.split_kind, self.fractions, self.seed = config.split_spec()
        self.test = load_split(
            "ava", config.ava, "test", self.split_kind, seed=self.seed, fractions=self.fractions
        )
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
        """The loaded backbone, with the recipe's preprocessing (MIIL's ResNet-50 under the paper's)."""
        if (model, pretrained) not in self._backbones:
            preprocess = self._preprocess(model, pretrained)
            self._backbones[model, pretrained] = load_backbone(
                model, pretrained, device=self.config.device, preprocess=preprocess
            )
        return self._backbones[model, pretrained]

    def _preprocess(self, model: str, pretrained: str | None):
        """timm's default configuration for the MIIL ResNet-50 under the paper's recipe (as the authors)."""
        miil = pretrained is not None and pretrained == self.config.miil_weights
        if miil and self.config.settings.miil_preprocess == "timm-default":
            return timm_default_preprocess(model.removeprefix("timm:"))
        return None

    def _identity(self, model: str, pretrained: str | None) -> dict:
        """The backbone as the user gave it, and the identity of its weights' content."""
        backbone = self._backbone(model, pretrained)
        return {
            "model": model,
            "pretrained": pretrained,
            "weights": backbone.weights_id,
            "preprocess": backbone.preprocess_cfg.to_dict(),
        }

    def _weights_key(self, model: str, pretrained: str | None) -> str:
        """The weights a row stands for: recognised published weights, the MIIL file, or the spec."""
        if pretrained is not None and pretrained == self.config.miil_weights:
            return MIIL_IDENTITY
        known = self._backbone(model, pretrained).known_weights
        if known:
            return known
        if pretrained is None and not model.startswith(("timm:", "hf-hub:", "local-dir:")):
            pretrained = DEFAULT_PRETRAINED
        return model if pretrained is None else f"{model}:{pretrained}"

    def _precision(self, model: str, pretrained: str | None) -> str:
        device = self._backbone(model, pretrained).device
        return resolve_precision(device, self.config.run_precision)

    def _departures(self, kind: str, model: str, pretrained: str | None) -> list[str]:
        """Where a row's setup differs from the paper's, in words (shared by every step)."""
        found = [self._split_departure()]
        precision = self._precision(model, pretrained)
        if precision != "fp32":
            found.append(f"precision {precision} (the authors: fp32)")
        if kind == "CLIP":
            found.append(self._weights_departure(model, pretrained))
        elif self._weights_key(model, pretrained) not in (DEFAULT_IMAGENET_MODEL, MIIL_IDENTITY):
            given = model if pretrained is None else f"{model} --pretrained {pretrained}"
            found.append(f"{given} is not one of the paper's ImageNet-21k models")
        return [d for d in found if d]

    def _weights_departure(self, model: str, pretrained: str | None) -> str:
        expected = PAPER_WEIGHTS.get(model.removesuffix("-quickgelu"))
        if expected is None and model.startswith(("hf-hub:", "local-dir:")):
            expected = PAPER_WEIGHTS["ViT-B-32"]  # a folder may hold the paper's ViT-B/32
        if expected is None:
            return f"model {model} is not one the paper used (ViT-B-32, RN50)"
        if self._weights_key(model, pretrained) != expected:
            given = model if pretrained is None else f"{model} --pretrained {pretrained}"
            return f"weights of {given} not recognised as {expected} (the paper's) by their content"
        return ""

    def _split_departure(self) -> str:
        kind, info = self.split_kind, self.test.info
        if kind.startswith("file:"):
            return "" if not info.fractions else "validation carved out of AVA_train.csv (20%, seed 42) here"
        if kind == "official":
            return "split: AVA's official test list (generic_test.jpgl), not the authors' split files"
        if self.config.recipe == "paper" and self.seed == AUTHORS_SEED:
            return "split: random with the authors' proportions and seed 42, not their files (other images)"
        return f"split: random {list(self.fractions)}, seed {info.seed}, not the authors' split files"

    def _evaluate(self, step: str, name: str, model: str, key: str, scorer_file: Path, departures) -> None:
        scorer = load_scorer(scorer_file, device=self.config.device)
        self.log(f"evaluating {name} on {len(self.test.records)} test images")
        result = evaluate_scorer(
            scorer,
            self.test.records,
            batch_size=self.config.batch_size,
            workers=self.config.workers,
            precision=self.config.run_precision,
            decode=DECODE,
            progress=False,
        )
        plot_evaluation(result, self.out / "plots" / _slug(name), title=name)
        write_predictions(result, self.out / "predictions" / f"{_slug(name)}.csv")
        recipe = self.config.recipe
        self.results.append(StepResult(step, name, model, key, str(scorer_file), result, recipe, departures))

    def _zeroshot(self) -> None:
        c = self.config
        other = next(f for f in FORMULAS if f != c.formula)
        configurations = [(*z, c.formula) for z in ZERO_SHOT] + [(*ZERO_SHOT[ENSEMBLED], other)]
        for variant, recipe, strategy, formula in configurations:
            path = self.out / f"zeroshot-{_slug(variant)}-{formula}-{_slug(c.model)}.json"
            groups = recipe.groups()
            wanted = {
                "backbone": self._identity(c.model, c.pretrained),
                "recipe": recipe.to_dict(),
                "strategy": strategy,
                "formula": formula,
                "text_precision": self._precision(c.model, c.pretrained),
                "prompts": [provenance.texts_digest(t) for t in (groups.positive, groups.negative)],
            }
            if not provenance.reusable(path, wanted, self.log):
                backbone = self._backbone(c.model, c.pretrained)
                scorer = ZeroShotScorer(
                    backbone, groups, recipe=recipe.to_dict(), strategy=strategy, formula=formula,
                    text_precision=c.run_precision,
                )  # fmt: skip
                save_scorer(scorer, path)
                provenance.record(path, wanted)
            departures = self._departures("CLIP", c.model, c.pretrained)
            if formula != "authors":
                departures.append("score: cosine ensembling (normalised prompts), not the authors' formula")
            name = f"Zero-shot, {variant}, {formula} score, CLIP {c.model}"
            key = _config_key("zeroshot", f"{variant}|{formula}", self._weights_key(c.model, c.pretrained))
            self._evaluate("zeroshot", name, c.model, key, path, departures)

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
        spec = DatasetSpec("ava", c.ava, split=self.split_kind, fractions=self.fractions, seed=self.seed)
        embed_dataset(
            spec, self._backbone(model, pretrained), cache, batch_size=c.batch_size,
            workers=c.workers, precision=c.run_precision, decode=DECODE, progress=False,
        )  # fmt: skip
        return cache, wanted

    def _probe(self) -> None:
        fit_on = self.config.settings.probe_fit_on
        for kind, model, pretrained in self.config.probed_backbones():
            path = self.out / f"probe-{_slug(model)}.safetensors"
            cache, features = self._features(model, pretrained)
            wanted = {"features": features, "solver": "ols", "target": "mean", "fit_on": list(fit_on)}
            if not provenance.reusable(path, wanted, self.log):
                fit_probe(cache, solver="ols", fit_on=fit_on).save(path)
                provenance.record(path, wanted)
            departures = self._departures(kind, model, pretrained)
            if fit_on == ("train",):
                departures.append("fitted on the train part only (the authors: train + validation)")
            miil = pretrained is not None and pretrained == self.config.miil_weights
            if miil and self._preprocess(model, pretrained) is None:
                departures.append("MIIL's own preprocessing, not timm's default (the authors')")
            key = _config_key("probe", "ols", self._weights_key(model, pretrained))
            self._evaluate("probe", f"Linear probe, {kind} {model}", model, key, path, departures)

    def _finetune(self) -> None:
        from ..finetune import TrainConfig

        c = self.config
        _, val_fraction, test_fraction = self.fractions
        if self.split_kind == "official":
            val_fraction = 0.05
        for kind, model, pretrained in c.finetuned_backbones():
            run_dir = self.out / f"finetune-{_slug(model)}"
            train = TrainConfig(
                dataset=c.ava, model=model, pretrained=pretrained, max_epochs=c.epochs(kind),
                batch_size=c.batch_size, split=self.split_kind, val_fraction=val_fraction,
                test_fraction=test_fraction, split_seed=self.seed, workers=c.workers, device=c.device,
                precision=c.run_precision,
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
            departures = self._departures(kind, model, pretrained)
            if kind == "CLIP" and train.max_epochs != PAPER.clip_epochs:
                departures.append(f"at most {train.max_epochs} epochs (the authors: {PAPER.clip_epochs})")
            key = _config_key("finetune", "emd sgd", self._weights_key(model, pretrained))
            name = f"Fine-tuned {kind} {model}"
            self._evaluate("finetune", name, model, key, run_dir / "best.safetensors", departures)

    def _train_or_resume(self, train, run_dir: Path, wanted: dict) -> None:
        from ..finetune import finetune, resume_config

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
            "recipe": {**asdict(c.settings), "split": self.split_kind, "zeroshot_score": c.formula},
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
