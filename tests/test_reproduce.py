"""`clip-aesthetics reproduce` end to end on a synthetic AVA set with tiny models."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy import stats
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.study.paper_report import PUBLISHED, markdown_report
from clip_aesthetics.study.reproduce import ZERO_SHOT, _config_key, _slug
from conftest import TINY_CLIP_CONFIG, console_text, save_open_clip_dir


def reproduce_args(root: Path, clip_spec: str, *extra: str) -> list[str]:
    """The study on the synthetic set in ``root`` with the tiny CLIP and timm's test ViT, one epoch."""
    return [
        "reproduce", str(root / "AVA_dataset"), "--output", str(root / "out"), "--model", clip_spec,
        "--imagenet-model", "timm:test_vit", "--imagenet-pretrained", str(root / "test_vit.safetensors"),
        "--max-epochs", "1", "--batch-size", "16", "--workers", "0", *extra,
    ]  # fmt: skip


def write_authors_split(ava: Path, folder: Path, seed: int = 0) -> dict[str, list[str]]:
    """The authors' four CSVs for a synthetic AVA: an image id and its ten normalised vote fractions per line.

    Read from AVA.txt here with numpy (not the project's parser). Five images are in no file, and the
    test file lists an id whose image is missing. Two files carry a header line, two do not.
    """
    votes = {}
    for line in (ava / "AVA.txt").read_text().splitlines():
        fields = line.split()
        votes[fields[1]] = np.array([int(v) for v in fields[2:12]], dtype=np.float64)
    missing = [i for i in votes if not (ava / "images" / f"{i}.jpg").exists()]
    present = [i for i in votes if i not in missing]
    order = np.random.default_rng(seed).permutation(len(present))
    shuffled = [present[i] for i in order]
    ids = {"test": shuffled[:12] + missing[:1], "val": shuffled[12:22], "train": shuffled[22:-5]}
    folder.mkdir(parents=True, exist_ok=True)
    files = {"test": "AVA_test.csv", "val": "AVA_val_split.csv", "train": "AVA_train_split.csv"}
    for (name, file), header in zip(files.items(), (True, False, True), strict=True):
        lines = ["image_id," + ",".join(str(k) for k in range(1, 11))] if header else []
        lines += [f"{i}," + ",".join(repr(float(v)) for v in votes[i] / votes[i].sum()) for i in ids[name]]
        (folder / file).write_text("\n".join(lines) + "\n")
    fractions = {i: " ".join(repr(float(v)) for v in votes[i] / votes[i].sum()) for i in votes}
    train_all = ids["train"] + ids["val"]  # space separated, as some copies are
    (folder / "AVA_train.csv").write_text("".join(f"{i} {fractions[i]}\n" for i in train_all))
    return {**ids, "missing": missing}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str) -> Path:
    """The paper recipe (the default) with the authors' split files."""
    root = tmp_path_factory.mktemp("repro")
    make_synthetic_ava(root / "AVA_dataset", n=70, seed=2, size=48)
    listed = write_authors_split(root / "AVA_dataset", root / "split")
    (root / "listed.json").write_text(json.dumps(listed))
    torch.manual_seed(0)
    # a real timm architecture (timm's own test model) with fixed random weights saved as a file
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), root / "test_vit.safetensors")
    result = CliRunner().invoke(
        app, reproduce_args(root, tiny_clip_spec, "--split-file", str(root / "split"))
    )
    assert result.exit_code == 0, result.output
    return root


def run_study(root: Path, clip_spec: str, out: Path, *extra: str):
    """A study into ``out``: the module's setup (the authors' split files) unless --split-kind is given."""
    split = () if "--split-kind" in extra else ("--split-file", str(root / "split"))
    args = reproduce_args(root, clip_spec, *split, *extra)
    args[args.index("--output") + 1] = str(out)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), console_text(result)


def numbers(document: dict) -> list[tuple]:
    return [
        tuple(row[k] for k in ("name", "n", "srcc", "plcc", "accuracy", "emd")) for row in document["results"]
    ]


def listed_ids(study: Path) -> dict[str, set[str]]:
    """The ids of each of the authors' files whose image exists."""
    listed = json.loads((study / "listed.json").read_text())
    return {name: set(listed[name]) - set(listed["missing"]) for name in ("train", "val", "test")}


