"""One-command reproduction of the paper's study: zero-shot prompts, linear probes, fine-tuning.

Every step writes a scorer file into the output folder and every scorer is then evaluated the way
``clip-aesthetics evaluate --scorer FILE --split test`` does, on the same test records, so each number in the
report can be re-derived with that command. Work is reused: feature caches resume, finished fine-tuning runs
are kept, and scorer files that exist are not refitted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .backbones import load_backbone
from .evaluation import EvaluationResult, evaluate_scorer, load_split, package_versions, plot_evaluation
from .features.embed import DatasetSpec, embed_dataset
from .probe import fit_probe
from .prompts import PromptRecipe
from .scorers import ZeroShotScorer, load_scorer, save_scorer

STEPS = ("zeroshot", "probe", "finetune")
DEFAULT_IMAGENET_MODEL = "timm:vit_base_patch32_224.augreg_in21k"

# Figures published for the paper and other systems on AVA (SRCC, PLCC, accuracy; None = not reported).
PUBLISHED = (
    {
        "system": "Zero-shot, fixed prompt (paper)",
        "srcc": None,
        "plcc": None,
        "accuracy": 0.725,
        "source": "Hentschel, Kobs & Hotho 2022, authors' code outputs; their random split (25,551 test)",
    },
    {
        "system": "Zero-shot, ensembled prompts (paper)",
        "srcc": None,
        "plcc": None,
        "accuracy": 0.756,
        "source": "Hentschel, Kobs & Hotho 2022, as quoted in a public write-up",
    },
    {
        "system": "Linear probe, CLIP ViT-B/32 (paper)",
        "srcc": 0.674,
        "plcc": 0.682,
        "accuracy": 0.793,
        "source": "Hentschel, Kobs & Hotho 2022, authors' code outputs; their random split",
    },
    {
        "system": "Fine-tuned CLIP ViT-B/32 (paper)",
        "srcc": None,
        "plcc": None,
        "accuracy": 0.816,
        "source": "Hentschel, Kobs & Hotho 2022, as quoted in a public write-up",
    },
    {
        "system": "NIMA",
        "srcc": 0.713,
        "plcc": None,
        "accuracy": None,
        "source": "pyiqa (chaofengc/IQA-PyTorch) benchmark, AVA official test split",
    },
    {
        "system": "LAION aesthetic predictor",
        "srcc": 0.665,
        "plcc": None,
        "accuracy": None,
        "source": "pyiqa (chaofengc/IQA-PyTorch) benchmark, AVA official test split",
    },
    {
        "system": "TOPIQ",
        "srcc": 0.791,
        "plcc": None,
        "accuracy": None,
        "source": "pyiqa (chaofengc/IQA-PyTorch) benchmark, AVA official test split",
    },
    {
        "system": "Q-Align",
        "srcc": 0.822,
        "plcc": None,
        "accuracy": None,
        "source": "pyiqa (chaofengc/IQA-PyTorch) benchmark, AVA official test split",
    },
)


@dataclass
class ReproduceConfig:
    """What to reproduce and with which models (see ``clip-aesthetics reproduce --help``)."""

    ava: str
    out: str
    split: str = "official"
    seed: int | None = None
    model: str = "ViT-B-32"
    pretrained: str | None = None
    imagenet_model: str = DEFAULT_IMAGENET_MODEL
    imagenet_pretrained: str | None = None
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
            raise ValueError(f"--split must be official or random, not {self.split!r}")

    def compared_backbones(self) -> tuple[tuple[str, str, str | None], ...]:
        """(kind, model, pretrained) of the CLIP model and of its ImageNet baseline."""
        return (
            ("CLIP", self.model, self.pretrained),
            ("ImageNet", self.imagenet_model, self.imagenet_pretrained),
        )


@dataclass
class StepResult:
    """One evaluated scorer of the study."""

    step: str
    name: str
    model: str
    scorer_file: str
    result: EvaluationResult = field(repr=False)

    def row(self) -> dict:
        metrics = self.result.metrics
        return {
            "step": self.step,
            "name": self.name,
            "model": self.model,
            "scorer_file": self.scorer_file,
            "n": self.result.n_scored,
            "n_failed": self.result.n_failed,
            **{k: metrics.get(k) for k in ("srcc", "plcc", "accuracy", "emd", "mse")},
        }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


class Study:
    """Runs the configured steps into ``config.out`` and evaluates each scorer on the test split."""

    def __init__(self, config: ReproduceConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.test = load_split("ava", config.ava, "test", config.split, seed=config.seed)
        self.results: list[StepResult] = []

    def run(self) -> list[StepResult]:
        for step in self.config.steps:
            getattr(self, f"_{step}")()
        return self.results

    def _evaluate(self, step: str, name: str, model: str, scorer_file: Path, scorer=None) -> None:
        scorer = scorer or load_scorer(scorer_file, device=self.config.device)
        self.log(f"evaluating {name} on {len(self.test.records)} test images")
        result = evaluate_scorer(
            scorer,
            self.test.records,
            batch_size=self.config.batch_size,
            workers=self.config.workers,
            precision=self.config.precision,
            progress=False,
        )
        plot_evaluation(result, self.out / "plots" / _slug(name), title=name)
        self.results.append(StepResult(step, name, model, str(scorer_file), result))

    def _zeroshot(self) -> None:
        c = self.config
        backbone = load_backbone(c.model, c.pretrained, device=c.device)
        for name, recipe in (("fixed", PromptRecipe(context="none")), ("ensembled", PromptRecipe())):
            path = self.out / f"zeroshot-{name}.json"
            if not path.is_file():
                save_scorer(ZeroShotScorer(backbone, recipe.groups(), recipe=recipe.to_dict()), path)
            self._evaluate("zeroshot", f"Zero-shot, {name} prompts", c.model, path)

    def _features(self, model: str, pretrained: str | None) -> Path:
        c = self.config
        cache = self.out / f"features-{_slug(model)}"
        spec = DatasetSpec("ava", c.ava, split=c.split, seed=c.seed)
        backbone = load_backbone(model, pretrained, device=c.device)
        self.log(f"embedding with {model} into {cache}")
        embed_dataset(
            spec, backbone, cache, batch_size=c.batch_size, workers=c.workers, precision=c.precision
        )
        return cache

    def _probe(self) -> None:
        c = self.config
        for kind, model, pretrained in c.compared_backbones():
            path = self.out / f"probe-{_slug(model)}.safetensors"
            if not path.is_file():
                fit_probe(self._features(model, pretrained), solver="ols").save(path)
            self._evaluate("probe", f"Linear probe, {kind} {model}", model, path)

    def _finetune(self) -> None:
        from .finetune import TrainConfig

        c = self.config
        for kind, model, pretrained in c.compared_backbones():
            run_dir = self.out / f"finetune-{_slug(model)}"
            train = TrainConfig(
                dataset=c.ava,
                model=model,
                pretrained=pretrained,
                max_epochs=c.max_epochs,
                batch_size=c.batch_size,
                split=c.split,
                val_fraction=0.05 if c.split == "official" else 0.1,
                test_fraction=0.1,
                split_seed=c.seed,
                workers=c.workers,
                device=c.device,
                precision=c.precision,
            )
            self._train_or_resume(train, run_dir)
            self._evaluate("finetune", f"Fine-tuned {kind} {model}", model, run_dir / "best.safetensors")

    def _train_or_resume(self, train, run_dir: Path) -> None:
        from .finetune import finetune, resume_config

        results = run_dir / "results.json"  # written when a run has finished
        if results.is_file():
            done = json.loads(results.read_text())
            if done.get("stopped_early") or done.get("epochs", 0) >= train.max_epochs:
                self.log(f"reusing the finished run {run_dir}")
                return
        resume = (run_dir / "last.pt").is_file()
        config = resume_config(run_dir, max_epochs=train.max_epochs) if resume else train
        self.log(f"{'resuming' if resume else 'fine-tuning'} {train.model} in {run_dir}")
        finetune(config, run_dir, resume=resume, log=self.log)

    def report(self) -> dict:
        """The study as a JSON-serialisable document."""
        c = self.config
        return {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(c).items()},
            "split": self.test.describe(),
            "results": [r.row() for r in self.results],
            "published": list(PUBLISHED),
            "versions": package_versions(),
        }


def markdown_report(document: dict) -> str:
    """The study as Markdown: this run's table, then the published figures with their sources."""
    out = document["config"]["out"]
    split = document["split"]
    lines = [
        "# CLIP knows image aesthetics: reproduction",
        "",
        f"AVA at `{document['config']['ava']}`, {document['config']['split']} split, "
        f"{split['split']['counts'].get('test', '?')} test images. "
        "Each row is `clip-aesthetics evaluate --scorer FILE --split test`.",
        "",
        "| step | scorer | n | SRCC | PLCC | accuracy | EMD | scorer file |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in document["results"]:
        metrics = [format_metric(row[k]) for k in ("srcc", "plcc", "accuracy", "emd")]
        scorer_file = f"`{os.path.relpath(row['scorer_file'], out)}`"
        lines.append(_table_row([row["step"], row["name"], str(row["n"]), *metrics, scorer_file]))
    lines += [
        "",
        "## Published figures",
        "",
        "| system | SRCC | PLCC | accuracy | source |",
        "|---|---:|---:|---:|---|",
    ]
    for row in document["published"]:
        metrics = [format_metric(row[k]) for k in ("srcc", "plcc", "accuracy")]
        lines.append(_table_row([row["system"], *metrics, row["source"]]))
    lines += [
        "",
        "Accuracy: a true mean above 5 is good; zero-shot scorers call an image good when it is closer to "
        "the positive prompts. The paper used its own random split, so its figures compare only roughly.",
        "",
    ]
    return "\n".join(lines)


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_metric(value) -> str:
    """A metric with three decimals, or '-' when missing."""
    return "-" if value is None or value != value else f"{value:.3f}"


def plot_summary(document: dict, path: Path) -> Path:
    """Bar chart of SRCC and accuracy per scorer."""
    from matplotlib.figure import Figure

    rows = document["results"]
    figure = Figure(figsize=(8, 0.6 * len(rows) + 1.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    names = [r["name"] for r in rows]
    for ax, metric in zip(axes, ("srcc", "accuracy"), strict=True):
        ax.barh(names, [r[metric] if r[metric] is not None else 0 for r in rows], color="#4a7bd0")
        ax.set_xlabel(metric.upper() if metric == "srcc" else metric)
        ax.invert_yaxis()
    figure.suptitle("Test split, this run")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_report(study: Study) -> dict:
    """Write report.json, report.md and plots/summary.png into the study's folder; returns the document."""
    document = study.report()
    out = study.out
    (out / "report.json").write_text(json.dumps(document, indent=2, default=_json_default), encoding="utf-8")
    (out / "report.md").write_text(markdown_report(document), encoding="utf-8")
    plot_summary(document, out / "plots" / "summary.png")
    return document


def _json_default(value):
    return None if value != value else float(value)
