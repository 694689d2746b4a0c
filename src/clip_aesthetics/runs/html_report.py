"""Self-contained HTML reports of scoring and evaluation runs: one file that works offline, anywhere.

Thumbnails are JPEG data URIs, the histogram is inline SVG, the style is inline CSS and there is no script,
so a report can be mailed, archived or opened from a USB stick. A Content-Security-Policy forbids every
fetch: a stray external reference would fail visibly in the browser instead of leaking a request.
Every path and text from the run is HTML-escaped; file names may contain ``<``, ``&`` and quotes.
"""

from __future__ import annotations

import base64
import io
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .. import __version__
from ..constants import DEFAULT_MAX_THUMBNAILS
from ..fileio import atomic_write_text, name_from_text, text_name
from ..pipeline.images import DEFAULT_MAX_PIXELS, open_image

if TYPE_CHECKING:
    from .score import ScoreReport

THUMBNAIL_SIZE = 256
THUMBNAIL_QUALITY = 80
LIST_ITEMS_SHOWN = 3  # long lists in a config (1000 prompts) show their count and this many items


@cache
def _css() -> str:
    return resources.files("clip_aesthetics").joinpath("data/report.css").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG data URI, or the reason there is none."""

    uri: str | None
    error: str | None = None


def make_thumbnail(
    source: str | os.PathLike | bytes, size: int = THUMBNAIL_SIZE, quality: int = THUMBNAIL_QUALITY
) -> Thumbnail:
    """A JPEG data URI of an image scaled to ``size`` pixels on its long side; never raises."""
    try:
        if isinstance(source, str):  # a path as written in results (names that are not UTF-8 escaped)
            source = name_from_text(source)
        image = open_image(source, DEFAULT_MAX_PIXELS, draft_size=size)
        image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, optimize=True)
    except Exception as exc:  # a preview is optional: whatever goes wrong, the report still renders
        return Thumbnail(None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def make_thumbnails(
    sources: Sequence[str | os.PathLike | bytes],
    *,
    size: int = THUMBNAIL_SIZE,
    quality: int = THUMBNAIL_QUALITY,
    workers: int | None = None,
) -> list[Thumbnail]:
    """Thumbnails of many images, in input order, made in parallel threads.

    Threads suffice: PIL releases the GIL while it decodes, resizes and encodes.
    """
    if not sources:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(partial(make_thumbnail, size=size, quality=quality), sources))


def write_html(html: str, path: str | os.PathLike) -> Path:
    """Write a report atomically: a reader never sees half a file, a failed write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, html)