def test_report_files_and_contents(study: Path) -> None:
    out = study / "out"
    document = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in document["results"]]
    assert [row["step"] for row in document["results"]] == ["zeroshot"] * 5 + ["probe"] * 2 + ["finetune"] * 2
    assert "atrocious" in names[0] and "horrible" in names[1] and "ensembled" in names[2]
    assert "content mode" in names[3] and "cosine" in names[4] and "authors" in names[2]
    assert any("ImageNet timm:test_vit" in n for n in names) and any("CLIP" in n for n in names)
    assert all(row["n"] + row["n_failed"] == len(listed_ids(study)["test"]) for row in document["results"])
    # every file a rerun may reuse names its model and records what it was made from
    for row in document["results"]:
        named = _slug_of(Path(row["model"]).name)  # a local-dir: path is named by its last folder
        assert named in Path(row["scorer_file"]).name or "finetune-" in row["scorer_file"]
    for artefact in (
        "zeroshot-fixed_outstanding_atrocious",
        "features-timm_test_vit",
        "finetune-timm_test_vit",
    ):
        found = [
            p for p in out.iterdir() if p.name.startswith(artefact) and p.name.endswith(".provenance.json")
        ]
        recorded = json.loads(found[0].read_text())
        assert recorded["backbone"]["weights"]
    features = json.loads((out / "features-timm_test_vit.provenance.json").read_text())
    assert features["split"]["digests"] == document["split"]["split"]["digests"]
    markdown = (out / "report.md").read_text()
    assert "| Q-Align | another system | 0.822 |" in markdown and "pyiqa" in markdown
    assert "not run here" in markdown and "not confirmed" in markdown
    assert (out / "plots" / "summary.png").stat().st_size > 1000
    assert (out / "finetune-timm_test_vit" / "best.safetensors").is_file()


def test_trains_and_tests_on_exactly_the_listed_ids(study: Path) -> None:
    from clip_aesthetics.features.cache import load_features

    out, listed = study / "out", listed_ids(study)
    document = json.loads((out / "report.json").read_text())
    for row in document["results"]:  # every row is tested on the listed test images
        predicted = {
            r["id"] for r in csv.DictReader((out / "predictions" / f"{_slug(row['name'])}.csv").open())
        }
        assert predicted == listed["test"], row["name"]
    features = load_features(out / "features-timm_test_vit")
    for name in ("train", "val", "test"):
        assert set(features.select(name).ids) == listed[name]
    parts = features.select("train", "val", "test")
    assert len(parts) == sum(len(v) for v in listed.values())  # images in no file are in no part
    for run in ("finetune-timm_test_vit", f"finetune-{_slug(document['config']['model'])}"):
        split = json.loads((out / run / "config.json").read_text())["split"]
        for name in ("train", "val", "test"):  # the digest of each part's ids, computed here
            digest = hashlib.sha256("\n".join(sorted(listed[name])).encode()).hexdigest()[:16]
            assert split["digests"][name] == digest, (run, name)
    assert document["recipe"]["name"] == "paper" and document["recipe"]["split"].startswith("file:")


def test_rows_say_their_recipe_and_departures(study: Path) -> None:
    rows = json.loads((study / "out" / "report.json").read_text())["results"]
    assert {row["recipe"] for row in rows} == {"paper"}
    by_name = {row["name"]: row["departures"] for row in rows}
    authors = next(d for n, d in by_name.items() if "ensembled" in n and "authors" in n)
    cosine = next(d for n, d in by_name.items() if "cosine" in n)
    assert not any("score" in d for d in authors) and any("cosine" in d for d in cosine)
    assert any("not recognised" in d for d in authors)  # the tiny model is not OpenAI's ViT-B/32
    assert not any("split" in d for d in authors)  # the authors' own files
    probes = [d for n, d in by_name.items() if n.startswith("Linear probe")]
    assert probes and not any("train part only" in x for d in probes for x in d)
    imagenet = by_name["Linear probe, ImageNet timm:test_vit"]  # timm's test model, not the in21k ViT
    assert any("not one of the paper's ImageNet-21k models" in d for d in imagenet)
    markdown = (study / "out" / "report.md").read_text()
    assert "| paper | " in markdown and "not recognised" in markdown


