"""Start-up time of `clip-aesthetics --help` and of every `COMMAND --help`, against `import torch`.

Each command runs in a fresh process ``--repeat`` times, alternating with the baseline
``python -c "import torch"`` in the same run (so both see the same machine load); the medians and their
ratio are printed. The goal (issue 11): every help page costs less than half of importing torch.

    python benchmarks/bench_cli_startup.py
    python benchmarks/bench_cli_startup.py --repeat 9
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

import typer

from clip_aesthetics.cli import app


def help_commands() -> list[list[str]]:
    """``[]`` (the top-level help) and the path of every command and sub-command, as typed."""

    def walk(command, prefix: list[str]):
        yield prefix
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*prefix, name])

    return list(walk(typer.main.get_command(app), []))


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each command (the median counts).")
    args = parser.parse_args()
    script = shutil.which("clip-aesthetics")
    cli = [script] if script else [sys.executable, "-m", "clip_aesthetics"]
    torch_argv = [sys.executable, "-c", "import torch"]
    seconds(torch_argv)  # warm the file cache for both sides
    seconds([*cli, "--help"])
    print(f"CLI: {' '.join(cli)}; baseline: {' '.join(torch_argv)}; median of {args.repeat} runs")
    print(f"{'command':<40} {'help s':>8} {'torch s':>8} {'ratio':>6}")
    worst = 0.0
    for command in help_commands():
        ours, torch_times = [], []
        for _ in range(args.repeat):  # interleaved, so a busy moment hits both sides
            ours.append(seconds([*cli, *command, "--help"]))
            torch_times.append(seconds(torch_argv))
        help_s, torch_s = statistics.median(ours), statistics.median(torch_times)
        worst = max(worst, help_s / torch_s)
        name = " ".join(["clip-aesthetics", *command, "--help"])
        print(f"{name:<40} {help_s:>8.3f} {torch_s:>8.3f} {help_s / torch_s:>6.2f}")
    print(f"worst ratio {worst:.2f} (goal: below 0.5)")


if __name__ == "__main__":
    main()
