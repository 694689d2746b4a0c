"""`clip-aesthetics cull`, `taste fit` and `app`: culling a shoot, learning a taste, reviewing in a browser.

Heavy modules (torch, the models, the web server) are imported inside the commands, so that
``clip-aesthetics --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .main import EXIT_NOTHING_DONE, app, console, fail, on_interrupt, user_errors, warn
from .options import BatchSize, Device, Precision, Pretrained, Workers, ZeroShotScore

taste_app = typer.Typer(no_args_is_help=True, help="Learn your own taste from your ratings.")
app.add_typer(taste_app, name="taste")

MODEL_HELP = "Backbone: ViT-B-32, hf-hub:org/repo, local-dir:PATH (default: the scorer's)."


def _scorer(scorer_file, model, pretrained, positive, negative, prompts, device, zeroshot_score=None):
    """The scorer a command ranks with; it must score image embeddings (they are cached per shoot)."""
    from ..runs.score import build_scorer
    from .score import check_zeroshot_score, prompt_groups

    groups = prompt_groups(positive, negative, prompts)
    check_zeroshot_score(scorer_file, zeroshot_score)
    if zeroshot_score == "authors":  # stars are score percentiles: a saturated score makes them tie
        warn(
            "note:",
            "the authors' zero-shot score saturates the 1-10 scale (many photos at exactly 1 or 10), so "
            "stars and picks tie more; the default (cosine) does not",
        )
    scorer = build_scorer(
        scorer_file or "zeroshot", model=model, pretrained=pretrained, prompts=groups, device=device,
        formula=zeroshot_score,
    )  # fmt: skip
    if scorer.encoder_key() is None:  # its own encoder (a fine-tuned tower): the cached embeddings do not fit
        raise ValueError(
            f"{scorer.method} scorers work on pixels, not on image embeddings: cull with a zero-shot, probe, "
            "taste or LAION scorer"
        )
    return scorer


def _check_export(export: Path | None, folder: Path, flag: str) -> None:
    """Picks are exported out of the shoot: inside it, the next cull would count the copies as photos."""
    if export is not None and (
        export.resolve() == folder.resolve() or folder.resolve() in export.resolve().parents
    ):
        raise fail(f"{flag} {export} is inside the shoot: the next cull would count the copies as photos")


def _scores(scorer, features):
    import torch

    return scorer.score_features(torch.from_numpy(features)).score.numpy().astype(float)


@app.command()
@user_errors
@on_interrupt(
    "every file written so far is whole (sidecars are replaced one at a time), the rest untouched; "
    "rerun the same command to finish"
)
def cull(
    folder: Path = typer.Argument(..., help="The shoot: a folder of photos (walked recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="groups.csv (or .jsonl, .parquet)."),
    xmp: bool = typer.Option(False, "--xmp", help="Write 1-5 stars (score percentile) to XMP sidecars."),
    reject_duplicates: bool = typer.Option(
        False, "--reject-duplicates", help="With --xmp: mark the non-best frames of each group rejected."
    ),
    overwrite_ratings: bool = typer.Option(
        False,
        "--overwrite-ratings",
        help="With --xmp: replace the photographer's own ratings and pick labels too (kept by default; "
        "ratings this tool wrote are always updated).",
    ),
    export: Path = typer.Option(
        None,
        "--export",
        help="Copy the picks (picked, or at least --export-stars) with their RAW files and sidecars here.",
    ),
    export_stars: int = typer.Option(4, min=1, max=5, help="With --export: the fewest stars of a pick."),
    move: bool = typer.Option(False, "--move", help="With --export: move the picks instead of copying."),
    similarity: float = typer.Option(
        0.92, min=-1, max=1, help="Cosine similarity from which frames are alike."
    ),
    max_gap: float = typer.Option(10.0, min=0, help="Most seconds between two frames of a burst."),
    scorer_file: str = typer.Option(None, "--scorer", help="A scorer file (probe, taste, laion:PATH)."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    pretrained: Pretrained = None,
    positive: list[str] = typer.Option(None, "--positive", help="Positive prompt text (repeatable)."),
    negative: list[str] = typer.Option(None, "--negative", help="Negative prompt text (repeatable)."),
    prompts: Path = typer.Option(None, help="JSON or YAML file with 'positive' and 'negative' lists."),
    zeroshot_score: ZeroShotScore = None,
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Group bursts and near-duplicates, pick the best frame of each, optionally rate in XMP sidecars."""
    from ..culling.cull import cull_rows, write_sidecars
    from ..culling.shoot import analyse_folder
    from ..fileio import check_outputs
    from ..runs.score import check_output_format, errors_path_for, write_rows

    if (reject_duplicates or overwrite_ratings) and not xmp:
        raise fail("--reject-duplicates and --overwrite-ratings change sidecars: add --xmp")
    if move and export is None:
        raise fail("--move moves the exported picks: add --export FOLDER")
    _check_export(export, folder, "--export")
    check_outputs(check_output_format(output), errors_path_for(output).with_suffix(".csv"))  # before work
    scorer = _scorer(scorer_file, model, pretrained, positive, negative, prompts, device, zeroshot_score)
    shoot = analyse_folder(
        folder, scorer.backbone, batch_size=batch_size, workers=workers, precision=precision
    )
    for error in shoot.errors:
        warn("skipped", f"{folder / error['rel']}: {error['error']}")
    if not shoot.frames:
        raise fail(f"no readable photos under {folder}", EXIT_NOTHING_DONE)
    rows = cull_rows(shoot, _scores(scorer, shoot.features), similarity=similarity, max_gap=max_gap)
    write_rows(rows, output)
    if shoot.errors:
        errors = [{"path": str(folder / e["rel"]), "error": e["error"]} for e in shoot.errors]
        write_rows(errors, errors_path_for(output).with_suffix(".csv"))
    groups = len({row["group"] for row in rows})
    line = f"{len(rows)} photos in {groups} groups, unreadable {len(shoot.errors)}; wrote {output}"
    if xmp:
        model = f"{scorer.method} {scorer.backbone.weights_id}"
        report = write_sidecars(
            rows, reject_duplicates=reject_duplicates, overwrite=overwrite_ratings, model=model
        )
        for error in report.errors:
            warn("sidecar not written", error["error"])
        line += (
            f"; sidecars: machine ratings written {report.written}, "
            f"photographer's decisions kept unchanged {report.kept}"
        )
        line += f", photographer's ratings replaced {report.replaced}" if report.replaced else ""
        line += f", failed {len(report.errors)}" if report.errors else ""
    if export is not None:
        from ..culling.export import export_picks

        exported = export_picks(rows, folder, export, move=move, min_stars=export_stars)
        for error in exported.errors:
            warn("not exported", error)
        line += (
            f"; {'moved' if move else 'copied'} {exported.picks} picks ({exported.files} files) to {export}"
        )
    console.print(line, highlight=False, soft_wrap=True)