def test_published_figures_sit_beside_the_row_of_their_configuration() -> None:
    key = _config_key("zeroshot", f"{ZERO_SHOT[0][0]}|authors", "ViT-B-32:openai")
    assert key in {p["key"] for p in PUBLISHED}
    row = {
        "step": "zeroshot", "name": "ours", "n": 10, "srcc": 0.5, "plcc": 0.4, "accuracy": 0.61, "emd": None,
        "key": key, "scorer_file": "/s/z.json", "recipe": "paper", "departures": ["precision bf16"],
    }  # fmt: skip
    split = {"kind": "random", "seed": 0, "counts": {"test": 10}, "digests": {"test": "ab"}}
    document = {
        "config": {"out": "/s", "ava": "/a"}, "split": {"split": split}, "results": [row],
        "published": list(PUBLISHED),
    }  # fmt: skip
    lines = markdown_report(document).splitlines()
    ours = next(line for line in lines if line.startswith("| zeroshot | ours |"))
    assert "| 0.500 | 0.400 | 0.610 | - | - | - | 0.725 |" in ours  # the paper's 0.725 on the same line
    assert ours.endswith("| paper | precision bf16 |")
    paper = next(line for line in lines if line.startswith("| Zero-shot, fixed prompt (paper) |"))
    assert "'a outstanding picture' vs 'a atrocious picture'" in paper and paper.endswith(
        "| ours | Hentschel, Kobs & Hotho 2022, the authors' prompting notebook output; their random split "
        "(25,551 test images) |"
    )


def test_every_published_paper_figure_has_a_configuration() -> None:
    paper = [p for p in PUBLISHED if p["key"]]
    steps = {p["key"].split("|")[0] for p in paper}
    assert steps == {"zeroshot", "probe", "finetune"} and len(paper) == 8
    for p in paper:  # a figure is either confirmed with its source, or labelled as not confirmed
        assert p["confirmed"] == any(p[k] is not None for k in ("srcc", "plcc", "accuracy"))
        assert p["confirmed"] or "not confirmed" in p["source"]


@pytest.mark.parametrize("index", [0, 2, 3, 4, 5, 6, 8])
def test_numbers_equal_the_individual_evaluate_command(study: Path, index: int) -> None:
    out = study / "out"
    row = json.loads((out / "report.json").read_text())["results"][index]
    metrics_file, predictions = study / f"metrics-{index}.json", study / f"preds-{index}.csv"
    args = [
        "evaluate", str(study / "AVA_dataset"), "--dataset", "ava", "--split", "test", "--workers", "0",
        "--split-kind", "file", "--split-file", str(study / "split"),
        "--scorer", row["scorer_file"], "--output", str(metrics_file), "--predictions", str(predictions),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_file.read_text())["metrics"]
    for key in ("srcc", "plcc", "accuracy"):
        assert metrics[key] == pytest.approx(row[key], abs=1e-6), key
    if row["step"] == "zeroshot":  # the authors' PLCC: on the raw score, in evaluate too
        rows = list(csv.DictReader(predictions.open()))
        raw, true = ([float(r[k]) for r in rows] for k in ("raw", "true_mean"))
        assert row["plcc"] == pytest.approx(stats.pearsonr(raw, true).statistic, abs=1e-6)


