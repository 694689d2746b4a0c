"""The review app: a real server (`clip-aesthetics app` in a subprocess) driven by headless Chromium.

Keys write sidecars at once (checked on disk with an independent XML parse), a reload keeps the state, the
large view and its heat map work, "Learn my taste" re-ranks, and paths outside the shoot are refused.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_cli_score import PROMPT_ARGS
from test_culling import detailed, exif_with
from test_report_browser import browser  # noqa: F401  (the headless chromium fixture)

pytestmark = pytest.mark.browser
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
RATING, PICK = "{http://ns.adobe.com/xap/1.0/}Rating", "{http://www.digikam.org/ns/1.0/}PickLabel"
LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
 crs:Exposure2012="+0.35"><dc:subject><rdf:Bag><rdf:li>Tatras</rdf:li></rdf:Bag></dc:subject></rdf:Description>
</rdf:RDF></x:xmpmeta>"""
SECRET = "top secret, outside the shoot"


def sidecar_values(path: Path) -> tuple[str | None, str | None]:
    description = next(ET.parse(path).getroot().iter(f"{RDF}Description"))
    return description.get(RATING), description.get(PICK)


@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Path:
    """Twelve photos: three bursts of two (a second apart) and six single frames, a minute apart each."""
    base = tmp_path_factory.mktemp("review")
    folder = base / "shoot"
    folder.mkdir()
    for scene in range(9):
        image = detailed(30 + scene).resize((360, 240))
        for k in range(2 if scene < 3 else 1):
            stamp = f"2024:05:01 10:{scene:02d}:{k:02d}"
            image.save(folder / f"IMG_{scene}{k}.jpg", exif=exif_with(stamp), quality=90)
    (folder / "IMG_80.xmp").write_text(LIGHTROOM, encoding="utf-8")  # Lightroom's NAME.xmp convention
    (base / "secret.txt").write_text(SECRET, encoding="utf-8")
    detailed(99).resize((120, 80)).save(base / "outside.jpg")
    (folder / "link.jpg").symlink_to(base / "outside.jpg")  # leads out of the shoot
    (folder / "secret.jpg").symlink_to(base / "secret.txt")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """A raw HTTP request: the path is sent as written (no client-side normalisation of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


@pytest.fixture(scope="module")
def server(shoot: Path, tiny_clip_spec: str) -> Iterator[int]:
    yield from running_app(shoot, tiny_clip_spec)


def running_app(shoot: Path, model: str, env: dict | None = None) -> Iterator[int]:
    """`clip-aesthetics app` in a subprocess on a free port, once it is ready; ended by its pid."""
    port = free_port()
    command = [sys.executable, "-m", "clip_aesthetics", "app", str(shoot), "--port", str(port)]
    command += ["--model", model, *PROMPT_ARGS, "--workers", "0"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = request(port, "GET", "/api/status")
                if status == 200 and json.loads(body)["state"] == "ready":
                    break
            except OSError:
                pass
            assert process.poll() is None, "the app exited"
            assert time.monotonic() < deadline, "the app did not get ready"
            time.sleep(0.3)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def photos(port: int) -> dict:
    status, body = request(port, "GET", "/api/photos")
    assert status == 200
    return json.loads(body)


def open_app(browser, port: int):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector(".card.selected")
    return page, problems


def wait_until(page, expression: str, seconds: float = 10) -> None:
    """Poll ``expression`` from Python (wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def selected(page) -> str:
    return page.get_attribute(".card.selected", "data-path")


def press(page, key: str) -> None:
    """Press a review key and wait until the page has heard back from the server."""
    with page.expect_response(lambda r: "/api/label" in r.url):
        page.keyboard.press(key)
    page.wait_for_timeout(50)


def test_keyboard_review_writes_sidecars_and_survives_a_reload(browser, server: int, shoot: Path) -> None:  # noqa: F811
    page, problems = open_app(browser, server)
    data = photos(server)
    covers = [g["frames"][0]["path"] for g in data["groups"]]
    shown = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")
    assert shown == covers and len(covers) == 9  # stacks: one card per burst, best first
    assert [g["frames"][0]["best"] for g in data["groups"]] == [True] * 9
    assert "link.jpg" not in json.dumps(data) and "secret.jpg" not in json.dumps(data)
    assert selected(page) == covers[0]  # the first photo is selected at load

    press(page, "3")
    assert sidecar_values(shoot / f"{covers[0]}.xmp") == ("3", None)
    page.keyboard.press("ArrowRight")
    assert selected(page) == covers[1]
    press(page, "x")
    assert sidecar_values(shoot / f"{covers[1]}.xmp") == ("-1", "1")
    page.keyboard.press("ArrowRight")
    press(page, "p")
    assert sidecar_values(shoot / f"{covers[2]}.xmp")[1] == "3"
    page.keyboard.press("ArrowLeft")
    press(page, "u")  # unflag the reject
    assert sidecar_values(shoot / f"{covers[1]}.xmp") == ("0", "0")
    press(page, "x")

    page.click('.card[data-path="IMG_80.jpg"]')
    press(page, "5")
    root = ET.parse(shoot / "IMG_80.xmp").getroot()  # Lightroom's sidecar, keywords and settings kept
    assert sidecar_values(shoot / "IMG_80.xmp")[0] == "5"
    assert [li.text for li in root.iter(f"{RDF}li")] == ["Tatras"]
    assert next(root.iter(f"{RDF}Description")).get(
        "{http://ns.adobe.com/camera-raw-settings/1.0/}Exposure2012"
    )
    assert not (shoot / "IMG_80.jpg.xmp").exists()

    page.reload()
    page.wait_for_selector(".card.selected")
    stars = dict(
        page.eval_on_selector_all(
            ".card", "cs => cs.map(c => [c.dataset.path, c.querySelector('.stars').textContent])"
        )
    )
    assert stars[covers[0]] == "★★★☆☆" and stars["IMG_80.jpg"] == "★★★★★"
    rejected = page.eval_on_selector_all(".card.rejected", "cs => cs.map(c => c.dataset.path)")
    assert rejected == [covers[1]]
    page.select_option("#filter-flag", "rejects")
    page.wait_for_timeout(300)
    assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)") == [covers[1]]
    page.select_option("#filter-flag", "picks")
    page.wait_for_timeout(300)
    assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)") == [covers[2]]
    assert problems == []
    page.close()


