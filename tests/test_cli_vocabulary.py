"""One vocabulary across commands: the same option names mean the same thing everywhere (README, "Options").

Checked on the commands' declared parameters (Typer's click objects), not on rendered help text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from clip_aesthetics.cli import app

GROUP = typer.main.get_command(app)
# Commands that read a labelled dataset: its root is their first argument.
DATASET_COMMANDS = (
    "embed", "evaluate", "compare", "finetune", "reproduce", "datasets verify", "prompts search",
)  # fmt: skip
# Commands that take the part of a split (train, val, test, all).
PART_COMMANDS = ("evaluate", "compare", "prompts search")
# Commands whose main output is a file or a folder.
OUTPUT_COMMANDS = (
    "score", "embed", "fit-probe", "evaluate", "compare", "finetune", "reproduce", "datasets verify",
    "prompts search", "cull", "taste fit",
)  # fmt: skip


def command(path: str):
    found = GROUP
    for name in path.split():
        found = found.commands[name]
    return found


def options(path: str) -> dict:
    """Every option string of a command -> its option."""
    return {opt: p for p in command(path).params if p.param_type_name == "option" for opt in p.opts}


def every_command(group=GROUP, prefix: str = "") -> list[str]:
    paths = []
    for name, sub in getattr(group, "commands", {}).items():
        paths += every_command(sub, f"{prefix}{name} ") if hasattr(sub, "commands") else [prefix + name]
    return paths


@pytest.mark.parametrize("path", DATASET_COMMANDS)
def test_dataset_root_is_the_first_argument_and_the_format_is_dash_d(path: str) -> None:
    arguments = [p for p in command(path).params if p.param_type_name == "argument"]
    assert arguments and arguments[0].name in ("root", "dataset", "dataset_root")
    if path != "reproduce":  # reproduce is the AVA study
        assert options(path)["-d"] is options(path)["--dataset"]


@pytest.mark.parametrize("path", OUTPUT_COMMANDS)
def test_main_output_is_output_dash_o(path: str) -> None:
    assert options(path)["-o"] is options(path)["--output"]


@pytest.mark.parametrize("path", every_command())
def test_no_command_keeps_an_old_spelling_or_a_second_meaning(path: str) -> None:
    names = options(path)
    assert not {"--out", "--ava", "--manifest-out"} & set(names)
    if "--split" in names:  # the part of a split, nowhere the kind
        assert path in PART_COMMANDS
    if "--model" in names:
        assert names["-m"] is names["--model"]
    for shared in ("--split-kind", "--split-seed", "--batch-size", "--workers", "--device", "--precision"):
        if shared in names:
            assert names[shared].name == shared.removeprefix("--").replace("-", "_")


@pytest.mark.parametrize("path", ("embed", "evaluate", "compare", "finetune", "reproduce", "prompts search"))
def test_split_kind_and_seed_everywhere_a_split_is_made(path: str) -> None:
    assert {"--split-kind", "--split-seed"} <= set(options(path))


@pytest.mark.parametrize(
    "extra", [["--pretrained", "openai"], ["--model", "RN50"], ["--positive", "a", "--negative", "b"]]
)
def test_score_refuses_backbone_options_next_to_a_scorer_file(
    photo_dir: Path, tmp_path: Path, extra: list[str]
) -> None:
    scorer = tmp_path / "head.json"
    scorer.write_text("{}")
    out = tmp_path / "ranked.csv"
    result = CliRunner().invoke(
        app, ["score", str(photo_dir), "--scorer", str(scorer), *extra, "-o", str(out)]
    )
    assert result.exit_code == 2 and not out.exists()
    assert "scorer file names its own backbone" in result.stderr


def test_build_scorer_refuses_pretrained_next_to_a_scorer_file(tmp_path: Path) -> None:
    from clip_aesthetics.runs.score import build_scorer

    with pytest.raises(ValueError, match="names its own backbone"):
        build_scorer(str(tmp_path / "head.safetensors"), pretrained="openai")
