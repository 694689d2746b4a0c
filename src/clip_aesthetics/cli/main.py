"""The typer application and the error handling every command shares."""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Callable

import typer
from rich.console import Console
from rich.text import Text

from ..fileio import text_name


class _ConventionalGroup(typer.core.TyperGroup):
    """Help in the usual Unix shape: ``score [OPTIONS] [PATHS]...``, ``evaluate [OPTIONS] ROOT``, and
    flags without a value type (typer writes ``{root}``, ``[paths]...`` and ``--embeddings <bool>``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _conventional(self)


def _conventional(command) -> None:
    for param in command.params:
        if getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = ""  # a flag takes no value: show none
        elif param.param_type_name == "argument":
            param.metavar = param.metavar or param.name.upper()
            param._usage_display_name = functools.partial(_usage_name, param)
    command.get_help_option = functools.partial(_plain_help_option, command.get_help_option)
    for sub in getattr(command, "commands", {}).values():
        _conventional(sub)


def _plain_help_option(make_option, ctx):
    option = make_option(ctx)  # made per call by click: -h/--help is a flag too
    if option is not None:
        option.metavar = ""
    return option


def _usage_name(argument) -> str:
    name = argument.metavar if argument.required else f"[{argument.metavar}]"
    return name + ("..." if argument.nargs != 1 else "")


app = typer.Typer(
    name="clip-aesthetics",
    cls=_ConventionalGroup,
    no_args_is_help=True,
    add_completion=False,
    help="Image aesthetic assessment with CLIP: score, evaluate, probe and fine-tune.",
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("clip-aesthetics")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from .. import __version__ as number
        console.print(f"clip-aesthetics {number}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Image aesthetic assessment with CLIP: score, evaluate, probe and fine-tune."""


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


MAX_MESSAGE = 400  # characters: a message is read, not scrolled (a list of 1,000 prompts is summarised)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr (Python argument names as the command's flags, at most
    :data:`MAX_MESSAGE` characters); return the Exit to raise."""
    message = shorten(as_flags(text_name(message)))
    err_console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    return typer.Exit(code)


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut in the middle to ``limit`` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    marker = f" [... {len(message):,} characters left out ...] "  # never shorter than the final marker
    room = limit - len(marker)
    head, tail = message[: room * 4 // 5], message[len(message) - (room - room * 4 // 5) :]
    return f"{head} [... {len(message) - len(head) - len(tail):,} characters left out ...] {tail}"


# Library arguments whose flag has another name (the library's `kind` is the CLI's --split-kind).
_FLAG_OF_ARGUMENT = {"kind": "--split-kind", "exist_ok": "--exist-ok", "out_dir": "--output"}
# name=value as Python writes it: a quoted string, a number or a constant (not part of a path: a/model=2.jpg)
_ARGUMENT = re.compile(
    r"(?<![\w/\\.\-])([a-z][a-z0-9_]*)=(?:'([^']*)'|\"([^\"]*)\"|(True|False|None|-?\d+(?:\.\d+)?)\b)"
)


# a bare argument name with an underscore (n_missing), not part of a path or of name=value
_NAME = re.compile(r"(?<![\w/\\.\-])([a-z][a-z0-9]*_[a-z0-9_]+)\b(?![=/\\.\-])")


def as_flags(message: str) -> str:
    """``pass exist_ok=True`` -> ``pass --exist-ok``, ``use kind='random'`` -> ``use --split-kind random``,
    ``n_corrupt must be >= 0`` -> ``--n-corrupt must be >= 0``.

    The library speaks Python; a CLI user sees the flags of the command that runs (a name the command
    has no flag for is left as it is).
    """
    flags = _current_flags()

    def option_of(name: str) -> str | None:
        option = flags.get(name)
        if option is None and _FLAG_OF_ARGUMENT.get(name) in flags.values():
            option = _FLAG_OF_ARGUMENT[name]
        return option

    def argument(match: re.Match) -> str:
        name, value = match[1], next(v for v in match.groups()[1:] if v is not None)
        option = option_of(name)
        if option is None:
            return match[0]
        if value in ("True", "False"):
            return option if value == "True" else f"no {option}"
        return f"{option} {value}"

    message = _ARGUMENT.sub(argument, message)
    return _NAME.sub(lambda match: option_of(match[1]) or match[0], message)


def _current_flags() -> dict[str, str]:
    """Python parameter name -> its long flag, for the command being run (empty outside one)."""
    try:
        from typer._click.globals import get_current_context  # typer vendors click since 0.2x
    except ImportError:
        from click import get_current_context
    context = get_current_context(silent=True)
    if context is None:
        return {}
    return {
        param.name: next((o for o in param.opts if o.startswith("--")), param.opts[0])
        for param in context.command.params
        if getattr(param, "opts", None) and param.opts[0].startswith("-")
    }


def warn(label: str, message: str) -> None:
    """Print ``label message`` on stderr, the label in yellow, the message as plain text."""
    err_console.print(Text.assemble((label, "yellow"), " ", text_name(message)), soft_wrap=True)


def on_interrupt(kept: str | Callable[[dict], str]) -> Callable:
    """Ctrl-C ends every command the same way: ``error: interrupted: <what was kept>``, exit 130.

    ``kept`` says what stays on disk and how to continue; a format string over the command's arguments
    (``"the finished shards stay in {output}"``) or a function of them.
    """

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                what = kept(kwargs) if callable(kept) else kept.format(**kwargs)
                raise fail(f"interrupted: {what}", EXIT_INTERRUPTED) from None

        return wrapper

    return decorate


NOTHING_WRITTEN = "nothing was written (the outputs are written at the end)"


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
    images = sys.modules.get("clip_aesthetics.pipeline.images")
    return isinstance(exc, USER_ERRORS) or (images is not None and isinstance(exc, images.ImageLoadError))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (a clamped --workers, a probe on other weights) as one ``warning:`` line, not
    Python's two lines of file, line number and source."""
    warn("warning:", str(message))


warnings.showwarning = _show_warning
