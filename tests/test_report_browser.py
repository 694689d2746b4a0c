"""The HTML report in a real headless browser (Debian's chromium driven by Playwright).

Skipped, with the reason, when the ``playwright`` package or a chromium binary is missing. Playwright's own
browser download (``playwright install``) is never needed: the system chromium is launched directly.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from test_cli_score import PROMPT_ARGS

pytestmark = pytest.mark.browser

SPECIAL = 'a <b>&"quote\'s".jpg'
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """``$CHROMIUM`` if set, else chromium on PATH or at Debian's location."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set $CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def scored_report(photo_dir: Path, tmp_path: Path, tiny_clip_spec: str) -> dict:
    """A real ``score --html`` run over photos, a broken file and a name full of HTML specials."""
    from conftest import photo

    photo(42, (200, 300)).save(photo_dir / SPECIAL)
    # a long name without a break opportunity: must wrap on a phone, not widen the page
    (photo_dir / f"broken_{'x' * 90}.jpg").write_bytes(b"\xff\xd8\xff this is no JPEG")
    out, page = tmp_path / "ranked.csv", tmp_path / "report.html"
    args = ["score", str(photo_dir), "--model", tiny_clip_spec, *PROMPT_ARGS, "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output
    errors = list(csv.DictReader((tmp_path / "ranked.errors.csv").open()))
    return {"page": page, "rows": list(csv.DictReader(out.open())), "errors": errors}


def open_page(browser, path: Path, width: int, height: int):
    """Load ``path`` from file://, collecting console errors, page errors and failed requests."""
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:100]} {r.failure}"))
    page.goto(path.as_uri(), wait_until="load")
    return page, problems


def load_all_images(page) -> None:
    """Thumbnails load lazily: scroll each into view, as a reader would, then wait until all are decoded."""
    images = page.locator(".card img")
    for i in range(images.count()):
        images.nth(i).scroll_into_view_if_needed()
    # Polled from Python: wait_for_function evaluates a string in the page, which the report's CSP forbids.
    deadline = time.monotonic() + 10
    while not page.evaluate("[...document.images].every(i => i.complete)") and time.monotonic() < deadline:
        page.wait_for_timeout(50)


def test_report_in_chromium_desktop(browser, scored_report: dict) -> None:
    page, problems = open_page(browser, scored_report["page"], 1280, 900)
    rows = scored_report["rows"]
    cards = page.eval_on_selector_all(
        ".card", "cs => cs.map(c => [+c.dataset.rank, c.dataset.path, c.querySelector('.name').textContent])"
    )
    assert cards == [[int(r["rank"]), r["path"], Path(r["path"]).name] for r in rows]
    assert SPECIAL in [name for _, _, name in cards]  # shown as the real name, not as markup
    load_all_images(page)
    widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == len(rows) == 9 and all(w > 0 for w in widths)
    shown = page.eval_on_selector_all("tr.error", "trs => trs.map(t => [...t.cells].map(c => c.textContent))")
    assert shown == [[e["path"], e["error"]] for e in scored_report["errors"]]
    assert len(shown) == 1 and "not an image" in shown[0][1]
    assert page.locator("#unreadable").is_visible() and page.title().startswith("Aesthetic scores")
    assert problems == []
    page.close()


def test_report_in_chromium_phone_has_no_horizontal_overflow(browser, scored_report: dict) -> None:
    page, problems = open_page(browser, scored_report["page"], 390, 844)
    load_all_images(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    columns = page.evaluate("getComputedStyle(document.querySelector('.photos')).gridTemplateColumns")
    assert len(columns.split()) == 2  # a two-column photo grid on a phone
    assert problems == []
    page.close()
