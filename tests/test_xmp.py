"""XMP sidecars: names, ratings and picks read back with an independent XML parse, existing content kept."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from clip_aesthetics.culling.cull import write_sidecars
from clip_aesthetics.culling.xmp import (
    Labels,
    XmpError,
    embedded_rating,
    picked,
    raw_beside,
    read_labels,
    rejected,
    sidecar_path,
    unflagged,
    with_stars,
    write_labels,
)

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
XMP = "{http://ns.adobe.com/xap/1.0/}"
DK = "{http://www.digikam.org/ns/1.0/}"
NS = "{http://ns.clip-aesthetics.org/xmp/1.0/}"

DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2024:05:01 10:00:00.250"
   xmp:Rating="1"
   xmpMM:DerivedFrom="IMG_0001.CR3"
   darktable:xmp_version="5"
   darktable:history_end="2">
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:num="0" darktable:operation="rawprepare" darktable:enabled="1"/>
     <rdf:li darktable:num="1" darktable:operation="exposure" darktable:enabled="1"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
   xmp:Label="Red"
   crs:Exposure2012="+0.35"
   photoshop:DateCreated="2024-05-01T10:00:00.25">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Tatras</rdf:li>
     <rdf:li>Zoë</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def everything_but(root: ET.Element, skip: set[str]) -> list:
    """Every element's tag, attributes (less ``skip``) and text, in document order: what must survive."""
    return [
        (e.tag, sorted((k, v) for k, v in e.attrib.items() if k not in skip), (e.text or "").strip())
        for e in root.iter()
        if e.tag not in skip
    ]


def rating_in(path: Path) -> tuple[str | None, str | None]:
    """xmp:Rating and digiKam:PickLabel by an independent parse (attributes or elements)."""
    values = {}
    for description in ET.parse(path).getroot().iter(f"{RDF}Description"):
        for tag in (f"{XMP}Rating", f"{DK}PickLabel"):
            element = description.find(tag)
            value = description.get(tag, element.text if element is not None else None)
            if value is not None:
                values.setdefault(tag, value)
    return values.get(f"{XMP}Rating"), values.get(f"{DK}PickLabel")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "IMG_0001.JPG"
    path.write_bytes(b"\xff\xd8 not decoded here")
    return path


def test_new_sidecar_is_name_ext_xmp(image: Path) -> None:
    assert read_labels(image) == Labels()
    written = write_labels(image, Labels(4, None))
    assert written == image.with_name("IMG_0001.JPG.xmp")
    assert rating_in(written) == ("4", None)
    assert ET.parse(written).getroot().tag == "{adobe:ns:meta/}xmpmeta"
    assert image.read_bytes() == b"\xff\xd8 not decoded here"  # the photo is never touched


def test_darktable_sidecar_keeps_history_and_prefixes(image: Path) -> None:
    sidecar = image.with_name("IMG_0001.JPG.xmp")
    sidecar.write_text(DARKTABLE, encoding="utf-8")
    before = everything_but(ET.parse(sidecar).getroot(), {f"{XMP}Rating"})
    assert read_labels(image) == Labels(1, None)
    write_labels(image, rejected(read_labels(image)))
    assert rating_in(sidecar) == ("-1", "1")
    after = everything_but(
        ET.parse(sidecar).getroot(), {f"{XMP}Rating", f"{DK}PickLabel", f"{NS}RejectedStars"}
    )
    assert after == before
    text = sidecar.read_text(encoding="utf-8")
    assert "darktable:history" in text and 'darktable:operation="exposure"' in text  # prefixes kept
    assert sorted(p.name for p in image.parent.iterdir()) == ["IMG_0001.JPG", "IMG_0001.JPG.xmp"]


def test_lightroom_name_xmp_is_used_when_it_exists(image: Path) -> None:
    sidecar = image.with_suffix(".xmp")
    sidecar.write_text(LIGHTROOM, encoding="utf-8")
    before = everything_but(ET.parse(sidecar).getroot(), set())
    assert sidecar_path(image) == sidecar
    write_labels(image, with_stars(read_labels(image), 5))
    assert rating_in(sidecar) == ("5", None)
    assert everything_but(ET.parse(sidecar).getroot(), {f"{XMP}Rating"}) == before
    subjects = [li.text for li in ET.parse(sidecar).getroot().iter(f"{RDF}li")]
    assert subjects == ["Tatras", "Zoë"]
    assert not image.with_name("IMG_0001.JPG.xmp").exists()


