"""The review app in a real Chromium on a shoot a photographer would bring: awkward names, a corrupt file, a
malformed sidecar, a DNG, a HEIC and a RAW+JPEG pair. Sidecars are checked on disk with exiftool when it is
installed (else an independent XML parse)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from raw_data import make_dng, make_heic
from test_app_browser import open_app, photos, running_app, selected, wait_until
from test_culling import detailed, exif_with
from test_report_browser import browser  # noqa: F401  (the headless chromium fixture)

pytestmark = pytest.mark.browser
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
XMP, DK = "{http://ns.adobe.com/xap/1.0/}", "{http://www.digikam.org/ns/1.0/}"
ODD = ["rocket #4.jpg", "what?.jpg", "100% sure.jpg", "Zoë ü ñ.jpg", "with space/a b.jpg", "x&y=1.jpg"]


def fields(sidecar: Path) -> tuple[str | None, str | None]:
    """xmp:Rating and digiKam:PickLabel as written on disk."""
    description = next(ET.parse(sidecar).getroot().iter(f"{RDF}Description"))
    return description.get(f"{XMP}Rating"), description.get(f"{DK}PickLabel")


@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("odd") / "shoot"
    (folder / "with space").mkdir(parents=True)
    for k, name in enumerate(ODD):  # a minute apart: each its own stack
        detailed(60 + k).resize((360, 240)).save(folder / name, exif=exif_with(f"2024:05:01 11:{k:02d}:00"))
    for k in range(4):  # plain photos for the review keys
        image = detailed(70 + k).resize((360, 240))
        image.save(folder / f"IMG_{k}.jpg", exif=exif_with(f"2024:05:01 12:{k:02d}:00"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    detailed(80).resize((360, 240)).save(folder / "bad.jpg", exif=exif_with("2024:05:01 13:00:00"))
    (folder / "bad.jpg.xmp").write_text("<x:xmpmeta unclosed", encoding="utf-8")
    make_dng(detailed(81).resize((360, 240)), folder / "raw.dng", taken="2024:05:01 14:00:00")
    make_heic(detailed(82).resize((360, 240)), folder / "phone.heic", taken="2024:05:01 15:00:00")
    make_dng(detailed(83).resize((360, 240)), folder / "pair.dng", taken="2024:05:01 16:00:00")
    detailed(83).resize((360, 240)).save(folder / "pair.jpg", exif=exif_with("2024:05:01 16:00:00"))
    return folder


@pytest.fixture(scope="module")
def server(shoot: Path, tiny_clip_spec: str, tmp_path_factory) -> Iterator[int]:
    cache = tmp_path_factory.mktemp("cache")  # an empty cache: the first launch
    yield from running_app(shoot, tiny_clip_spec, {"CLIP_AESTHETICS_CACHE": str(cache)})


def card_paths(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)")


def test_every_name_and_format_has_a_thumbnail_and_a_large_view(browser, server: int) -> None:  # noqa: F811
    page, problems = open_app(browser, server)
    shown = card_paths(page)
    expected = sorted(
        [*ODD, *(f"IMG_{k}.jpg" for k in range(4)), "bad.jpg", "raw.dng", "phone.heic", "pair.jpg"]
    )
    assert sorted(shown) == expected  # the pair once (as its JPEG), the corrupt file not
    wait_until(
        page, "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    pair = next(f for g in photos(server)["groups"] for f in g["frames"] if f["path"] == "pair.jpg")
    assert pair["raw"] == "pair.dng"
    for name in ("rocket #4.jpg", "what?.jpg", "100% sure.jpg", "raw.dng", "phone.heic"):
        page.click(f'.card[data-path="{name}"]')
        page.keyboard.press("Enter")
        wait_until(
            page,
            "document.getElementById('large').complete && document.getElementById('large').naturalWidth > 0",
        )
        assert page.text_content("#large-name") == name
        page.keyboard.press("Escape")
    assert problems == []
    page.close()


def test_unreadable_files_and_bad_sidecars_are_listed(browser, server: int) -> None:  # noqa: F811
    page, _ = open_app(browser, server)
    assert page.is_visible("#problems")
    listed = page.eval_on_selector_all("#problems-list li", "items => items.map(i => i.textContent)")
    assert any(text.startswith("broken.jpg: not analysed") for text in listed)
    assert any(text.startswith("bad.jpg: sidecar not read") and "bad.jpg.xmp" in text for text in listed)
    page.close()


def press(page, key: str, route: str = "/api/label") -> None:
    with page.expect_response(lambda r: route in r.url):
        page.keyboard.press(key)
    page.wait_for_timeout(50)


def test_reject_keeps_the_stars_and_undo_puts_the_sidecar_back(browser, server: int, shoot: Path) -> None:  # noqa: F811
    page, problems = open_app(browser, server)
    page.click('.card[data-path="IMG_0.jpg"]')
    sidecar = shoot / "IMG_0.jpg.xmp"
    press(page, "4")
    press(page, "x")
    assert fields(sidecar) == ("-1", "1")
    press(page, "u")  # X then U: the four stars are back (Lightroom keeps stars apart from flags)
    assert fields(sidecar) == ("4", "0")
    press(page, "x")
    press(page, "2")  # a star key on a reject: still rejected, two stars waiting under it
    assert fields(sidecar) == ("-1", "1")
    press(page, "u")
    assert fields(sidecar) == ("2", "0")
    press(page, "Control+z", "/api/undo")  # undo the unflag: rejected again with its two stars
    assert fields(sidecar) == ("-1", "1")
    press(page, "Control+z", "/api/undo")
    press(page, "Control+z", "/api/undo")
    assert fields(sidecar) == ("4", "0")
    press(page, "Control+Shift+z", "/api/redo")
    assert fields(sidecar) == ("-1", "1")
    text = page.eval_on_selector('.card[data-path="IMG_0.jpg"] .stars', "e => e.textContent")
    assert text == "★★★★☆"  # the card shows the stars held under the reject
    assert problems == []
    page.close()


def test_filters_never_eat_the_arrows_and_the_selection_keeps_its_place(browser, server: int) -> None:  # noqa: F811
    page, _ = open_app(browser, server)
    page.select_option("#filter-flag", "unrated")
    page.wait_for_timeout(200)
    unrated = card_paths(page)
    assert len(unrated) >= 4 and selected(page) == unrated[0]
    page.focus("#filter-flag")  # as after choosing with the mouse or the keyboard
    page.keyboard.press("ArrowRight")  # moves the selection, not the filter
    assert page.eval_on_selector("#filter-flag", "e => e.value") == "unrated"
    assert selected(page) == unrated[1]
    page.keyboard.press("ArrowRight")
    assert selected(page) == unrated[2]
    press(page, "3")  # rated: it leaves the "unrated" view; the card that took its place is selected
    assert card_paths(page) == unrated[:2] + unrated[3:]
    assert selected(page) == unrated[3]
    press(page, "Control+z", "/api/undo")
    page.select_option("#filter-flag", "all")
    page.close()


def test_help_loupe_and_compare(browser, server: int, shoot: Path) -> None:  # noqa: F811
    page, problems = open_app(browser, server)
    page.keyboard.press("?")
    assert page.is_visible("#help") and "undo" in page.text_content("#help")
    page.keyboard.press("Escape")
    assert page.is_hidden("#help")
    page.click('.card[data-path="raw.dng"]')
    with page.expect_response(lambda r: "/original/raw.dng" in r.url) as answer:
        page.keyboard.press("z")  # 100% loupe: every pixel of the original, the DNG decoded by LibRaw
    assert answer.value.status == 200
    wait_until(page, "document.getElementById('large').naturalWidth === 360")
    page.keyboard.press("z")
    page.keyboard.press("c")  # compare: two frames side by side
    wait_until(
        page, "!document.getElementById('other').hidden && document.getElementById('other').naturalWidth > 0"
    )
    assert " | " in page.text_content("#large-name")
    page.keyboard.press("Escape")
    assert problems == []
    page.close()


def test_a_rating_on_a_pair_goes_to_the_raw_files_sidecar(browser, server: int, shoot: Path) -> None:  # noqa: F811
    page, _ = open_app(browser, server)
    page.click('.card[data-path="pair.jpg"]')
    press(page, "5")
    assert fields(shoot / "pair.dng.xmp") == ("5", None)
    assert not (shoot / "pair.jpg.xmp").exists()
    page.close()


def test_photos_show_while_the_shoot_is_analysed(browser, server: int) -> None:  # noqa: F811
    """While the status says "analysing", the page shows the photos analysed so far under the progress bar."""
    so_far = photos(server)
    so_far["groups"], so_far["provisional"] = so_far["groups"][:3], True
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    polls_left = [12]  # the status says "analysing" this many times, then the real server answers

    def analysing(route) -> None:
        if polls_left[0] <= 0:
            route.continue_()
            return
        polls_left[0] -= 1
        body = {
            "state": "analysing",
            "phase": "analysing",
            "done": 3,
            "total": 18,
            "error": None,
            "folder": "s",
        }
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    def photos_so_far(route) -> None:
        if polls_left[0] > 0:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(so_far))
        else:
            route.continue_()

    page.route("**/api/status", analysing)
    page.route("**/api/photos", photos_so_far)
    page.goto(f"http://127.0.0.1:{server}/")
    page.wait_for_selector("#progress:not([hidden])")
    wait_until(page, "document.querySelectorAll('.card').length === 3")
    assert page.is_visible("#progress")  # still analysing, photos already there
    wait_until(page, "document.getElementById('progress').hidden", 30)
    # the full list is fetched once the status says done: wait for it rather than race it
    wait_until(page, "document.querySelectorAll('.card').length > 3", 30)
    page.close()


def test_auto_advance_moves_on_after_a_rating(browser, server: int, shoot: Path) -> None:  # noqa: F811
    page, _ = open_app(browser, server)
    page.check("#advance")
    page.click('.card[data-path="IMG_1.jpg"]')
    order = card_paths(page)
    press(page, "3")
    assert fields(shoot / "IMG_1.jpg.xmp")[0] == "3"
    assert selected(page) == order[order.index("IMG_1.jpg") + 1]
    press(page, "Control+z", "/api/undo")
    page.select_option("#filter-flag", "unrated")  # rated out of the view: its successor is next, once
    page.wait_for_timeout(200)
    unrated = card_paths(page)
    page.click(f'.card[data-path="{unrated[0]}"]')
    press(page, "2")
    assert selected(page) == unrated[1]
    press(page, "Control+z", "/api/undo")
    page.close()