def test_stacks_open_and_the_large_view_explains_the_score(browser, server: int) -> None:  # noqa: F811
    page, problems = open_app(browser, server)
    data = photos(server)
    burst = next(g for g in data["groups"] if len(g["frames"]) == 2)
    page.click(f'.card[data-path="{burst["frames"][0]["path"]}"]')
    page.keyboard.press("s")
    page.wait_for_selector(".card.sibling")
    siblings = page.eval_on_selector_all(".card.sibling", "cs => cs.map(c => c.dataset.path)")
    assert siblings == [burst["frames"][1]["path"]]
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer:not([hidden])")
    wait_until(page, "document.getElementById('large').naturalWidth > 0")
    with page.expect_response(lambda r: "/api/why" in r.url) as answer:
        page.click("#why")
    heat = answer.value.json()  # 360 x 240 (3:2): 6 columns by 4 rows over the whole frame
    assert len(heat["grid"]) == 4 and all(len(row) == 6 for row in heat["grid"])
    assert heat["crop"] == [0.0, 0.0, 1.0, 1.0]
    assert page.is_visible("#heat")
    page.keyboard.press("Escape")
    assert page.is_hidden("#viewer")
    assert problems == []
    page.close()


def test_paths_outside_the_shoot_are_refused(server: int, shoot: Path) -> None:
    attempts = [
        "/thumb/../secret.txt",
        "/thumb/..%2fsecret.txt",
        "/thumb/%2e%2e/%2e%2e/secret.txt",
        "/photo/%2e%2e%2foutside.jpg",
        "/photo//etc/passwd",
        f"/photo/{shoot.parent / 'outside.jpg'}",
        "/thumb/link.jpg",
        "/photo/link.jpg",
        "/photo/secret.jpg",
        "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
    ]
    for path in attempts:
        status, body = request(server, "GET", path)
        assert status in (400, 404), path
        assert SECRET.encode() not in body
    for body in (
        {"path": "../outside.jpg", "action": "stars", "stars": 5},
        {"path": "link.jpg", "action": "reject"},
    ):
        assert request(server, "POST", "/api/label", body)[0] == 404
    assert request(server, "POST", "/api/why", {"path": "link.jpg"})[0] == 404
    assert not list(shoot.parent.glob("*.xmp")) and not (shoot / "link.jpg.xmp").exists()
    assert request(server, "GET", "/thumb/IMG_00.jpg")[0] == 200


