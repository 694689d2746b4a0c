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

from .fileio import atomic_savefig, atomic_write_text
from .tables import format_metric

PAPER = "Hentschel, Kobs & Hotho 2022"
PAPER_SPLIT = "their random split (25,551 test images)"

# Figures published for the paper (with the configuration key of the row that reproduces them) and for other
# systems on AVA (no row of this study computes them). SRCC, PLCC, accuracy; None = not reported.
PUBLISHED = (
    {
        "system": "Zero-shot, fixed prompt (paper)",
        "key": "zeroshot|fixed outstanding/atrocious|ViT-B-32|openai",
        "configuration": "'a outstanding picture' vs 'a atrocious picture', CLIP ViT-B/32 (OpenAI weights)",
        "srcc": None,
        "plcc": None,
        "accuracy": 0.725,
        "source": f"{PAPER}, the authors' prompting notebook output; {PAPER_SPLIT}",
    },
    {
        "system": "Zero-shot, ensembled prompts (paper)",
        "key": "zeroshot|ensembled outstanding/horrible over imagenet|ViT-B-32|openai",
        "configuration": "'a outstanding/horrible picture of a {class}' over the authors' 1000 ImageNet "
        "class names, ensembled; CLIP ViT-B/32 (OpenAI weights)",
        "srcc": None,
        "plcc": None,
        "accuracy": 0.756,
        "source": f"{PAPER}, as quoted in a public write-up",
    },
    {
        "system": "Linear probe, CLIP ViT-B/32 (paper)",
        "key": "probe|ols|ViT-B-32|openai",
        "configuration": "standardised CLIP ViT-B/32 (OpenAI) image embeddings, ordinary least squares",
        "srcc": 0.674,
        "plcc": 0.682,
        "accuracy": 0.793,
        "source": f"{PAPER}, authors' code outputs; {PAPER_SPLIT}",
    },
    {
        "system": "Fine-tuned CLIP ViT-B/32 (paper)",
        "key": "finetune|paper recipe|ViT-B-32|openai",
        "configuration": "CLIP ViT-B/32 (OpenAI) image tower + 10-bin head, EMD, SGD momentum 0.5, "
        "lr 1e-4/1e-2, batch 128",
        "srcc": None,
        "plcc": None,
        "accuracy": 0.816,
        "source": f"{PAPER}, as quoted in a public write-up",
    },
    *(
        {
            "system": system,
            "key": None,
            "configuration": "another system",
            "srcc": srcc,
            "plcc": None,
            "accuracy": None,
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
        "Each row is `clip-aesthetics evaluate --scorer FILE --split test` (images decoded on the CPU, as in "
        "fine-tuning), except the zero-shot PLCC (see the notes). `paper` columns hold the published figure "
        "of the same configuration.",
        "",
        "| step | scorer | n | SRCC | PLCC | accuracy | EMD | paper SRCC | paper PLCC | paper accuracy "
        "| scorer file |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in document["results"]:
        paper = published.get(row["key"], {})
        ours = [format_metric(row[k]) for k in ("srcc", "plcc", "accuracy", "emd")]
        theirs = [format_metric(paper.get(k)) for k in METRICS]
        scorer_file = f"`{os.path.relpath(row['scorer_file'], out)}`"
        lines.append(_table_row([row["step"], row["name"], str(row["n"]), *ours, *theirs, scorer_file]))
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


NOTES = (
    "Zero-shot PLCC is Pearson's r between the raw similarity difference 100 * (cos(image, positive) - "
    "cos(image, negative)) and the mean vote, as the authors computed it; `evaluate` reports the PLCC of the "
    "1-10 score 1 + 9 * sigmoid(raw) instead (`plcc_score` in report.json). SRCC and accuracy are the same "
    "either way.",
    "Accuracy: a true mean above 5 is good; a zero-shot scorer calls an image good when it is closer to the "
    "positive prompts.",
    f"The paper's figures come from {PAPER_SPLIT}: compare them with a `--split-kind random` run for the "
    "closest match; on the official split they compare only roughly.",
    "A configuration 'not run here' needs its model and weights (e.g. `--model ViT-B-32` with the OpenAI "
    "weights in the Hugging Face cache).",
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
