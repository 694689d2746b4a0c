"""`clip-aesthetics models`: the known backbones and whether their weights are on this machine."""

from __future__ import annotations

from .main import app, console


@app.command()
def models() -> None:
    """List the known backbones and mark which have their weights in the local Hugging Face cache."""
    from ..encoders.weights import backbone_rows
    from ..runs.tables import print_table

    header = ("model", "pretrained", "offline", "what", "Hugging Face repo")
    rows = [
        (row["model"], row["pretrained"] or "-", "yes" if row["offline"] else "no", row["what"], row["repo"])
        for row in backbone_rows()
    ]  # names to copy into --model/--pretrained are never cut
    title = "Backbones (any open_clip model or timm name also works)"
    print_table(console, title, header, rows, whole=("model", "pretrained", "Hugging Face repo"))
    console.print(
        "Weights download to the Hugging Face cache on first use; offline, pass "
        "--pretrained FILE or --model local-dir:FOLDER.",
        highlight=False,
    )
