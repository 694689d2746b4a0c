"""The CLI starts at once: importing it, and every ``--help``, leave torch, open_clip and timm unimported.

Timings live in benchmarks/bench_cli_startup.py; this test checks the behaviour that makes them fast, in a
fresh interpreter (the test process itself has long imported torch).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "open_clip", "timm", "pyarrow", "matplotlib", "scipy")

# Runs in a child process: import the CLI, render the help of every command and sub-command, and report
# which heavy modules got imported and which help pages were rendered.
CHILD = """
import contextlib, io, json, sys

import typer

from clip_aesthetics.cli import app

after_import = sorted(m for m in HEAVY if m in sys.modules)
group = typer.main.get_command(app)


def commands(command, prefix):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, [*prefix, name])


pages = []
for path in commands(group, []):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            group.main([*path, "--help"], prog_name="clip-aesthetics", standalone_mode=False)
        except SystemExit:
            pass
    if "Usage:" in out.getvalue():
        pages.append(" ".join(path))
print(json.dumps({"after_import": after_import, "after_help": sorted(m for m in HEAVY if m in sys.modules),
                  "pages": pages}))
"""


def test_cli_import_and_every_help_page_leave_heavy_libraries_unimported():
    code = f"HEAVY = {HEAVY!r}\n" + CHILD
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["after_import"] == []
    assert found["after_help"] == []
    # Every command's help was rendered (so a command that imports torch at module load cannot hide).
    for command in ("", "score", "evaluate", "compare", "embed", "fit-probe", "finetune", "reproduce"):
        assert command in found["pages"]
    assert {"models", "synth-ava", "datasets verify", "prompts search"} <= set(found["pages"])