def _h(value: Any) -> str:
    """Escaped text; undecodable bytes of a file name are shown as in the results files (``\\xNN``)."""
    return escape(text_name(str(value)), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _h(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _list_summary(items: Sequence[Any]) -> str:
    if all(isinstance(v, int | float) for v in items) and len(items) <= 8:
        return "[" + ", ".join(_num(v) for v in items) + "]"
    shown = ", ".join(f"“{_h(str(v)[:120])}”" for v in items[:LIST_ITEMS_SHOWN])
    more = f", … <span class='muted'>(+{len(items) - LIST_ITEMS_SHOWN:,} more)</span>"
    return f"<b>{len(items):,}</b>: {shown}{more if len(items) > LIST_ITEMS_SHOWN else ''}"


def _config_rows(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a nested config into (dotted key, value HTML); long lists are summarised, never dumped."""
    rows: list[tuple[str, str]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _config_rows(value, f"{name}.")
        elif isinstance(value, list | tuple):
            rows.append((name, _list_summary(value) if value else "[]"))
        else:
            rows.append((name, "—" if value is None else _num(value, 4)))
    return rows


def _chips(config: Mapping[str, Any]) -> str:
    """The scorer at a glance: method, backbone, weights, prompt counts (wherever the config has them)."""
    scorer = config.get("scorer", config)
    scorer = scorer if isinstance(scorer, Mapping) else {}
    backbone = scorer.get("backbone") if isinstance(scorer.get("backbone"), Mapping) else {}
    prompts = scorer.get("prompts") if isinstance(scorer.get("prompts"), Mapping) else {}
    facts = [("method", scorer.get("method")), ("backbone", backbone.get("model"))]
    facts += [("pretrained", backbone.get("pretrained"))]
    facts += [(f"{k} prompts", f"{len(v):,}") for k, v in prompts.items() if isinstance(v, list | tuple)]
    return "".join(f'<span class="chip"><b>{_h(k)}</b> {_h(v)}</span>' for k, v in facts if v is not None)


def _ticks(lo: float, hi: float) -> list[float]:
    step = next((s for s in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0) if (hi - lo) / s <= 10), (hi - lo) / 10)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def histogram_svg(
    series: Sequence[tuple[str, Sequence[float]]], *, threshold: float | None = None, bins: int = 24
) -> str:
    """Inline SVG histogram of one or more score series (e.g. predicted and true), side by side per bin.

    Horizontal positions are percentages and vertical ones pixels, so the chart fills any width while its
    text keeps its size (a scaled viewBox would shrink the labels to nothing on a phone).
    """
    values = [v for _, vs in series for v in vs if math.isfinite(v)]
    if not values:
        return "<p class='muted'>No scores to plot.</p>"
    lo, hi = math.floor(min(values) * 2) / 2, math.ceil(max(values) * 2) / 2
    hi, step = max(hi, lo + 0.5), (max(hi, lo + 0.5) - lo) / bins
    counts = [[0] * bins for _ in series]
    for row, (_, vs) in zip(counts, series, strict=True):
        for v in (v for v in vs if math.isfinite(v)):
            row[min(int((v - lo) / step), bins - 1)] += 1
    peak, base, top, width = max(map(max, counts)), 150, 18, 94 / bins / len(series)

    def x(value: float) -> float:  # percent of the width; 3% margins keep the edge labels inside
        return 3 + 94 * (value - lo) / (hi - lo)

    parts = [f"<svg class='hist' height='{base + 22}' role='img' aria-label='score histogram'>"]
    parts.append(f"<line class='gl' x1='0' x2='100%' y1='{top}' y2='{top}'/>")
    parts.append(f"<text x='100%' y='{top - 5}' text-anchor='end'>{peak} per bin</text>")
    for s, ((name, _), row) in enumerate(zip(series, counts, strict=True)):
        for b, n in ((b, n) for b, n in enumerate(row) if n):
            h, left = n * (base - top) / peak, lo + b * step
            parts.append(
                f"<rect class='bar s{s}' x='{x(left) + s * width + 0.12:.2f}%' y='{base - h:.1f}' "
                f"width='{width - 0.24:.2f}%' height='{h:.1f}' rx='2'>"
                f"<title>{_h(name)}: {n} in {left:.2f}–{left + step:.2f}</title></rect>"
            )
    parts.append(f"<line class='axis' x1='0' x2='100%' y1='{base}' y2='{base}'/>")
    parts += [
        f"<text x='{x(t):.2f}%' y='{base + 16}' text-anchor='middle'>{t:g}</text>" for t in _ticks(lo, hi)
    ]
    if threshold is not None and lo < threshold < hi:
        parts.append(
            f"<line class='thr' x1='{x(threshold):.2f}%' x2='{x(threshold):.2f}%' y1='{top}' y2='{base}'/>"
        )
        parts.append(f"<text x='{x(threshold) + 0.8:.2f}%' y='{top - 5}'>good &gt; {threshold:g}</text>")
    parts.append("</svg>")
    if len(series) > 1:
        keys = "".join(f"<span class='s{i}'><i></i>{_h(name)}</span>" for i, (name, _) in enumerate(series))
        parts.append(f"<div class='legend'>{keys}</div>")
    return "".join(parts)


def _card(row: Mapping[str, Any], thumb: Thumbnail) -> str:
    path, score, rank = str(row["path"]), float(row["score"]), int(row["rank"])
    label = _h(row.get("label", ""))
    name, folder = os.path.basename(path) or path, os.path.dirname(path)
    if thumb.uri:
        image = f"<img src='{thumb.uri}' alt='{_h(name)}' loading='lazy' decoding='async'>"
    else:
        image = f"<div class='ph'>no preview<br><span class='muted'>{_h(thumb.error or '')}</span></div>"
    badges = f"<span class='rank'>#{rank}</span><span class='score' title='{score!r}'>{score:.3f}</span>"
    if row.get("true_mean") is not None:  # evaluation: the ground truth under the prediction, in its colour
        badges += f"<span class='true'>true {float(row['true_mean']):.3f}</span>"
    fill = min(max((score - 1.0) / 9.0, 0.0), 1.0) * 100  # the 1-10 scale
    return (
        f"<figure class='card {label}' data-rank='{rank}' data-path='{_h(path)}'>"
        f"<div class='thumb'>{image}{badges}</div><figcaption>"
        f"<div class='name' title='{_h(path)}'>{_h(name)}</div>"
        f"<div class='dir'>{_h(folder) or '&nbsp;'}</div>"
        f"<div class='meter'><span style='width:{fill:.1f}%'></span></div><span class='label'>{label}</span>"
        "</figcaption></figure>"
    )


def _plain_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows past the thumbnail limit: a compact table, still carrying rank and path for tools."""
    true = any(r.get("true_mean") is not None for r in rows)
    widths = {"rank": 4.5, "score": 4.5, **({"true": 4.5} if true else {}), "label": 4}
    head = "".join(f"<th style='width:{w}em'>{name}</th>" for name, w in widths.items()) + "<th>path</th>"
    body = []
    for r in rows:
        label, path = _h(r.get("label", "")), _h(r["path"])
        cells = f"<td>{int(r['rank'])}</td><td>{float(r['score']):.3f}</td>"
        cells += (f"<td>{_num(r.get('true_mean'))}</td>" if true else "") + f"<td class='lab'>{label}</td>"
        body.append(
            f"<tr class='plain {label}' data-rank='{int(r['rank'])}' data-path='{path}'>"
            f"{cells}<td>{path}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _photos_section(rows: Sequence[Mapping[str, Any]], limit: int, size: int, workers: int | None) -> str:
    limit = max(limit, 0)
    shown, rest = rows[:limit], rows[limit:]
    thumbs = make_thumbnails([str(r["path"]) for r in shown], size=size, workers=workers)
    parts = [f"<h2 id='photos'>Photos <small>{len(rows):,} scored, best first</small></h2>"]
    if rest:
        parts.append(
            f"<p class='note'>Thumbnails are embedded for the best {len(shown):,} of {len(rows):,} images "
            f"(limit {limit:,}); the other {len(rest):,} are <a href='#more'>listed below</a> "
            "without one.</p>"
        )
    cards = "".join(_card(r, t) for r, t in zip(shown, thumbs, strict=True))
    parts.append(f"<div class='photos'>{cards}</div>" if shown else "")
    parts.append("" if rows else "<p class='muted'>No image was scored.</p>")
    if rest:
        parts.append(f"<h2 id='more'>Without thumbnail <small>ranks {limit + 1:,}–{len(rows):,}</small></h2>")
        parts.append(f"<div class='panel'>{_plain_rows(rest)}</div>")
    return "".join(parts)


def _errors_section(errors: Sequence[Mapping[str, Any]]) -> str:
    if not errors:
        return "<h2 id='unreadable'>Unreadable files</h2><p class='ok'>All files were read.</p>"
    body = []
    for e in errors:  # score writes {path, error}; evaluate {id, path, error}, path possibly empty
        where, why = _h(e.get("path") or e.get("id", "")), _h(e.get("error", ""))
        body.append(f"<tr class='error' data-path='{where}'><td>{where}</td><td>{why}</td></tr>")
    return (
        f"<h2 id='unreadable'>Unreadable files <small>{len(errors):,}, left out of the ranking</small></h2>"
        "<div class='panel'><table class='err'><tr><th>path</th><th>reason</th></tr>"
        f"{''.join(body)}</table></div>"
    )


def _stat(label: str, value: str, hint: str = "", warn: bool = False) -> str:
    hint = f"<i>{hint}</i>" if hint else ""
    return f"<div class='stat{' warn' if warn else ''}'><span>{_h(label)}</span><b>{value}</b>{hint}</div>"


def _page(title: str, stats: Sequence[str], histogram: str, config: Mapping[str, Any], body: str) -> str:
    settings = "".join(
        f"<tr><td>{_h(k).replace('.', '.<wbr>')}</td><td>{v}</td></tr>" for k, v in _config_rows(config)
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\"><link rel='icon' href='data:,'>"
        f"<title>{_h(title)}</title><style>{_css()}</style></head><body><main>"
        f"<header><h1>{_h(title)}</h1><p class='sub'>clip-aesthetics {_h(__version__)} · "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p><div class='chips'>{_chips(config)}</div></header>"
        f"<section class='stats'>{''.join(stats)}</section><section class='panels'>"
        f"<div class='panel'><h3>Score distribution</h3>{histogram}</div>"
        "<div class='panel'><h3>Configuration</h3>"
        f"<div class='scroll'><table class='kv'>{settings}</table></div></div></section>{body}"
        "<footer>Self-contained report: images are embedded, nothing is loaded from the network.</footer>"
        "</main></body></html>"
    )


def _threshold(config: Any) -> float | None:
    value = config.get("label_threshold") if isinstance(config, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


def render_score_report(
    report: ScoreReport,
    *,
    title: str = "Aesthetic scores",
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumbnail_size: int = THUMBNAIL_SIZE,
    workers: int | None = None,
) -> str:
    """The HTML page of a scoring run: photos best first with rank/score/label, histogram, errors, config.

    Args:
        report: What :func:`~clip_aesthetics.runs.score.score_paths` returned; thumbnails are read from the
            rows' paths (an input given as bytes, or a file gone since, gets a placeholder).
        title: Page title and heading.
        max_thumbnails: Embed thumbnails for this many of the best images; the rest are listed without.
        thumbnail_size: Long side of the thumbnails in pixels.
        workers: Threads making thumbnails (default: one per core, at most 8).
    """
    rows = sorted(report.rows, key=lambda r: r["rank"])
    scores = [float(r["score"]) for r in rows]
    stats = [
        _stat("scored", f"{len(rows):,}"),
        _stat("unreadable", f"{len(report.errors):,}", warn=bool(report.errors)),
        _stat("time", _duration(report.seconds)),
        _stat("images / s", _num(report.images_per_second, 1)),
    ]
    if scores:
        n_good = sum(r.get("label") == "good" for r in rows)
        stats.append(_stat("best", f"{scores[0]:.3f}", f"median {statistics.median(scores):.3f}"))
        stats.append(_stat("good", f"{n_good:,}", f"{n_good / len(rows):.0%} of scored"))
    histogram = histogram_svg([("score", scores)], threshold=_threshold(report.scorer_config))
    body = _photos_section(rows, max_thumbnails, thumbnail_size, workers) + _errors_section(report.errors)
    return _page(title, stats, histogram, report.scorer_config, body)


def render_evaluation_report(
    rows: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    title: str = "Evaluation",
    seconds: float | None = None,
    threshold: float | None = None,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumbnail_size: int = THUMBNAIL_SIZE,
    workers: int | None = None,
) -> str:
    """The HTML page of an evaluation: photos by predicted score, each badge showing predicted and true.

    Args:
        rows: One dict per scored image with ``path``, ``score`` and ``true_mean``;
            ranked here by score (best first); ``label`` is derived from ``threshold`` when absent.
        errors: One dict per image that could not be read: ``path`` (or ``id``) and ``error``.
        metrics: Name -> value (n, srcc, plcc, accuracy, ...), shown as tiles in the given order.
        config: Scorer, dataset and split (nested dicts; long lists are summarised, not dumped).
        title: Page title and heading.
        seconds: Duration of the run, for the time and images/s tile.
        threshold: A predicted score above it is good (default: the ``label_threshold`` of ``config`` or
            of ``config['scorer']``).
        max_thumbnails, thumbnail_size, workers: As in :func:`render_score_report`.
    """
    threshold = threshold if threshold is not None else _threshold(config.get("scorer", config))
    scored = [{**r, "score": float(r["score"])} for r in rows]
    scored.sort(key=lambda r: -r["score"])  # stable: ties keep the input order, as score_paths does
    for rank, row in enumerate(scored, start=1):
        row["rank"] = rank
        if "label" not in row and threshold is not None:
            row["label"] = "good" if row["score"] > threshold else "bad"
    stats = [_stat(k, _num(v)) for k, v in metrics.items()]
    stats.append(_stat("unreadable", f"{len(errors):,}", warn=bool(errors)))
    if seconds is not None:
        speed = f"{(len(scored) + len(errors)) / seconds:.1f} images/s" if seconds > 0 else ""
        stats.append(_stat("time", _duration(seconds), speed))
    true = [float(r["true_mean"]) for r in scored if r.get("true_mean") is not None]
    histogram = histogram_svg(
        [("predicted", [r["score"] for r in scored]), ("true", true)], threshold=threshold
    )
    body = _photos_section(scored, max_thumbnails, thumbnail_size, workers) + _errors_section(errors)
    return _page(title, stats, histogram, config, body)
