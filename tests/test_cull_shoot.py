"""The issue's "done when": a shoot with DNG, HEIC, a RAW+JPEG pair, photos rated and rejected (in sidecars
and embedded), a read-only sidecar and awkward names is culled and served: every photo scored, none of the
photographer's fields changed (read by exiftool before and after), the proposals in the tool's namespace,
and only the photographer's ratings counted for a taste."""

from __future__ import annotations

import csv
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clip_aesthetics.app.session import ReviewSession
from clip_aesthetics.cli import app
from clip_aesthetics.culling.fit_taste import ratings_for
from clip_aesthetics.culling.shoot import shoot_files
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.scorers import ZeroShotScorer
from raw_data import make_dng, make_heic
from test_cli_score import PROMPT_ARGS
from test_culling import detailed, exif_with
from test_xmp import DIGIKAM_REJECT, LIGHTROOM

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool reads the sidecars")
THEIRS = (
    "XMP-xmp:Rating",
    "XMP-xmp:Label",
    "XMP-digiKam:PickLabel",
    "XMP-crs:Exposure2012",
    "XMP-dc:Subject",
)


def read_all(paths: list[Path]) -> dict[str, dict]:
    """Every XMP field exiftool finds in each file, by file name."""
    out = subprocess.run(
        [EXIFTOOL, "-j", "-G1", "-xmp:all", *map(str, paths)], capture_output=True, check=True
    )
    return {Path(entry["SourceFile"]).name: entry for entry in json.loads(out.stdout)}


def theirs(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k in THEIRS}


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    picture = lambda seed: detailed(seed).resize((300, 200))  # noqa: E731
    make_dng(picture(1), folder / "a.dng", taken="2024:05:01 10:00:00")  # a RAW+JPEG pair
    picture(1).save(folder / "a.jpg", exif=exif_with("2024:05:01 10:00:00"))
    (folder / "a.xmp").write_text(LIGHTROOM.replace('xmp:Label="Red"', 'xmp:Label="Red" xmp:Rating="3"'))
    make_dng(picture(2), folder / "c.dng", taken="2024:05:01 10:01:00")
    make_heic(picture(3), folder / "d.HEIC", taken="2024:05:01 10:02:00")
    packet = DIGIKAM_REJECT.replace('xmp:Rating="0"', 'xmp:Rating="4"').replace('digiKam:PickLabel="1"', "")
    picture(4).save(folder / "rocket #4.jpg", xmp=packet.encode())  # rated inside the JPEG
    picture(5).save(folder / "Zoë rejected.jpg")
    (folder / "Zoë rejected.jpg.xmp").write_text(DIGIKAM_REJECT, encoding="utf-8")  # digiKam: 0 + rejected
    picture(6).save(folder / "locked.jpg")
    (folder / "locked.jpg.xmp").write_text(DIGIKAM_REJECT.replace('xmp:Rating="0"', 'xmp:Rating="2"'))
    (folder / "locked.jpg.xmp").chmod(0o444)
    for k in range(3):
        picture(7 + k).save(folder / f"new {k}.jpg")
    return folder


def test_a_real_shoot_is_culled_and_served_without_changing_a_decision(
    shoot: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    sidecars = [shoot / "a.xmp", shoot / "Zoë rejected.jpg.xmp", shoot / "locked.jpg.xmp"]
    before = {name: theirs(fields) for name, fields in read_all(sidecars).items()}
    embedded_before = theirs(read_all([shoot / "rocket #4.jpg"])["rocket #4.jpg"])
    locked_bytes = (shoot / "locked.jpg.xmp").read_bytes()
    out = tmp_path / "groups.csv"
    args = ["cull", str(shoot), "-o", str(out), "--model", tiny_clip_spec, *PROMPT_ARGS, "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--xmp", "--reject-duplicates", "--similarity", "0.999"])
    assert result.exit_code == 0, result.output

    rows = list(csv.DictReader(out.open()))
    names = sorted(Path(r["path"]).name for r in rows)
    assert names == sorted(
        ["a.jpg", "c.dng", "d.HEIC", "rocket #4.jpg", "Zoë rejected.jpg", "locked.jpg"]
        + [f"new {k}.jpg" for k in range(3)]
    )  # every photo scored, the pair once
    after = read_all([*sidecars[:2], shoot / "c.dng.xmp", shoot / "d.HEIC.xmp", shoot / "new 0.jpg.xmp"])
    for sidecar in sidecars[:2]:  # their fields exactly as they were, the proposals beside them
        assert theirs(after[sidecar.name]) == before[sidecar.name]
        assert "XMP-clipaes:Score" in after[sidecar.name] and "XMP-clipaes:Rating" not in after[sidecar.name]
    assert (shoot / "locked.jpg.xmp").read_bytes() == locked_bytes  # read-only: reported, untouched
    assert stat.S_IMODE((shoot / "locked.jpg.xmp").stat().st_mode) == 0o444
    assert theirs(read_all([shoot / "rocket #4.jpg"])["rocket #4.jpg"]) == embedded_before
    assert "XMP-xmp:Rating" not in read_all([shoot / "rocket #4.jpg.xmp"])["rocket #4.jpg.xmp"]
    assert not (shoot / "a.jpg.xmp").exists()  # the pair's rating lives in the RAW's sidecar
    for name in ("c.dng.xmp", "d.HEIC.xmp", "new 0.jpg.xmp"):  # no decision: the machine's, marked
        assert after[name]["XMP-xmp:Rating"] == after[name]["XMP-clipaes:Rating"]

    files, pairs = shoot_files(shoot)
    photos = [(pairs.get(p, p), p) for p in files]
    stars, problems, sources = ratings_for(photos)
    # the photographer's: a.xmp's 3, two digiKam rejects (0 stars), rocket's 4 inside the JPEG
    assert sources == {"sidecar": 3, "embedded": 1, "machine": 5}
    assert not problems and sorted(s for s in stars if s is not None) == [0.0, 0.0, 3.0, 4.0]

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec), PromptGroups(("a good photo",), ("a bad photo",)))
    session = ReviewSession(shoot, scorer, workers=0)
    session._analyse()
    listing = {f["path"]: f for g in session.photos()["groups"] for f in g["frames"]}
    assert sorted(listing) == names
    assert listing["a.jpg"]["stars"] == 3 and listing["a.jpg"]["raw"] == "a.dng"
    assert listing["Zoë rejected.jpg"]["rejected"] and listing["rocket #4.jpg"]["stars"] == 4