def test_learn_my_taste_refits_and_reranks(server: int) -> None:
    frames = [f["path"] for g in photos(server)["groups"] for f in g["frames"]]
    for i, path in enumerate(frames):
        assert (
            request(server, "POST", "/api/label", {"path": path, "action": "stars", "stars": 1 + i % 5})[0]
            == 200
        )
    status, body = request(server, "POST", "/api/taste", {})
    assert status == 200, body
    fit = json.loads(body)
    assert fit["n_ratings"] == 12 and Path(fit["file"]).is_file()
    after = photos(server)
    assert after["scorer"] == "taste" and after["taste"]["n_ratings"] == 12


def test_progress_bar_while_the_shoot_is_analysed(browser, server: int) -> None:  # noqa: F811
    """The page polls the status: while it says "analysing" a progress bar shows, then the grid loads."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    answers = iter([(0, 12), (3, 12), (7, 12)])

    def analysing(route) -> None:
        step = next(answers, None)
        if step is None:
            route.continue_()  # the real server: ready
            return
        body = {"state": "analysing", "done": step[0], "total": step[1], "error": None, "folder": "shoot"}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/api/status", analysing)
    page.goto(f"http://127.0.0.1:{server}/")
    page.wait_for_selector("#progress:not([hidden])")
    wait_until(page, "document.getElementById('progress-bar').value >= 3")
    assert page.get_attribute("#progress-bar", "max") == "12"
    assert "of 12 photos" in page.text_content("#progress-text")
    page.wait_for_selector(".card.selected")
    assert page.is_hidden("#progress")
    page.close()


def test_learn_my_taste_keeps_open_stacks_and_says_whether_it_ranks(browser, server: int) -> None:  # noqa: F811
    frames = [f["path"] for g in photos(server)["groups"] for f in g["frames"]]
    for i, path in enumerate(frames):  # ratings along the file names: something to learn
        request(server, "POST", "/api/label", {"path": path, "action": "stars", "stars": 1 + i % 5})
    page, problems = open_app(browser, server)
    burst = next(g for g in photos(server)["groups"] if len(g["frames"]) == 2)
    page.click(f'.card[data-path="{burst["frames"][0]["path"]}"]')
    page.keyboard.press("s")  # open this burst's stack
    page.wait_for_selector(".card.sibling")
    members = sorted(f["path"] for f in burst["frames"])
    with page.expect_response(lambda r: "/api/taste" in r.url) as answer:
        page.click("#learn")
    taste = answer.value.json()
    page.wait_for_timeout(500)
    open_stack = page.eval_on_selector_all(
        f'.card[data-stack="{burst["stack"]}"]', "cs => cs.map(c => c.dataset.path)"
    )
    assert sorted(open_stack) == members  # the same burst is open after re-ranking, by its id
    message = page.text_content("#message")
    assert ("ranks the photos now" in message) == taste["applied"]
    assert taste["applied"] or "does not beat the generic score" in message
    assert photos(server)["scorer"] == ("taste" if taste["applied"] else "zeroshot")
    assert problems == []
    page.close()
