"""`clip-aesthetics cull` end to end on a shoot with bursts, a blurred frame, a broken file and sidecars."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.culling import shoot as shoot_module
from test_cli_score import PROMPT_ARGS
from test_culling import detailed, exif_with, motion_blurred

COLUMNS = ["path", "group", "group_size", "best", "rank_in_group", "score", "stars", "sharpness"]
RATING = "{http://ns.adobe.com/xap/1.0/}Rating"


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    """Three scenes, three frames each, one second apart; the middle frame of each is motion-blurred."""
    folder = tmp_path / "shoot"
    folder.mkdir()
    for scene in range(3):
        sharp = detailed(10 + scene)
        for k in range(3):
            frame = motion_blurred(sharp) if k == 1 else sharp
            noisy = np.asarray(frame).astype(float) + np.random.default_rng(k).normal(0, 2, (600, 900, 3))
            stamp = f"2024:05:01 10:{scene:02d}:{k:02d}"  # scenes a minute apart
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            image.save(folder / f"s{scene}_{k}.jpg", exif=exif_with(stamp), quality=95)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    outside = tmp_path / "outside.jpg"
    detailed(99).save(outside)
    (folder / "link.jpg").symlink_to(outside)  # leads out of the shoot: not part of it
    return folder


def cull(shoot: Path, out: Path, model: str, *extra: str):
    args = ["cull", str(shoot), "-o", str(out), "--model", model, *PROMPT_ARGS, "--workers", "0", *extra]
    return CliRunner().invoke(app, args)


def test_cull_groups_bursts_and_picks_sharp_frames(shoot: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    out = tmp_path / "groups.csv"
    result = cull(
        shoot, out, tiny_clip_spec, "--similarity", "0.5", "--max-gap", "5", "--xmp", "--reject-duplicates"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    assert {"flags", "highlights_clipped", "shadows_clipped", "capture_time", "capture_source"} <= set(
        rows[0]
    )
    assert len(rows) == 9 and not any("link" in r["path"] for r in rows)
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(Path(row["path"]).stem)
    assert sorted(sorted(g) for g in groups.values()) == [[f"s{s}_{k}" for k in range(3)] for s in range(3)]
    for row in rows:
        assert (row["best"] == "True") == (row["rank_in_group"] == "1")
        if row["path"].endswith("_1.jpg"):  # blurred: flagged, never the best
            assert row["best"] == "False" and "soft" in row["flags"].split(";")
        assert row["capture_source"] == "exif" and row["capture_time"].startswith("2024-05-01T10:")
    best = [r for r in rows if r["best"] == "True"]
    assert [float(r["score"]) for r in best] == sorted((float(r["score"]) for r in best), reverse=True)
    errors = list(csv.DictReader((tmp_path / "groups.errors.csv").open()))
    assert [Path(e["path"]).name for e in errors] == ["broken.jpg"]
    for row in rows:  # stars for the best frames, rejects for the others
        root = ET.parse(row["path"] + ".xmp").getroot()
        rating = next(root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")).get(RATING)
        assert rating == (row["stars"] if row["best"] == "True" else "-1")


def test_cull_reopens_from_the_cache(shoot: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert cull(shoot, first, tiny_clip_spec).exit_code == 0

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached shoot is not decoded again")

    monkeypatch.setattr(shoot_module, "iter_batches", no_decoding)
    result = cull(shoot, second, tiny_clip_spec)
    assert result.exit_code == 0, result.output
    assert first.read_text() == second.read_text()
    monkeypatch.undo()
    detailed(50).save(shoot / "new.jpg")  # one new photo: only it is analysed
    analysed = []
    real = shoot_module.iter_batches
    monkeypatch.setattr(
        shoot_module, "iter_batches", lambda s, *a, **k: analysed.extend(s) or real(s, *a, **k)
    )
    assert cull(shoot, second, tiny_clip_spec).exit_code == 0
    assert [Path(p).name for p in analysed] == ["new.jpg"]
    assert len(list(csv.DictReader(second.open()))) == 10


def test_cull_usage_errors(shoot: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    result = cull(shoot, tmp_path / "g.csv", tiny_clip_spec, "--reject-duplicates")
    assert result.exit_code == 2 and "--xmp" in result.output
    for bad in ("groups.txt", "."):  # a format we do not write, a folder: refused before any work
        result = cull(shoot, tmp_path / bad, tiny_clip_spec)
        assert result.exit_code == 2 and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["taste", "fit", str(shoot), "-o", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and ".safetensors" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cull(empty, tmp_path / "g.csv", tiny_clip_spec).exit_code == 1
    assert not list(shoot.glob("*.xmp"))


def test_export_copies_the_picks_with_their_raw_files_and_sidecars(
    shoot: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    from clip_aesthetics.culling.xmp import Labels, write_labels
    from raw_data import make_dng

    make_dng(detailed(10).resize((300, 200)), shoot / "s0_1.dng")  # the RAW of the blurred s0_1.jpg
    write_labels(shoot / "s0_1.dng", Labels(5, None))  # the photographer loves it anyway: theirs decides
    write_labels(shoot / "s1_0.jpg", Labels(-1, 1))  # rejected by the photographer: never exported
    picks = tmp_path / "picks"
    out = tmp_path / "g.csv"
    result = cull(shoot, out, tiny_clip_spec, "--similarity", "0.5", "--xmp", "--export", str(picks))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    expected = {"s0_1.jpg", "s0_1.dng", "s0_1.dng.xmp"}  # the pick, its RAW file, the RAW's sidecar
    for row in rows:  # best frames proposed at 4-5 stars, never rejected by the photographer
        name = Path(row["path"]).name
        if row["best"] == "True" and int(row["stars"]) >= 4 and name != "s1_0.jpg":
            expected |= {name, f"{name}.xmp"}
    assert {p.relative_to(picks).as_posix() for p in picks.rglob("*") if p.is_file()} == expected
    assert (shoot / "s0_1.dng").is_file() and (picks / "s0_1.dng").read_bytes() == (
        shoot / "s0_1.dng"
    ).read_bytes()
    again = cull(
        shoot, out, tiny_clip_spec, "--similarity", "0.5", "--export", str(picks)
    )  # never overwrites
    assert again.exit_code == 0 and (picks / "s0_1.dng").is_file()
    inside = cull(shoot, out, tiny_clip_spec, "--export", str(shoot / "picks"))
    assert inside.exit_code == 2 and not (shoot / "picks").exists()


def test_export_can_move_and_reports_what_it_cannot(tmp_path: Path) -> None:
    from clip_aesthetics.culling.export import export_picks

    root, picks = tmp_path / "shoot", tmp_path / "picks"
    (root / "day").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (root / "day" / name).write_bytes(name.encode())
    (picks / "day").mkdir(parents=True)
    (picks / "day" / "b.jpg").write_bytes(b"already here")
    rows = [{"path": str(root / "day" / n), "raw": "", "best": True, "stars": 5} for n in ("a.jpg", "b.jpg")]
    report = export_picks(rows, root, picks, move=True)
    assert (report.picks, report.files) == (2, 1) and "b.jpg: already exists" in report.errors[0]
    assert (picks / "day" / "a.jpg").read_bytes() == b"a.jpg" and not (root / "day" / "a.jpg").exists()
    assert (picks / "day" / "b.jpg").read_bytes() == b"already here" and (root / "day" / "b.jpg").exists()


def test_cull_takes_names_that_are_not_utf8(tmp_path: Path, tiny_clip_spec: str) -> None:
    import os

    folder = tmp_path / "shoot"
    folder.mkdir()
    raw_name = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 byte: not UTF-8
    detailed(5).resize((300, 200)).save(folder / raw_name)
    detailed(6).resize((300, 200)).save(folder / "plain.jpg")
    out = tmp_path / "g.csv"
    result = cull(folder, out, tiny_clip_spec, "--xmp")
    assert result.exit_code == 0, result.output
    names = sorted(Path(r["path"]).name for r in csv.DictReader(out.open(encoding="utf-8")))
    assert names == ["caf\\xe9.jpg", "plain.jpg"]  # written as text, as every output writes such names
    assert os.fsencode(raw_name + ".xmp") in os.listdir(os.fsencode(folder))
