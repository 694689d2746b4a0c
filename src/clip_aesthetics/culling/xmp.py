"""XMP sidecars: read and write star ratings, rejects and picks without losing anything else in them.

- Name: ``NAME.EXT.xmp`` (darktable, digiKam), or the existing ``NAME.xmp`` when there is one (Lightroom,
  Capture One). A new sidecar is ``NAME.EXT.xmp``. Either spelling of the extension's case is found.
- Stars are ``xmp:Rating`` 0-5 (0 = unrated); a reject is ``xmp:Rating="-1"``, which darktable, Lightroom
  and Bridge read as rejected. digiKam's own flag is mirrored in ``digiKam:PickLabel``
  (0 none, 1 rejected, 2 pending, 3 accepted).
- Everything else in an existing sidecar is kept: other fields, keywords, other namespaces and their
  prefixes (darktable's history, Lightroom's develop settings). The value is changed where it is, as an
  attribute or as an element; a field that is not there yet becomes an attribute of the first
  ``rdf:Description``. A sidecar that does not parse is reported and left untouched.
- Writes are atomic; the photo itself is never opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_write_text

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP = "http://ns.adobe.com/xap/1.0/"
DIGIKAM = "http://www.digikam.org/ns/1.0/"
RATING, PICK_LABEL = f"{{{XMP}}}Rating", f"{{{DIGIKAM}}}PickLabel"
PICK_NONE, PICK_REJECTED, PICK_PENDING, PICK_ACCEPTED = 0, 1, 2, 3
_OWN_PREFIXES = {"x": X, "rdf": RDF, "xmp": XMP, "digiKam": DIGIKAM}
for _prefix, _uri in _OWN_PREFIXES.items():  # the prefixes every tool writes, for new sidecars too
    ET.register_namespace(_prefix, _uri)


class XmpError(ValueError):
    """A sidecar that cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class Labels:
    """What a sidecar says about a photo: ``rating`` -1..5 (None: not set), ``pick`` 0..3 (None: not set)."""

    rating: int | None = None
    pick: int | None = None

    @property
    def rejected(self) -> bool:
        return self.rating == -1 or self.pick == PICK_REJECTED

    @property
    def picked(self) -> bool:
        return self.pick == PICK_ACCEPTED and not self.rejected

    @property
    def stars(self) -> int:
        """0-5; 0 for unrated and rejected photos."""
        return self.rating if self.rating and self.rating > 0 else 0

    def to_dict(self) -> dict:
        return {"stars": self.stars, "rejected": self.rejected, "picked": self.picked}


def sidecar_path(image: str | os.PathLike) -> Path:
    """``image``'s sidecar: an existing ``NAME.EXT.xmp``, else an existing ``NAME.xmp``, else the first."""
    image = Path(image)
    for suffix in (".xmp", ".XMP"):
        appended = image.with_name(image.name + suffix)
        if appended.is_file():
            return appended
    for suffix in (".xmp", ".XMP"):
        replaced = image.with_suffix(suffix)
        if replaced.is_file():
            return replaced
    return image.with_name(image.name + ".xmp")


def read_labels(image: str | os.PathLike) -> Labels:
    """The rating and pick label in ``image``'s sidecar; empty labels when there is no sidecar."""
    path = sidecar_path(image)
    if not path.is_file():
        return Labels()
    root = _parse(path)
    return Labels(_int_field(root, RATING, path), _int_field(root, PICK_LABEL, path))


def write_labels(image: str | os.PathLike, labels: Labels) -> Path:
    """Set ``xmp:Rating`` and ``digiKam:PickLabel`` (None removes a field) in ``image``'s sidecar."""
    path = sidecar_path(image)
    root = _parse(path) if path.is_file() else _new_document()
    for tag, value in ((RATING, labels.rating), (PICK_LABEL, labels.pick)):
        _set_field(root, tag, None if value is None else str(value))
    body = ET.tostring(root, encoding="unicode")
    atomic_write_text(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n")
    return path


# Transitions of the review keys, as in Lightroom: stars and a reject are one field (xmp:Rating).
def with_stars(labels: Labels, stars: int) -> Labels:
    if not 0 <= stars <= 5:
        raise ValueError(f"stars go from 0 to 5, not {stars}")
    pick = PICK_NONE if labels.pick == PICK_REJECTED else labels.pick
    return Labels(stars, pick)


def rejected(labels: Labels) -> Labels:
    return Labels(-1, PICK_REJECTED)


def picked(labels: Labels) -> Labels:
    return Labels(0 if labels.rating == -1 else labels.rating, PICK_ACCEPTED)


def unflagged(labels: Labels) -> Labels:
    return Labels(0 if labels.rating == -1 else labels.rating, PICK_NONE)


def _parse(path: Path) -> ET.Element:
    """Parse a sidecar, registering its namespace prefixes so that writing it back keeps them."""
    try:
        for _, (prefix, uri) in ET.iterparse(path, events=("start-ns",)):
            if prefix and _OWN_PREFIXES.get(prefix, uri) == uri:
                with contextlib.suppress(ValueError):  # ElementTree reserves ns0, ns1, ...: it picks one
                    ET.register_namespace(prefix, uri)
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise XmpError(f"{path}: not a readable XMP sidecar ({exc})") from None


def _new_document() -> ET.Element:
    root = ET.Element(f"{{{X}}}xmpmeta", {f"{{{X}}}xmptk": "clip-aesthetics"})
    rdf = ET.SubElement(root, f"{{{RDF}}}RDF")
    ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})
    ET.indent(root, space=" ")
    return root


def _descriptions(root: ET.Element) -> list[ET.Element]:
    found = ([root] if root.tag == f"{{{RDF}}}Description" else []) + root.findall(f".//{{{RDF}}}Description")
    if not found:
        rdf = root if root.tag == f"{{{RDF}}}RDF" else root.find(f".//{{{RDF}}}RDF")
        if rdf is None:
            rdf = ET.SubElement(root, f"{{{RDF}}}RDF")
        found = [ET.SubElement(rdf, f"{{{RDF}}}Description", {f"{{{RDF}}}about": ""})]
    return found


def _int_field(root: ET.Element, tag: str, path: Path) -> int | None:
    for description in root.iter(f"{{{RDF}}}Description"):
        text = description.get(tag)
        element = description.find(tag)
        if text is None and element is not None:
            text = element.text
        if text is not None:
            try:
                return round(float(text.strip()))
            except ValueError:
                raise XmpError(f"{path}: {tag.split('}')[1]} is {text!r}, not a number") from None
    return None


def _set_field(root: ET.Element, tag: str, value: str | None) -> None:
    """Change ``tag`` where it is (attribute or element); add it to the first description if absent."""
    descriptions = _descriptions(root)
    for description in descriptions:
        element = description.find(tag)
        if tag in description.attrib or element is not None:
            if value is None:
                description.attrib.pop(tag, None)
                if element is not None:
                    description.remove(element)
            elif element is not None:
                element.text = value
            else:
                description.set(tag, value)
            return
    if value is not None:
        descriptions[0].set(tag, value)
