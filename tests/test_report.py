"""The HTML report without a browser: escaping, order, thumbnail limit, self-containment, thumbnails, CLI."""

from __future__ import annotations

import base64
import csv
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.runs import html_report as report_module
from clip_aesthetics.runs.html_report import (
    Thumbnail,
    histogram_svg,
    make_thumbnail,
    make_thumbnails,
    render_evaluation_report,
    render_score_report,
    write_html,
)
from clip_aesthetics.runs.score import ScoreReport
from conftest import photo
from test_cli_score import PROMPT_ARGS

SPECIAL = 'a <b>&"quote\'s".jpg'


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def ranked(self) -> list[tuple[int, str]]:
        return [(int(a["data-rank"]), a["data-path"]) for _, a in self.tags if "data-rank" in a]

    def with_class(self, name: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.tags if name in (a.get("class") or "").split()]


def make_report(folder: Path, n: int = 6, errors: list[dict] | None = None, **config) -> ScoreReport:
    """A ranked ScoreReport over real photo files (scores made up: no model needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [SPECIAL if i == 2 else f"p{i}.{'png' if i % 2 else 'jpg'}" for i in range(n)]
    rows = []
    for rank, name in enumerate(names, start=1):
        photo(rank, (320, 240)).save(folder / name)
        score = 9.0 - rank * 0.7
        rows.append(
            {
                "path": str(folder / name),
                "score": score,
                "rank": rank,
                "label": "good" if score > 5.5 else "bad",
            }
        )
    scorer = {
        "method": "zeroshot",
        "backbone": {"model": "ViT-B-32", "pretrained": "openai"},
        "label_threshold": 5.5,
    }
    return ScoreReport(rows, errors or [], 2.5, {**scorer, **config})


def test_paths_and_reasons_are_escaped(tmp_path: Path) -> None:
    errors = [{"path": str(tmp_path / "<img src=x onerror=alert(1)>.jpg"), "error": "bad & <broken> 'x'"}]
    html = render_score_report(make_report(tmp_path, errors=errors), title="<Title & co>")
    assert "<b>&" not in html and "<img src=x" not in html and "<script" not in html.lower()
    assert "a &lt;b&gt;&amp;&quot;quote&#x27;s&quot;.jpg" in html
    assert "&lt;Title &amp; co&gt;" in html and "bad &amp; &lt;broken&gt; &#x27;x&#x27;" in html
    page = _Elements(html)
    assert SPECIAL in "".join(page.text)  # a browser shows the real name
    assert [a["data-path"] for a in page.with_class("error")] == [errors[0]["path"]]
    assert str(tmp_path / SPECIAL) in [path for _, path in page.ranked()]


def test_undecodable_file_name_does_not_break_rendering(tmp_path: Path) -> None:
    report = make_report(tmp_path, n=2)
    report.rows[0]["path"] = str(tmp_path / "caf\udce9.jpg")  # a Latin-1 name read on a UTF-8 system
    out = write_html(render_score_report(report), tmp_path / "r.html")
    assert "caf\\xe9.jpg" in out.read_text(encoding="utf-8")  # as the CSV writes it (fileio.text_name)


def test_cards_follow_rank_order(tmp_path: Path) -> None:
    report = make_report(tmp_path, n=7)
    expected = [(r["rank"], r["path"]) for r in report.rows]
    report.rows.reverse()  # the renderer orders by rank, not by list position
    page = _Elements(render_score_report(report))
    assert page.ranked() == expected
    assert len(page.with_class("card")) == 7 and not page.with_class("plain")


def test_thumbnail_limit_lists_the_rest(tmp_path: Path) -> None:
    report = make_report(tmp_path, n=8)
    html = render_score_report(report, max_thumbnails=3)
    page = _Elements(html)
    assert [rank for rank, _ in page.ranked()] == list(range(1, 9))
    assert [int(a["data-rank"]) for a in page.with_class("card")] == [1, 2, 3]
    assert [int(a["data-rank"]) for a in page.with_class("plain")] == [4, 5, 6, 7, 8]
    assert sum(1 for tag, a in page.tags if tag == "img") == 3
    assert "best 3 of 8 images" in html and "the other 5" in html
    assert len(_Elements(render_score_report(report, max_thumbnails=0)).with_class("plain")) == 8


def test_no_external_references(tmp_path: Path) -> None:
    report = make_report(tmp_path, errors=[{"path": str(tmp_path / "x.jpg"), "error": "not an image"}])
    for html in (render_score_report(report), render_evaluation_report(report.rows, [], {"srcc": 0.5}, {})):
        markup = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may hold any "//x"
        assert not re.search(r"https?://|//[a-z]", markup, re.IGNORECASE)
        assert 'src="/' not in markup and "src='/" not in markup and "url(" not in markup
        page = _Elements(html)
        refs = [a[k] for _, a in page.tags for k in ("src", "href", "srcset", "action") if k in a]
        assert refs and all(r.startswith(("data:", "#")) for r in refs)
        assert not any(tag in ("script", "iframe", "object", "embed") for tag, _ in page.tags)
        policy = next(
            a["content"] for tag, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
        )
        assert "default-src 'none'" in policy
        assert any(tag == "meta" and a.get("name") == "viewport" for tag, a in page.tags)


def decode(thumbnail: Thumbnail) -> Image.Image:
    assert thumbnail.uri is not None and thumbnail.uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(thumbnail.uri.split(",", 1)[1])))


def test_thumbnail_size_format_and_orientation(tmp_path: Path) -> None:
    photo(0, (1000, 500)).save(tmp_path / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated to portrait
    photo(1, (400, 200)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    photo(2, (100, 80)).save(tmp_path / "small.jpg")
    sizes = [decode(make_thumbnail(tmp_path / n)).size for n in ("wide.png", "rotated.jpg", "small.jpg")]
    assert sizes == [(256, 128), (128, 256), (100, 80)]  # long side 256, never upscaled
    assert decode(make_thumbnail(tmp_path / "wide.png")).format == "JPEG"


def test_thumbnail_failures_become_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    assert make_thumbnail(tmp_path / "broken.jpg").uri is None
    assert make_thumbnail(tmp_path / "gone.jpg").error == "file not found"
    report = make_report(tmp_path / "photos", n=4)
    Path(report.rows[1]["path"]).unlink()  # deleted between scoring and reporting
    real = report_module.open_image

    def flaky(source, *args, **kwargs):
        if str(source).endswith("p3.png"):
            raise MemoryError("decoder exploded")  # not an ImageLoadError: must not escape either
        return real(source, *args, **kwargs)

    monkeypatch.setattr(report_module, "open_image", flaky)
    page = _Elements(html := render_score_report(report))
    assert len(page.with_class("card")) == 4 and len(page.with_class("ph")) == 2
    assert "file not found" in html and "decoder exploded" in html


def test_parallel_thumbnails_match_sequential_in_order(tmp_path: Path) -> None:
    paths = []
    for i in range(12):
        photo(i, (300 + 10 * i, 200)).save(tmp_path / f"{i}.jpg")
        paths.append(tmp_path / f"{i}.jpg")
    paths.insert(5, tmp_path / "missing.jpg")
    assert make_thumbnails(paths, workers=4) == [make_thumbnail(p) for p in paths]
    assert make_thumbnails([]) == []


def test_long_prompt_lists_are_summarised(tmp_path: Path) -> None:
    prompts = {"positive": [f"a great photo of a thing{i}" for i in range(1000)], "negative": ["a bad photo"]}
    html = render_score_report(make_report(tmp_path, prompts=prompts))
    assert "thing0" in html and "thing2" in html and "thing3" not in html and "thing999" not in html
    assert "<b>1,000</b>" in html and "+997 more" in html and "positive prompts</b> 1,000" in html


def test_histogram_counts_every_score_once() -> None:
    scores = [1.0, 2.2, 2.3, 5.5, 5.51, 9.9, 10.0, float("nan")]
    svg = histogram_svg([("score", scores), ("true", [3.0, 4.0])], threshold=5.5)
    titles = re.findall(r"<title>(\w+): (\d+) in ([\d.]+)–([\d.]+)</title>", svg)
    assert sum(int(n) for name, n, *_ in titles if name == "score") == 7  # NaN left out
    assert sum(int(n) for name, n, *_ in titles if name == "true") == 2
    for name, n, lo, hi in titles:  # each bin holds exactly the values between its edges
        values = scores if name == "score" else [3.0, 4.0]
        inside = [v for v in values if float(lo) <= v < float(hi) or (v == 10.0 and float(hi) == 10.0)]
        assert len(inside) == int(n), (name, lo, hi)
    assert "good &gt; 5.5" in svg and "predicted" not in svg
    assert "No scores" in histogram_svg([("score", [])])


def test_evaluation_report_orders_by_prediction_and_shows_truth(tmp_path: Path) -> None:
    base = make_report(tmp_path, n=5)
    rows = [{"path": r["path"], "score": 3.0 + i, "true_mean": 5.0 + i / 10} for i, r in enumerate(base.rows)]
    config = {"scorer": {**base.scorer_config, "label_threshold": 5.0}, "dataset": {"name": "ava"}}
    errors = [{"id": "77", "path": "", "error": "no image path"}, {"path": "x.jpg", "error": "empty"}]
    html = render_evaluation_report(rows, errors, {"srcc": 0.71234}, config, seconds=2.0)
    page = _Elements(html)
    assert page.ranked() == [(k + 1, rows[4 - k]["path"]) for k in range(5)]
    labels = [a["class"].split()[-1] for a in page.with_class("card")]
    assert labels == ["good", "good", "bad", "bad", "bad"]  # 7, 6 > 5.0 >= 5, 4, 3
    assert (
        "true 5.400" in html and "0.712" in html and "3.5 images/s" in html and "scorer.dataset" not in html
    )
    assert "dataset.<wbr>name" in html and "predicted" in html
    assert [a["data-path"] for a in page.with_class("error")] == ["77", "x.jpg"] and "no image path" in html


def test_write_html_is_atomic_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.html"
    write_html("<p>old</p>", target)
    assert write_html("<p>new ✓</p>", target) == target
    assert target.read_text(encoding="utf-8") == "<p>new ✓</p>"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temporary file left


def test_score_cli_writes_html(photo_dir: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    (photo_dir / "empty.jpg").write_bytes(b"")
    out, page_path = tmp_path / "ranked.csv", tmp_path / "out" / "report.html"
    args = [
        "score",
        str(photo_dir),
        "--model",
        tiny_clip_spec,
        *PROMPT_ARGS,
        "-o",
        str(out),
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, [*args, "--html", str(page_path), "--html-limit", "5"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    page = _Elements(page_path.read_text(encoding="utf-8"))
    assert page.ranked() == [(int(r["rank"]), r["path"]) for r in rows]
    assert len(page.with_class("card")) == 5 and len(page.with_class("plain")) == 3
    assert [a["data-path"] for a in page.with_class("error")] == [str(photo_dir / "empty.jpg")]
