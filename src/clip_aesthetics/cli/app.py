"""The typer application and the error handling every command shares."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable

import typer
from rich.console import Console
from rich.text import Text

from ..fileio import text_name

app = typer.Typer(
    name="clip-aesthetics",
    no_args_is_help=True,
    add_completion=False,
    help="Image aesthetic assessment with CLIP: score, evaluate, probe and fine-tune.",
)
# Every path, prompt and message is plain text: markup is off, so a file named "[red]x.jpg" or
# "empty[/bold].jpg" prints as it is and can never raise rich's MarkupError. Styles are given explicitly.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)

# Errors a user can act on: shown as one line, never as a traceback. WeightsNotFoundError is a RuntimeError;
# ImageLoadError is recognised by is_user_error without importing the image pipeline (torch) at start-up.
USER_ERRORS = (
    OSError,  # missing files, a folder where a file was expected, no permission, a full disk
    ValueError,
    TypeError,
    RuntimeError,
)
EXIT_NOTHING_DONE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise."""
    err_console.print(Text.assemble(("error:", "red"), " ", text_name(message)), soft_wrap=True)
    return typer.Exit(code)


def warn(label: str, message: str) -> None:
    """Print ``label message`` on stderr, the label in yellow, the message as plain text."""
    err_console.print(Text.assemble((label, "yellow"), " ", text_name(message)), soft_wrap=True)


def user_errors(command: Callable) -> Callable:
    """Turn the errors a user can fix into a one-line message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:  # click's Exit is a RuntimeError: let it through untouched
            raise
        except Exception as exc:
            if not is_user_error(exc):
                raise
            if os.environ.get("CLIP_AESTHETICS_DEBUG"):  # show the traceback when asked
                raise
            raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    return wrapper


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error a user can act on.

    ImageLoadError is looked up in ``sys.modules`` rather than imported: importing the image pipeline costs
    torch, and if it was never imported, the error cannot have been raised.
    """
    images = sys.modules.get("clip_aesthetics.images")
    return isinstance(exc, USER_ERRORS) or (images is not None and isinstance(exc, images.ImageLoadError))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (a clamped --workers, a probe on other weights) as one ``warning:`` line, not
    Python's two lines of file, line number and source."""
    warn("warning:", str(message))


warnings.showwarning = _show_warning