def test_rating_written_as_an_element_is_changed_in_place(image: Path) -> None:
    sidecar = image.with_name("IMG_0001.JPG.XMP")  # the upper-case extension is found too
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"><xmp:Rating>2</xmp:Rating>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>",
        encoding="utf-8",
    )
    assert read_labels(image).rating == 2
    write_labels(image, picked(read_labels(image)))
    root = ET.parse(sidecar).getroot()
    description = next(root.iter(f"{RDF}Description"))
    assert description.find(f"{XMP}Rating").text == "2" and f"{XMP}Rating" not in description.attrib
    assert rating_in(sidecar) == ("2", "3")


def test_review_transitions_keep_stars_under_a_reject_as_lightroom() -> None:
    assert rejected(Labels(4, 3)) == Labels(-1, 1, held_stars=4)
    assert unflagged(rejected(Labels(4, None))) == Labels(4, 0)  # X then U: the stars come back
    assert picked(rejected(Labels(2, None))) == Labels(2, 3)
    on_reject = with_stars(Labels(-1, 1), 3)  # a star key on a reject: still rejected, stars kept under it
    assert on_reject.rejected and on_reject.stars == 3 and unflagged(on_reject) == Labels(3, 0)
    assert unflagged(Labels(-1, 1)) == Labels(0, 0) and unflagged(Labels(5, 3)) == Labels(5, 0)
    assert Labels(5, 3).picked and Labels(-1, None).rejected and Labels(None, 1).rejected
    with pytest.raises(ValueError, match="0 to 5"):
        with_stars(Labels(), 6)


def test_a_broken_sidecar_is_reported_and_left_alone(tmp_path: Path) -> None:
    good, bad = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for path in (good, bad):
        path.write_bytes(b"x")
    broken = tmp_path / "b.jpg.xmp"
    broken.write_text("<x:xmpmeta unclosed", encoding="utf-8")
    with pytest.raises(XmpError, match=r"b\.jpg\.xmp"):
        read_labels(bad)
    rows = [{"path": str(p), "best": True, "stars": 4} for p in (bad, good)]
    report = write_sidecars(rows)
    assert report.written == 1 and len(report.errors) == 1 and "b.jpg.xmp" in report.errors[0]["error"]
    assert broken.read_text(encoding="utf-8") == "<x:xmpmeta unclosed"
    assert rating_in(tmp_path / "a.jpg.xmp") == ("4", None)


