"""The README and docs show commands a newcomer can paste: every `clip-aesthetics ...` line names a real
command and only options that command has; examples that depend on defaults agree with them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from clip_aesthetics.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INVOCATION = re.compile(r"(?:^|[\s/;&(`])(?:clip-aesthetics|-m clip_aesthetics)\s+(.*)")


def code_lines(path: Path) -> list[tuple[int, str]]:
    """Shell lines of a Markdown file: fenced bash blocks (continuations joined) and inline `code`."""
    lines, fence, pending = [], None, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence in ("bash", "sh", "shell", "console"):
            pending += line.rstrip("\\") + " "
            if not line.endswith("\\"):
                lines.append((number, pending.strip()))
                pending = ""
        elif fence is None:
            lines.extend((number, code) for code in re.findall(r"`([^`]+)`", line))
    return lines


def invocations(path: Path) -> list[tuple[int, list[str]]]:
    """The argument lists of every `clip-aesthetics` invocation in ``path`` (up to |, &&, ;, #, >)."""
    found = []
    for number, line in code_lines(path):
        for match in INVOCATION.finditer(line):
            rest = re.split(r"\s(?:\||&&|;|#|>|2>)\s?", " " + match.group(1))[0]
            try:
                found.append((number, shlex.split(rest)))
            except ValueError:  # an unbalanced quote in prose, not a command
                continue
    return found


def is_group(command) -> bool:
    return hasattr(command, "commands")  # typer's own click or the click package: both have this


def resolve(args: list[str]):
    """The (sub)command ``args`` name and the arguments left for it."""
    command = typer.main.get_command(app)
    while is_group(command) and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    return command, args


CASES = [(path, number, args) for path in DOCS for number, args in invocations(path)]


def test_the_docs_show_commands() -> None:
    assert len(CASES) > 30  # the extraction itself works


@pytest.mark.parametrize(("path", "number", "args"), CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_documented_command_parses(path: Path, number: int, args: list[str]) -> None:
    command, rest = resolve(args)
    where = f"{path.name}:{number}: clip-aesthetics {' '.join(args)}"
    if is_group(command):  # `clip-aesthetics prompts` alone, `--help`, `--version`
        assert not rest or rest[0].startswith("-") or rest[0] in ("COMMAND", "..."), where
        return
    names = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    names |= {"--help", "-h"}
    for token in rest:
        if token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-\d.*", token):
            assert token.split("=")[0] in names, f"{where}: {command.name} has no option {token}"


def test_readme_resume_example_does_not_shrink_the_epochs() -> None:
    from clip_aesthetics.finetune.config import TrainConfig

    resumes = [args for _, args in invocations(ROOT / "README.md") if "--resume" in args]
    assert resumes
    for args in resumes:
        if "--max-epochs" in args:
            assert int(args[args.index("--max-epochs") + 1]) >= TrainConfig().max_epochs, args


OWN_DOCS = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md"]
OUTSIDE = re.compile(
    r"\bissue \d+|\.\./shared|/work/|example\.(?:org|com)|\bTODO\b|--out\b(?!put)(?!` ->)", re.I
)  # (a rename note may name it)


@pytest.mark.parametrize("path", OWN_DOCS, ids=lambda p: p.name)
def test_docs_stand_on_their_own(path: Path) -> None:
    """No reference a reader cannot follow: issue numbers, files outside the repository, placeholder URLs,
    a flag that no longer exists."""
    found = [
        (n, m.group(0))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for m in OUTSIDE.finditer(line)
    ]
    assert not found, f"{path.name}: {found}"
