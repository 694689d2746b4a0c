"""XMP sidecars: names, ratings and picks read back with an independent XML parse, existing content kept."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from clip_aesthetics.culling.cull import write_sidecars
from clip_aesthetics.culling.xmp import (
    Labels,
    XmpError,
    picked,
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
    after = everything_but(ET.parse(sidecar).getroot(), {f"{XMP}Rating", f"{DK}PickLabel"})
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


def test_review_transitions() -> None:
    assert rejected(Labels(4, 3)) == Labels(-1, 1)
    assert with_stars(Labels(-1, 1), 3) == Labels(3, 0)  # stars clear a reject, as in Lightroom
    assert picked(Labels(-1, 1)) == Labels(0, 3)
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
    report = write_sidecars(rows, reject_duplicates=True)
    assert (report.written, report.kept) == (2, 1)
    assert [rating_in(sidecar_path(p)) for p in paths] == [("5", None), ("-1", "1"), ("2", None)]
    write_sidecars(rows, reject_duplicates=True, overwrite=True)
    assert rating_in(sidecar_path(paths[2])) == ("-1", "1")
