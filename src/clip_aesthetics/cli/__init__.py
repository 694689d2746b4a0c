"""Command-line interface: thin commands over the library."""

from . import cull, datasets, embed, evaluate, finetune, models, prompts, reproduce, score, shards  # noqa: F401  (registers the commands)
from .main import app


def main() -> None:
    app()


__all__ = ["app", "main"]