@taste_app.command("fit")
@user_errors
@on_interrupt("nothing was written to {output}")
def taste_fit(
    folders: list[Path] = typer.Argument(..., help="Folders of photos you have rated (XMP sidecars)."),
    output: Path = typer.Option(..., "--output", "-o", help="The scorer file to write (.safetensors)."),
    ratings: Path = typer.Option(None, help="A CSV with 'path' and 'rating' columns (beats sidecars)."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    pretrained: Pretrained = None,
    positive: list[str] = typer.Option(None, "--positive", help="Generic score: positive prompts."),
    negative: list[str] = typer.Option(None, "--negative", help="Generic score: negative prompts."),
    prompts: Path = typer.Option(None, help="Generic score: a prompts file."),
    zeroshot_score: ZeroShotScore = None,
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Fit a scorer to your own ratings (xmp:Rating or a CSV); usable as `score --scorer FILE`."""
    import numpy as np

    from ..culling.fit_taste import fit_taste, ratings_for, read_ratings_csv, taste_scorer
    from ..culling.shoot import analyse_folder
    from ..fileio import check_outputs
    from ..scorers.registry import save_scorer

    if output.suffix != ".safetensors":
        raise fail(f"the taste head is a .safetensors scorer file, not {output.name!r}")
    check_outputs(output)
    prior = _scorer(None, model, pretrained, positive, negative, prompts, device, zeroshot_score)
    csv_ratings = read_ratings_csv(ratings) if ratings else None
    paths, features = [], []
    for folder in folders:
        shoot = analyse_folder(
            folder, prior.backbone, batch_size=batch_size, workers=workers, precision=precision
        )
        paths += [(shoot.target(i), shoot.path(i)) for i in range(len(shoot.frames))]
        features.append(shoot.features)
    stars, problems, sources = ratings_for(paths, csv_ratings)
    for problem in problems:
        warn("unrated", problem)
    rated = [i for i, value in enumerate(stars) if value is not None]
    where = ", ".join(f"{sources[k]} from {k}" for k in ("csv", "sidecar", "embedded") if sources[k])
    if sources["machine"]:
        where += f"; {sources['machine']} ratings proposed by cull --xmp left out"
    console.print(
        f"your ratings: {len(rated)} of {len(paths)} photos ({where or 'none'})",
        highlight=False,
        soft_wrap=True,
    )
    x = np.concatenate(features)[rated]
    fit = fit_taste(x, _scores(prior, x), np.array([stars[i] for i in rated]))
    scorer = taste_scorer(prior, fit)
    save_scorer(scorer, output, scorer.tensors())
    console.print(
        f"{fit.n} rated photos of {len(paths)}: cross-validated SRCC {fit.cv_srcc:.3f} for your taste head "
        f"vs {fit.generic_srcc:.3f} for the generic score; wrote {output}",
        highlight=False,
        soft_wrap=True,
    )
    if fit.cv_srcc <= fit.generic_srcc:  # the app does not rank by such a head; say so here too
        warn("warning:", "the taste head does not rank your photos better than the generic score yet")


@app.command("app")
@user_errors
def review_app(
    folder: Path = typer.Argument(..., help="The shoot to review: a folder of photos."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port to serve on."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to bind: the default is this machine only; an address of this machine (or 0.0.0.0 "
        "for all of them) lets other devices on your network review too.",
    ),
    export_to: Path = typer.Option(
        None, "--export-to", help="Where the page's 'Export picks' copies the picks, RAW files and sidecars."
    ),
    scorer_file: str = typer.Option(None, "--scorer", help="A scorer file (probe, taste, laion:PATH)."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    pretrained: Pretrained = None,
    positive: list[str] = typer.Option(None, "--positive", help="Positive prompt text (repeatable)."),
    negative: list[str] = typer.Option(None, "--negative", help="Negative prompt text (repeatable)."),
    prompts: Path = typer.Option(None, help="JSON or YAML file with 'positive' and 'negative' lists."),
    zeroshot_score: ZeroShotScore = None,
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Review a shoot in your browser: ranked stacks, keyboard ratings into XMP sidecars, learn your taste."""
    import socket

    from ..app.server import page_url, serve
    from ..app.session import ReviewSession
    from .score import check_zeroshot_score, prompt_groups

    if not folder.is_dir():
        raise fail(f"not a folder: {folder}")
    _check_export(export_to, folder, "--export-to")
    try:  # a busy port is a one-line error here, not a server log
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise fail(f"cannot serve on {host}:{port} ({exc.strerror}): choose another --port") from None
    if positive or negative or prompts:  # a bad prompts file: one line before serving (costs an import)
        prompt_groups(positive, negative, prompts)
    check_zeroshot_score(scorer_file, zeroshot_score)

    def scorer():  # in the background: the page is served while the model loads and encodes its prompts
        return _scorer(scorer_file, model, pretrained, positive, negative, prompts, device, zeroshot_score)

    session = ReviewSession(
        folder, scorer, batch_size=batch_size, workers=workers, precision=precision, export_to=export_to
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn("warning:", f"anyone who can reach {host}:{port} can see and rate these photos")
    url = page_url(host, port)
    console.print(f"Reviewing {folder} at {url} (Ctrl+C stops)", highlight=False, soft_wrap=True)
    serve(session, host, port)
