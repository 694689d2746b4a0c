"""The CLI follows its ecosystem's conventions: --version and -h, usage lines in the usual shape, errors
that name flags and stay short, a Quickstart demo set that can be evaluated."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.cli.main import MAX_MESSAGE, user_errors
from clip_aesthetics.cli.options import SplitKind
from test_score_run import PIPELINE, _failing_after, run

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # a usage line on one line, so it can be read whole


def all_commands(command=None, path=()):
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from all_commands(sub, (*path, name))


def test_version_prints_the_installed_version() -> None:
    for flag in ("--version", "-V"):
        result = CliRunner().invoke(app, [flag])
        assert result.exit_code == 0
        assert result.output.split() == ["clip-aesthetics", version("clip-aesthetics")]


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=lambda p: " ".join(p) or "root")
def test_every_command_takes_h_and_shows_a_plain_usage_line(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "-h"], env=WIDE)
    assert result.exit_code == 0, result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage  # typer's {root} for a required argument
    assert not any(word.startswith("[") and word[1:2].islower() for word in usage.split())  # [paths]
    assert "<bool>" not in result.output  # flags take no value


def _python_error_app(message: str) -> typer.Typer:
    """A command with the real flags (--split-kind, --exist-ok) whose library call fails with ``message``."""
    probe = typer.Typer()

    @probe.command()
    @user_errors
    def command(
        split_kind: SplitKind = "official",
        exist_ok: bool = typer.Option(False, "--exist-ok"),
    ) -> None:
        raise ValueError(message)

    return probe


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("this dataset defines none, use kind='random'", "use --split-kind random"),
        ("demo is not empty; pass exist_ok=True to write into it", "pass --exist-ok to"),
        ("unknown thing; pass other_name=3", "pass other_name=3"),  # no such flag: left as it is
        ("exist_ok and split_kind must agree", "--exist-ok and --split-kind must agree"),
        ("see /data/split_kind/x and split_kind.txt", "see /data/split_kind/x and split_kind.txt"),
    ],
)
def test_errors_name_flags_not_python_arguments(message: str, expected: str) -> None:
    result = CliRunner().invoke(_python_error_app(message), [], env=WIDE)
    assert result.exit_code == 2
    assert expected in result.output


def test_quickstart_rerun_names_the_flag(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert run("synth-ava", demo, "--n", 24, "--size", 48).exit_code == 0
    result = CliRunner().invoke(app, ["synth-ava", str(demo), "--n", "24", "--size", "48"], env=WIDE)
    assert result.exit_code == 2
    assert "--exist-ok" in result.output and "exist_ok" not in result.output
    assert run("synth-ava", demo, "--n", 24, "--size", 48, "--exist-ok").exit_code == 0


def test_quickstart_demo_set_can_be_evaluated(tmp_path: Path, tiny_clip_spec: str) -> None:
    demo = tmp_path / "demo"
    assert run("synth-ava", demo, "--n", 24, "--size", 48).exit_code == 0
    listed = (demo / "aesthetics_image_lists" / "generic_test.jpgl").read_text().split()
    readable = [i for i in listed if (demo / "images" / f"{i}.jpg").is_file()]
    assert len(readable) >= 5  # besides the two deliberately missing images
    metrics = tmp_path / "metrics.json"
    result = run(
        "evaluate", demo, "--model", tiny_clip_spec, "--positive", "a good photo", "--negative",
        "a bad photo", "--workers", "0", "--output", metrics,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(metrics.read_text())
    assert document["n_scored"] == len(readable) and -1 <= document["metrics"]["srcc"] <= 1


def test_a_refusal_over_a_thousand_prompts_stays_short(
    photo_dir: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    from clip_aesthetics.runs import score as scoring

    prompts = tmp_path / "prompts.json"
    positive = [f"a picture of quality number {i}" for i in range(1000)]
    prompts.write_text(json.dumps({"positive": positive, "negative": ["a bad picture"]}))
    out = tmp_path / "ranked.csv"
    args = ["score", photo_dir, "--model", tiny_clip_spec, "--prompts", prompts, "-o", out, *PIPELINE]
    monkeypatch.setattr(scoring, "iter_scored", _failing_after(1))
    assert run(*args).exit_code != 0
    monkeypatch.undo()
    prompts.write_text(json.dumps({"positive": [p + "!" for p in positive], "negative": ["a bad picture"]}))
    result = CliRunner().invoke(app, [str(a) for a in args], env=WIDE)
    assert result.exit_code == 2
    assert "--overwrite" in result.output and "1000 of 1000" in result.output
    assert len(result.output) <= MAX_MESSAGE + 20


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("command", "patched", "kept"),
    [
        ("evaluate", "clip_aesthetics.runs.evaluate.evaluate_scorer", "nothing was written"),
        ("compare", "clip_aesthetics.runs.evaluate.evaluate_scorers", "nothing was written"),
        ("embed", "clip_aesthetics.features.embed_dataset", "stay in"),
        ("score", "clip_aesthetics.runs.score.build_scorer", "nothing was written"),
        ("cull", "clip_aesthetics.culling.shoot.analyse_folder", "rerun the same command"),
        ("taste", "clip_aesthetics.culling.shoot.analyse_folder", "nothing was written"),
    ],
)
def test_ctrl_c_says_what_was_kept_the_same_way_everywhere(
    command: str, patched: str, kept: str, tmp_path: Path, tiny_clip_spec: str, photo_dir: Path, monkeypatch
) -> None:
    demo = tmp_path / "demo"
    assert run("synth-ava", demo, "--n", 12, "--size", 32).exit_code == 0
    monkeypatch.setattr(patched, _interrupt)
    out = tmp_path / "out"
    args = {
        "evaluate": [demo, "--model", tiny_clip_spec, "--output", out.with_suffix(".json")],
        "compare": [demo, "--zeroshot", "--model", tiny_clip_spec, "--output", out.with_suffix(".md")],
        "embed": [demo, "--model", tiny_clip_spec, "--output", out],
        "score": [photo_dir, "--model", tiny_clip_spec, "--output", out.with_suffix(".csv")],
        "cull": [photo_dir, "--model", tiny_clip_spec, "--output", out.with_suffix(".csv")],
        "taste": ["fit", photo_dir, "--model", tiny_clip_spec, "--output", out.with_suffix(".safetensors")],
    }[command]
    result = CliRunner().invoke(app, [command, *map(str, args)], env=WIDE)
    assert result.exit_code == 130
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: interrupted: ") and kept in last
    assert not list(tmp_path.glob("out.*"))  # nothing that looks finished


def test_every_flag_has_one_form() -> None:
    """`--overwrite`, never `--overwrite/--no-overwrite` in one command and `--overwrite` in another."""
    two_forms = [
        (" ".join(path), param.opts)
        for path, command in all_commands()
        for param in getattr(command, "params", [])
        if getattr(param, "secondary_opts", None)
    ]
    assert not two_forms
    overwrite = {p.opts[0] for _, c in all_commands() for p in c.params if p.name == "overwrite"}
    assert overwrite == {"--overwrite"}


IMAGE_COMMANDS = [
    ("score",),
    ("evaluate",),
    ("compare",),
    ("embed",),
    ("prompts", "search"),
    ("cull",),
    ("taste", "fit"),
    ("app",),
]


def test_one_batch_size_default_per_device(photo_dir: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    from clip_aesthetics.cli.options import BATCH_SIZE_CPU, BATCH_SIZE_CUDA, batch_size_for

    commands = dict(all_commands())
    for path in IMAGE_COMMANDS:
        (option,) = [p for p in commands[path].params if p.name == "batch_size"]
        assert option.default is None, path  # resolved by device, not per command
    assert batch_size_for("cpu", None) == BATCH_SIZE_CPU and batch_size_for("cpu", 7) == 7
    assert BATCH_SIZE_CUDA > BATCH_SIZE_CPU
    out = tmp_path / "ranked.csv"
    args = ["score", photo_dir, "--model", tiny_clip_spec, "--workers", "0", "-o", out, "--embeddings"]
    assert run(*args, "--device", "cpu").exit_code == 0
    metadata = pq.read_schema(tmp_path / "ranked.embeddings.parquet").metadata[b"clip_aesthetics"]
    assert json.loads(metadata)["batch_size"] == BATCH_SIZE_CPU


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "{demo}", "-o", "{typo}/cache"],
        ["synth-ava", "{typo}/demo", "--n", "5"],
        ["fit-probe", "{demo}", "-o", "{typo}/probe.safetensors"],
        ["prompts", "search", "{demo}", "-o", "{typo}/prompts.json"],
        ["finetune", "{demo}", "-o", "{typo}/run"],
        ["evaluate", "{demo}", "-o", "{typo}/metrics.json"],
        ["datasets", "verify", "{demo}", "-o", "{typo}/verify.json"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_no_folder_tree_is_made_for_a_typo(args: list[str], tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert run("synth-ava", demo, "--n", 12, "--size", 32).exit_code == 0
    typo = tmp_path / "nonexistent" / "dir"
    result = CliRunner().invoke(app, [a.format(demo=demo, typo=typo) for a in args], env=WIDE)
    assert result.exit_code == 2
    assert "folder not found" in result.output
    assert not (tmp_path / "nonexistent").exists()


def test_an_output_folder_may_be_made_one_level_deep(tmp_path: Path) -> None:
    from clip_aesthetics.fileio import check_output_folder, check_outputs

    check_output_folder(tmp_path / "runs" / "clip-b32")  # runs/ is made with it, as README's examples do
    check_outputs(tmp_path / "results" / "metrics.json")
    for deep in (tmp_path / "a" / "b" / "run", tmp_path / "a" / "b" / "m.json"):
        with pytest.raises(FileNotFoundError):
            check_output_folder(deep) if deep.suffix == "" else check_outputs(deep)
    assert not (tmp_path / "a").exists() and not (tmp_path / "runs").exists()


def test_a_path_that_looks_like_an_argument_is_left_alone() -> None:
    result = CliRunner().invoke(_python_error_app("cannot read /photos/split_kind=2.jpg"), [], env=WIDE)
    assert result.exit_code == 2 and "/photos/split_kind=2.jpg" in result.output
