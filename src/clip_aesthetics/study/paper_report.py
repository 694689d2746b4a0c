"""The report of a reproduction study: this run's rows beside the published figures of the same configuration.

Each published figure names its configuration (step, prompts or recipe, model and weights); a row of this
run with the same configuration key is printed on the same line, so a reader compares like with like.
Figures whose configuration this run did not compute, and other systems' figures, are listed with their
configuration and source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import atomic_savefig, atomic_write_text
from ..runs.tables import format_metric

PAPER = "Hentschel, Kobs & Hotho 2022"
PAPER_SPLIT = "their random split (25,551 test images)"
UNCONFIRMED = f"reported in {PAPER}; the figure is not confirmed from a public source here"
VIT_IN21K = "timm:vit_base_patch32_224.augreg_in21k"


def _paper(system: str, key: str, configuration: str, figures=(None, None, None), source=UNCONFIRMED) -> dict:
    srcc, plcc, accuracy = figures
    confirmed = any(f is not None for f in figures)
    return {
        "system": system,
        "key": key,
        "configuration": configuration,
        "srcc": srcc,
        "plcc": plcc,
        "accuracy": accuracy,
        "confirmed": confirmed,
        "source": source,
    }


# Every figure the paper reports for AVA, with the configuration key of the row that reproduces it
# (step|variant|weights, see reproduce._config_key), then other systems' figures (no row computes them).
# SRCC, PLCC, accuracy; None = not confirmed from a public source (the row says so).
PUBLISHED = (
    _paper(
        "Zero-shot, fixed prompt (paper)",
        "zeroshot|fixed outstanding/atrocious|authors|ViT-B-32:openai",
        "'a outstanding picture' vs 'a atrocious picture', the authors' score, CLIP ViT-B/32 (OpenAI)",
        (None, None, 0.725),
        f"{PAPER}, the authors' prompting notebook output; {PAPER_SPLIT}",
    ),
    _paper(
        "Zero-shot, ensembled prompts (paper)",
        "zeroshot|ensembled outstanding/horrible over imagenet|authors|ViT-B-32:openai",
        "'a outstanding/horrible picture of a {class}' over the authors' 1000 ImageNet class names, "
        "ensembled with the authors' score; CLIP ViT-B/32 (OpenAI)",
        (None, None, 0.756),
        f"{PAPER}, as quoted in a public write-up",
    ),
    _paper(
        "Linear probe, CLIP ViT-B/32 (paper)",
        "probe|ols|ViT-B-32:openai",
        "standardised CLIP ViT-B/32 (OpenAI) image embeddings, ordinary least squares",
        (0.674, 0.682, 0.793),
        f"{PAPER}, authors' code outputs; {PAPER_SPLIT}",
    ),
    _paper(
        "Linear probe, ImageNet-21k ViT-B/32 (paper)",
        f"probe|ols|{VIT_IN21K}",
        "standardised ImageNet-21k ViT-B/32 (timm augreg_in21k) features, ordinary least squares",
    ),
    _paper(
        "Linear probe, CLIP RN50 (paper)",
        "probe|ols|RN50:openai",
        "standardised CLIP RN50 (OpenAI) image embeddings, ordinary least squares",
    ),
    _paper(
        "Linear probe, ImageNet-21k ResNet-50 (paper)",
        "probe|ols|timm:resnet50:miil_21k",
        "standardised Alibaba-MIIL ImageNet-21k ResNet-50 features (timm's default preprocessing), OLS",
    ),
    _paper(
        "Fine-tuned CLIP ViT-B/32 (paper)",
        "finetune|emd sgd|ViT-B-32:openai",
        "CLIP ViT-B/32 (OpenAI) image tower + 10-bin head, EMD, SGD momentum 0.5, lr 1e-4/1e-2, batch 128, "
        "fp32, at most 50 epochs",
        (None, None, 0.816),
        f"{PAPER}, as quoted in a public write-up",
    ),
    _paper(
        "Fine-tuned ImageNet-21k ViT-B/32 (paper)",
        f"finetune|emd sgd|{VIT_IN21K}",
        "ImageNet-21k ViT-B/32 + 10-bin head, the same recipe as the CLIP model",
    ),
    *(
        {
            "system": system,
            "key": None,
            "configuration": "another system",
            "srcc": srcc,
            "plcc": None,
            "accuracy": None,
            "confirmed": True,
            "source": "pyiqa (chaofengc/IQA-PyTorch) benchmark, AVA official test split",
        }
        for system, srcc in (
            ("NIMA", 0.713),
            ("LAION aesthetic predictor", 0.665),
            ("TOPIQ", 0.791),
            ("Q-Align", 0.822),
        )
    ),
)

METRICS = ("srcc", "plcc", "accuracy")


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_report(document: dict) -> str:
    """The study as Markdown: each row beside the published figure of its configuration, then the rest."""
    out, config, split = document["config"]["out"], document["config"], document["split"]["split"]
    published = {p["key"]: p for p in document["published"] if p["key"]}
    lines = [
        "# CLIP knows image aesthetics: reproduction",
        "",
        f"AVA at `{config['ava']}`, {split['kind']} split (seed {split['seed']}), "
        f"{split['counts'].get('test', '?')} test images (ids digest {split['digests'].get('test', '?')}). "
        f"Recipe: {_recipe_line(document)}. "
        "Each row is `clip-aesthetics evaluate --scorer FILE --split test` (images decoded on the CPU, as in "
        "fine-tuning). `paper` columns hold the published figure of the same configuration; the last column "
        "says where a row's setup departs from the paper's.",
        "",
        "| step | scorer | n | SRCC | PLCC | accuracy | EMD | paper SRCC | paper PLCC | paper accuracy "
        "| scorer file | recipe | departures from the paper |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in document["results"]:
        paper = published.get(row["key"], {})
        ours = [format_metric(row[k]) for k in ("srcc", "plcc", "accuracy", "emd")]
        theirs = [format_metric(paper.get(k)) for k in METRICS]
        scorer_file = f"`{os.path.relpath(row['scorer_file'], out)}`"
        departures = "; ".join(row.get("departures") or []) or "none"
        cells = [row["step"], row["name"], str(row["n"]), *ours, *theirs, scorer_file]
        lines.append(_table_row([*cells, row.get("recipe", "-"), departures]))
    computed = {row["key"]: row["name"] for row in document["results"]}
    lines += [
        "",
        "## Published figures and the configuration each was computed with",
        "",
        "| system | configuration | SRCC | PLCC | accuracy | row of this run | source |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for paper in document["published"]:
        metrics = [format_metric(paper[k]) for k in METRICS]
        row = computed.get(paper["key"]) or ("not run here" if paper["key"] else "-")
        lines.append(_table_row([paper["system"], paper["configuration"], *metrics, row, paper["source"]]))
    lines += ["", "## Notes", "", *(f"- {note}" for note in NOTES), ""]
    return "\n".join(lines)


def _recipe_line(document: dict) -> str:
    recipe = document.get("recipe")
    if not recipe:
        return "not recorded"
    fit_on = " + ".join(recipe["probe_fit_on"])
    return (
        f"{recipe['name']} (zero-shot score {recipe['zeroshot_score']}, probes fitted on {fit_on}, MIIL "
        f"preprocessing {recipe['miil_preprocess']}, precision {recipe['precision']}, fine-tuning at most "
        f"{recipe['clip_epochs']} epochs for CLIP and {recipe['imagenet_epochs']} for ImageNet models)"
    )


NOTES = (
    "Zero-shot SRCC and PLCC are those of the raw score (the authors': 100 * f . (mean of the positive "
    "prompts' unnormalised text embeddings - the negative's), f the normalised image embedding; cosine "
    "rows: 100 * (cos(f, positive group) - cos(f, negative group))), in float64, as `evaluate` computes "
    "them; `plcc_score` in report.json is the PLCC of the 1-10 score 1 + 9 * sigmoid(raw).",
    "Accuracy: a true mean above 5 is good; a zero-shot scorer calls an image good when it is closer to the "
    "positive prompts (content mode: when the best of all 2 x 1000 prompts is a positive one).",
    f"The paper's figures come from {PAPER_SPLIT}: with the authors' split files (`--split-file`) this run "
    "uses exactly their images; without them, a random split with their proportions and seed (other "
    "images), which compares only roughly.",
    "A configuration 'not run here' needs its model and weights (e.g. `--model ViT-B-32` with the OpenAI "
    "weights in the Hugging Face cache); weights given as a file or folder are recognised by their content.",
    "Figures marked 'not confirmed' are reported in the paper but could not be checked against a public "
    "source: their cells stay empty rather than guessed.",
)


def plot_summary(document: dict, path: Path) -> Path:
    """Bar chart of SRCC and accuracy per scorer."""
    from matplotlib.figure import Figure

    rows = document["results"]
    figure = Figure(figsize=(12, 0.6 * len(rows) + 1.5), layout="constrained")  # wide: long scorer names
    axes = figure.subplots(1, 2, sharey=True)
    names = [r["name"] if len(r["name"]) <= 60 else "..." + r["name"][-57:] for r in rows]  # long paths
    for ax, metric in zip(axes, ("srcc", "accuracy"), strict=True):
        ax.barh(names, [r[metric] if r[metric] is not None else 0 for r in rows], color="#4a7bd0")
        ax.set_xlabel(metric.upper() if metric == "srcc" else metric)
        ax.invert_yaxis()
    figure.suptitle("Test split, this run")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(figure, path, dpi=120)
    return path


def write_report_files(document: dict, out: Path) -> dict:
    """Write report.json, report.md and plots/summary.png into ``out``; returns the document."""
    atomic_write_text(out / "report.json", json.dumps(document, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / "report.md", markdown_report(document))
    plot_summary(document, out / "plots" / "summary.png")
    return document


def _json_default(value):
    return None if value != value else float(value)
