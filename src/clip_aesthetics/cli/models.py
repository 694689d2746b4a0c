"""`clip-aesthetics models`: the known backbones and whether their weights are on this machine."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from .app import app, console


@app.command()
def models() -> None:
    """List the known backbones and mark which have their weights in the local Hugging Face cache."""
    from ..weights import backbone_rows

    table = Table(title="Backbones (any open_clip model or timm name also works)")
    for column in ("model", "pretrained", "offline", "what", "Hugging Face repo"):
        table.add_column(column)
    for row in backbone_rows():
        offline = Text("yes", style="green") if row["offline"] else "no"
        table.add_row(row["model"], row["pretrained"] or "-", offline, row["what"], row["repo"])
    console.print(table)
    console.print(
        "Weights download to the Hugging Face cache on first use; offline, pass "
        "--pretrained FILE or --model local-dir:FOLDER.",
        highlight=False,
    )