def test_rerun_reuses_work(study: Path, tiny_clip_spec: str) -> None:
    before = (study / "out" / "probe-timm_test_vit.safetensors").stat().st_mtime_ns
    args = reproduce_args(
        study, tiny_clip_spec, "--steps", "probe,finetune", "--split-file", str(study / "split")
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reusing the finished run" in console_text(result)
    assert (study / "out" / "probe-timm_test_vit.safetensors").stat().st_mtime_ns == before
    assert not (study / "out" / "stale").exists()


def test_rerun_with_another_split_seed_equals_a_fresh_run(
    study: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    seed = ("--split-kind", "random", "--split-seed", "7")
    rerun, log = run_study(study, tiny_clip_spec, reused, *seed)
    fresh, _ = run_study(study, tiny_clip_spec, tmp_path / "fresh", *seed)
    assert numbers(rerun) == numbers(fresh)
    assert (
        rerun["split"]["split"]["digests"]
        != json.loads((study / "out" / "report.json").read_text())["split"]["split"]["digests"]
    )
    assert "moved to" in log and "split" in log
    stale = {p.name.split(".")[0] for p in (reused / "stale").iterdir()}
    assert {"probe-timm_test_vit", "finetune-timm_test_vit", "features-timm_test_vit"} <= stale
    assert all(any("proportions" in d for d in row["departures"]) is False for row in rerun["results"])


@pytest.mark.slow  # a study of its own
def test_paper_split_without_files_has_the_authors_proportions_and_seed(
    study: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    document, _ = run_study(
        study, tiny_clip_spec, tmp_path / "random", "--steps", "probe", "--split-kind", "random"
    )
    split = document["split"]["split"]
    n = document["split"]["dataset"]["n_records"]
    assert split["kind"] == "random" and split["seed"] == 42  # the authors' seed
    assert split["counts"]["test"] == round(0.1 * n)  # test: 10% of AVA (25,551 of ~255.5k)
    assert abs(split["counts"]["val"] - 0.2 * (n - split["counts"]["test"])) <= 1  # val: 20% of train
    assert all(any("authors' proportions" in d for d in row["departures"]) for row in document["results"])


@pytest.mark.slow  # a study of its own
def test_improved_recipe_departs_and_says_so(study: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    args = ("--recipe", "improved", "--steps", "probe", "--split-kind", "official")
    document, _ = run_study(study, tiny_clip_spec, tmp_path / "improved", *args)
    assert document["split"]["split"]["kind"] == "official" and document["recipe"]["name"] == "improved"
    for row in document["results"]:
        assert row["recipe"] == "improved"
        assert any("train part only" in d for d in row["departures"])
        assert any("official test list" in d for d in row["departures"])
    probe = json.loads(safe_open(document["results"][0]["scorer_file"], "pt").metadata()["clip_aesthetics"])
    assert probe["fit"]["fit_on"] == ["train"]


def test_help_names_each_recipe_difference() -> None:
    import typer

    command = typer.main.get_command(app).commands["reproduce"]
    help_text = " ".join(next(p.help for p in command.params if p.name == "recipe").split())
    for difference in (
        "split files", "proportions", "train + validation", "timm's default preprocessing", "unnormalised",
        "fp32", "50 epochs", "official split", "cosine", "bf16",
    ):  # fmt: skip
        assert difference in help_text, difference


def test_bad_steps_rejected(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["reproduce", str(tmp_path), "--output", str(tmp_path / "o"), "--steps", "x"]
    )
    assert result.exit_code == 2 and "--steps" in result.output


def test_file_split_without_a_file_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["reproduce", str(tmp_path), "--output", str(tmp_path / "o"), "--split-kind", "file"]
    )
    assert result.exit_code == 2 and "--split-file" in console_text(result)


def _slug_of(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")


def test_rerun_with_another_model_equals_a_fresh_run(study: Path, tmp_path: Path) -> None:
    other = save_open_clip_dir(tmp_path / "other-clip", TINY_CLIP_CONFIG, seed=9)
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    steps = ("--steps", "zeroshot,probe")
    rerun, _ = run_study(study, f"local-dir:{other}", reused, *steps)
    fresh, _ = run_study(study, f"local-dir:{other}", tmp_path / "fresh", *steps)
    assert numbers(rerun) == numbers(fresh)
    assert all(f"local-dir:{other}" in row["model"] or "timm" in row["model"] for row in rerun["results"])


def test_rerun_with_another_batch_size_retrains(study: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    document, log = run_study(study, tiny_clip_spec, reused, "--steps", "finetune", "--batch-size", "8")
    assert document["config"]["batch_size"] == 8 and "batch_size" in log
    for run in ("finetune-timm_test_vit", f"finetune-{_slug(tiny_clip_spec)}"):
        assert json.loads((reused / run / "config.json").read_text())["config"]["batch_size"] == 8
    assert len([p for p in (reused / "stale").iterdir() if p.is_dir()]) == 2


def test_rerun_with_fewer_epochs_retrains(study: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    _, log = run_study(study, tiny_clip_spec, reused, "--steps", "finetune", "--max-epochs", "2")
    assert "resuming" in log  # one more epoch on the finished one-epoch runs
    document, log = run_study(study, tiny_clip_spec, reused, "--steps", "finetune", "--max-epochs", "1")
    assert "more than --max-epochs 1" in log
    original = json.loads((study / "out" / "report.json").read_text())
    assert numbers(document) == [row for row in numbers(original) if row[0].startswith("Fine-tuned")]


def test_file_names_of_models_given_as_long_paths_stay_short_and_distinct():
    deep = "local-dir:/" + "/".join(["a-rather-long-folder-name"] * 12)
    first, second = _slug(deep + "/clip-one"), _slug(deep + "/clip-two")
    assert first != second
    # leaves room for a prefix ('zeroshot-ensembled_outstanding_horrible_over_imagenet-') and a temp suffix
    assert max(len(first), len(second)) <= 48
    assert "clip-one" in first
    assert "clip-two" in second
    assert _slug("ViT-B-32") == "ViT-B-32"  # short specs read as they are