def test_cull_sidecars_keep_the_photographers_ratings(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.jpg" for name in ("best", "dup", "mine")]
    for path in paths:
        path.write_bytes(b"x")
    write_labels(paths[2], Labels(2, None))
    rows = [
        {"path": str(paths[0]), "best": True, "stars": 5},
        {"path": str(paths[1]), "best": False, "stars": 4},
        {"path": str(paths[2]), "best": False, "stars": 1},
    ]
    rows = [{**row, "score": 5.0, "group": 1, "flags": ""} for row in rows]
    report = write_sidecars(rows, reject_duplicates=True)
    assert (report.written, report.kept) == (2, 1)
    assert [rating_in(sidecar_path(p)) for p in paths] == [("5", None), ("-1", "1"), ("2", None)]
    report = write_sidecars(rows, reject_duplicates=True, overwrite=True)
    assert rating_in(sidecar_path(paths[2])) == ("-1", "1") and report.replaced == 1


# --- the photographer's decisions (issue 17 points 1-4, 7; issue 18 point 8) ---------------------------
EXIFTOOL, EXIV2 = shutil.which("exiftool"), shutil.which("exiv2")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed")
needs_exiv2 = pytest.mark.skipif(EXIV2 is None, reason="exiv2 is not installed")

DIGIKAM_REJECT = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmp:Rating="0"
   xmp:Label="Red"
   digiKam:PickLabel="1">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Zoë</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def exiftool_fields(path: Path) -> dict:
    """Every XMP field exiftool reads from ``path`` (group:name -> value)."""
    out = subprocess.run([EXIFTOOL, "-j", "-G1", "-xmp:all", str(path)], capture_output=True, check=True)
    return {k: v for k, v in json.loads(out.stdout)[0].items() if k.startswith("XMP-")}


def row_for(path: Path, stars: int, best: bool = True) -> dict:
    return {"path": str(path), "best": best, "stars": stars, "score": 6.5, "group": 3, "flags": "soft"}


@needs_exiftool
def test_a_digikam_reject_on_a_best_frame_stays_rejected_byte_for_byte(image: Path) -> None:
    sidecar = image.with_name("IMG_0001.JPG.xmp")
    sidecar.write_text(DIGIKAM_REJECT, encoding="utf-8")
    before = exiftool_fields(sidecar)
    report = write_sidecars([row_for(image, 5)], reject_duplicates=True, model="zeroshot ViT-B-32:test")
    assert (report.kept, report.written) == (1, 0)
    after = exiftool_fields(sidecar)
    for field in ("XMP-xmp:Rating", "XMP-xmp:Label", "XMP-digiKam:PickLabel", "XMP-dc:Subject"):
        assert after[field] == before[field]
    assert after["XMP-clipaes:Stars"] == 5 and after["XMP-clipaes:Score"] == 6.5
    assert after["XMP-clipaes:Model"] == "zeroshot ViT-B-32:test" and "XMP-clipaes:Rating" not in after
    text = sidecar.read_text(encoding="utf-8")  # only additions: every original line is still there
    assert text.startswith('<?xpacket begin="\ufeff"') and text.rstrip().endswith('<?xpacket end="w"?>')
    original = [line for line in DIGIKAM_REJECT.splitlines() if "digiKam:PickLabel" not in line]
    kept = [line for line in text.splitlines() if "digiKam:PickLabel" not in line and "clipaes" not in line]
    assert kept == original
    assert (
        '   digiKam:PickLabel="1"' in text
    )  # the line as it was, the proposals on lines of their own after it


@needs_exiftool
def test_machine_ratings_are_marked_and_a_later_human_change_is_kept(image: Path) -> None:
    write_sidecars([row_for(image, 3)])
    sidecar = image.with_name("IMG_0001.JPG.xmp")
    fields = exiftool_fields(sidecar)
    assert fields["XMP-xmp:Rating"] == 3 and fields["XMP-clipaes:Rating"] == 3
    assert read_labels(image).machine and not read_labels(image).decided
    report = write_sidecars([row_for(image, 5)])  # a second cull updates its own proposal
    assert report.written == 1 and exiftool_fields(sidecar)["XMP-xmp:Rating"] == 5
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP-xmp:Rating=2", str(sidecar)], check=True)
    assert read_labels(image).decided  # the photographer changed it in another program: theirs now
    report = write_sidecars([row_for(image, 5)])
    assert report.kept == 1 and exiftool_fields(sidecar)["XMP-xmp:Rating"] == 2


@needs_exiv2
def test_exiv2_reads_what_we_write(image: Path) -> None:
    write_sidecars([row_for(image, 4, best=False)], reject_duplicates=True, model="m")
    out = subprocess.run([EXIV2, "-px", str(image.with_name("IMG_0001.JPG.xmp"))], capture_output=True)
    values = {line.split()[0]: line.split()[-1] for line in out.stdout.decode().splitlines()}
    assert values["Xmp.xmp.Rating"] == "-1" and values["Xmp.digiKam.PickLabel"] == "1"
    assert values["Xmp.clipaes.Rating"] == "-1" and values["Xmp.clipaes.Stars"] == "4"


def test_a_rewrite_changes_only_the_value(image: Path) -> None:
    sidecar = image.with_name("IMG_0001.JPG.xmp")
    sidecar.write_text(DARKTABLE, encoding="utf-8")
    write_labels(image, with_stars(read_labels(image), 4))
    assert sidecar.read_text(encoding="utf-8") == DARKTABLE.replace('xmp:Rating="1"', 'xmp:Rating="4"')


def test_read_only_sidecars_and_folders_are_errors_naming_the_sidecar(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_text(DARKTABLE, encoding="utf-8")
    sidecar.chmod(0o444)
    with pytest.raises(XmpError, match=r"a\.jpg\.xmp: the sidecar is read-only"):
        write_labels(image, Labels(5, None))
    assert sidecar.read_text(encoding="utf-8") == DARKTABLE and stat.S_IMODE(sidecar.stat().st_mode) == 0o444
    sidecar.chmod(0o640)  # a writable sidecar keeps its own mode after the rewrite
    write_labels(image, Labels(5, None))
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o640 and rating_in(sidecar) == ("5", None)
    if os.geteuid() == 0:
        return  # root may write into a read-only folder
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"x")
    folder.chmod(0o555)
    try:
        report = write_sidecars([row_for(folder / "b.jpg", 4), row_for(image, 2)])
    finally:
        folder.chmod(0o755)
    assert report.written == 1 and len(report.errors) == 1
    assert "b.jpg.xmp: cannot write the sidecar (its folder is not writable)" in report.errors[0]["error"]
    assert os.listdir(folder) == ["b.jpg"]


@pytest.mark.parametrize("value", ["Infinity", "1e999", "NaN", "7", "-2"])
def test_non_finite_or_out_of_range_ratings_are_errors_naming_the_file(tmp_path: Path, value: str) -> None:
    bad, good = tmp_path / "bad.jpg", tmp_path / "good.jpg"
    for path in (bad, good):
        path.write_bytes(b"x")
    text = DARKTABLE.replace('xmp:Rating="1"', f'xmp:Rating="{value}"')
    (tmp_path / "bad.jpg.xmp").write_text(text, encoding="utf-8")
    with pytest.raises(XmpError, match=r"bad\.jpg\.xmp: xmp:Rating is"):
        read_labels(bad)
    report = write_sidecars([row_for(bad, 4), row_for(good, 4)])  # the rest of the batch is done
    assert report.written == 1 and "bad.jpg.xmp" in report.errors[0]["error"]
    assert (tmp_path / "bad.jpg.xmp").read_text(encoding="utf-8") == text


def test_ratings_embedded_in_jpeg_png_and_exif_are_the_photographers(tmp_path: Path) -> None:
    packet = DARKTABLE.replace('xmp:Rating="1"', 'xmp:Rating="4"').encode()
    jpeg, png, tagged = tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.jpg"
    Image.new("RGB", (8, 8)).save(jpeg, xmp=packet)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode())
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    exif = Image.Exif()
    exif[0x4746] = 2  # EXIF Rating, as Windows writes it
    Image.new("RGB", (8, 8)).save(tagged, exif=exif)
    assert [embedded_rating(p) for p in (jpeg, png, tagged)] == [4, 4, 2]
    labels = read_labels(jpeg)
    assert labels.rating == 4 and labels.source == "embedded" and labels.decided
    report = write_sidecars([row_for(jpeg, 1)])  # kept: no xmp:Rating in a new sidecar shadows it
    assert report.kept == 1 and rating_in(tmp_path / "a.jpg.xmp") == (None, None)


def test_a_jpeg_beside_a_raw_never_uses_the_raws_name_xmp(tmp_path: Path) -> None:
    raw, jpeg = tmp_path / "a.NEF", tmp_path / "a.JPG"
    for path in (raw, jpeg):
        path.write_bytes(b"x")
    (tmp_path / "a.xmp").write_text(LIGHTROOM, encoding="utf-8")  # Lightroom's sidecar of a.NEF
    assert raw_beside(jpeg) == raw and sidecar_path(raw) == tmp_path / "a.xmp"
    assert sidecar_path(jpeg) == tmp_path / "a.JPG.xmp"
    report = write_sidecars([{**row_for(jpeg, 5), "raw": str(raw)}])  # a pair: rated in the RAW's sidecar
    assert report.written == 1 and rating_in(tmp_path / "a.xmp") == ("5", None)
    assert not (tmp_path / "a.JPG.xmp").exists()


def test_an_old_adobe_prefix_is_read_and_changed_in_place(image: Path) -> None:
    """Bridge and old Lightroom versions wrote the xmp namespace as ``xap:``: one field, another prefix."""
    sidecar = image.with_name("IMG_0001.JPG.xmp")
    text = DARKTABLE.replace('xmlns:xmp="', 'xmlns:xap="').replace("xmp:Rating", "xap:Rating")
    sidecar.write_text(text, encoding="utf-8")
    assert read_labels(image).rating == 1
    write_labels(image, with_stars(read_labels(image), 3))
    assert sidecar.read_text(encoding="utf-8") == text.replace('xap:Rating="1"', 'xap:Rating="3"')


def test_a_rating_lightroom_wrote_into_a_dng_is_the_photographers(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    import numpy as np

    packet = DARKTABLE.replace('xmp:Rating="1"', 'xmp:Rating="5"').encode()
    path = tmp_path / "a.dng"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), extratags=[(700, "B", len(packet), packet, True)])
    assert embedded_rating(path) == 5 and read_labels(path).decided
    (tmp_path / "b.NEF").write_bytes(b"II*\x00")  # other RAW files are never written by editors: not read
    assert embedded_rating(tmp_path / "b.NEF") is None
