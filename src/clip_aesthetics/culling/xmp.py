"""XMP sidecars: the photographer's ratings read, the tool's proposals written beside them, nothing else lost.

- Name: ``NAME.EXT.xmp`` (darktable, digiKam), or the existing ``NAME.xmp`` (Lightroom, Capture One). A new
  sidecar is ``NAME.EXT.xmp``. Either spelling of the extension's case is found. ``NAME.xmp`` belongs to the
  RAW file of a RAW+JPEG pair (that is how Lightroom and Capture One name it), so a JPEG beside a RAW never
  uses it; the pair is one photo and is rated in the RAW's sidecar (see ``culling/shoot.py``).
- Stars are ``xmp:Rating`` 0-5 (0 = unrated); a reject is ``xmp:Rating="-1"``, which darktable, Lightroom
  and Bridge read as rejected. digiKam's own flag is mirrored in ``digiKam:PickLabel``
  (0 none, 1 rejected, 2 pending, 3 accepted).
- What the tool proposes lives in its own namespace (:data:`NS`, prefix ``clipaes``): ``Score``, ``Stars``,
  ``Group``, ``Best``, ``Flags``, ``Model``. When it also writes ``xmp:Rating`` (only where the photographer
  has none) it records the value in ``clipaes:Rating``: a rating equal to that mark is the machine's, any
  other rating is the photographer's (they changed it since), so a second cull or ``taste fit`` can tell.
  ``clipaes:RejectedStars`` remembers the stars of a photo rejected in the review app, so that un-rejecting
  it gives them back (as Lightroom keeps stars and flags apart).
- Rewrites change the text of the sidecar only where a value changes: every other byte (the ``<?xpacket?>``
  wrapper, namespace declarations where they were, other fields, whitespace) stays as it was. Each rewrite
  is parsed back before it replaces the file. A sidecar that does not parse is reported and left untouched;
  a read-only sidecar is an error naming it, and a rewritten sidecar keeps its file mode.
- Ratings embedded in the photo (the XMP packet of a JPEG, PNG, TIFF or HEIC, or EXIF's Rating tag, where
  Lightroom and Windows write them) count as the photographer's when the sidecar has none.
- The photo itself is never opened for writing.
"""

from __future__ import annotations

import functools
import math
import os
import re
import stat
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..constants import RAW_EXTENSIONS
from ..fileio import atomic_path

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP = "http://ns.adobe.com/xap/1.0/"
DIGIKAM = "http://www.digikam.org/ns/1.0/"
NS = "http://ns.clip-aesthetics.org/xmp/1.0/"  # the tool's own fields (a name, never fetched)
PREFERRED_PREFIX = {XMP: "xmp", DIGIKAM: "digiKam", NS: "clipaes", RDF: "rdf", X: "x"}
PICK_NONE, PICK_REJECTED, PICK_PENDING, PICK_ACCEPTED = 0, 1, 2, 3
EXIF_RATING = 0x4746  # IFD0 "Rating" (Windows, Lightroom)
PROPOSAL_FIELDS = ("Score", "Stars", "Group", "Best", "Flags", "Model")

NEW_SIDECAR = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="clip-aesthetics">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    "  <rdf:Description\n"
    '    rdf:about=""/>\n'
    " </rdf:RDF>\n"
    "</x:xmpmeta>\n"
    '<?xpacket end="w"?>\n'
)


class XmpError(ValueError):
    """A sidecar that cannot be read or written; the message names the file and the reason."""


@dataclass(frozen=True)
class Labels:
    """What is known about a photo's rating.

    ``rating`` -1..5 (None: not set) and ``pick`` 0..3 (None: not set) as the sidecar (or the photo)
    holds them; ``machine_rating`` the ``xmp:Rating`` value the tool wrote itself (``clipaes:Rating``);
    ``held_stars`` the stars kept under a reject; ``source`` where the rating was read (``sidecar``,
    ``embedded``, or None).
    """

    rating: int | None = None
    pick: int | None = None
    machine_rating: int | None = None
    held_stars: int | None = None
    source: str | None = field(default=None, compare=False)  # where it was read; not part of the value

    @property
    def machine(self) -> bool:
        """The rating is the one the tool wrote, unchanged since."""
        return self.rating is not None and self.rating == self.machine_rating

    @property
    def decided(self) -> bool:
        """The photographer rated, rejected or labelled this photo (anything not the machine's)."""
        if self.machine:
            return False
        return self.rating is not None or self.pick in (PICK_REJECTED, PICK_PENDING, PICK_ACCEPTED)

    @property
    def rejected(self) -> bool:
        return self.rating == -1 or self.pick == PICK_REJECTED

    @property
    def picked(self) -> bool:
        return self.pick == PICK_ACCEPTED and not self.rejected

    @property
    def stars(self) -> int:
        """0-5: the rating's stars; a rejected photo shows the stars it had (``held_stars``)."""
        if self.rejected:
            return self.held_stars or 0
        return self.rating if self.rating and self.rating > 0 else 0

    def to_dict(self) -> dict:
        return {
            "stars": self.stars,
            "rejected": self.rejected,
            "picked": self.picked,
            "machine": self.machine,
        }


# --- names ------------------------------------------------------------------------------------------
def is_raw(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in RAW_EXTENSIONS


def raw_beside(image: str | os.PathLike) -> Path | None:
    """The RAW file with ``image``'s stem in its folder (a RAW+JPEG pair), if there is one."""
    image = Path(image)
    if is_raw(image):
        return None
    try:
        listed = _raw_files(os.fspath(image.parent), os.stat(image.parent).st_mtime_ns)
    except OSError:
        return None
    found = listed.get(image.stem)
    return image.with_name(found) if found else None


@functools.lru_cache(maxsize=64)
def _raw_files(folder: str, mtime_ns: int) -> dict[str, str]:
    """stem -> the (first) RAW file name with that stem in ``folder``; listed once per folder state (its
    mtime changes when files come or go), not once per photo."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        if Path(name).suffix.lower() in RAW_EXTENSIONS:
            found.setdefault(Path(name).stem, name)
    return found


def sidecar_path(image: str | os.PathLike) -> Path:
    """``image``'s sidecar: ``NAME.EXT.xmp`` if it exists, else ``NAME.xmp`` if it exists and no RAW file
    beside ``image`` owns it, else a new ``NAME.EXT.xmp``."""
    image = Path(image)
    for suffix in (".xmp", ".XMP"):
        appended = image.with_name(image.name + suffix)
        if appended.is_file():
            return appended
    if is_raw(image) or raw_beside(image) is None:
        for suffix in (".xmp", ".XMP"):
            replaced = image.with_suffix(suffix)
            if replaced.is_file():
                return replaced
    return image.with_name(image.name + ".xmp")


# --- reading ----------------------------------------------------------------------------------------
def read_sidecar(image: str | os.PathLike) -> Labels:
    """The labels in ``image``'s sidecar only; empty labels when there is none."""
    path = sidecar_path(image)
    if not path.is_file():
        return Labels()
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise XmpError(f"{path}: not a readable XMP sidecar (not UTF-8)") from None
    except OSError as exc:
        raise XmpError(f"{path}: cannot be read ({exc.strerror})") from None
    return _labels(_parse_text(text, path), path, "sidecar")


def read_labels(image: str | os.PathLike, photo: str | os.PathLike | None = None) -> Labels:
    """The sidecar's labels; where the sidecar has no rating, the rating embedded in the photo.

    ``photo`` is the file whose embedded rating counts when it is not ``image`` (the JPEG of a RAW+JPEG
    pair, whose sidecar is the RAW file's).
    """
    labels = read_sidecar(image)
    if labels.rating is not None:
        return labels
    embedded = embedded_rating(image if photo is None else photo)
    return labels if embedded is None else replace(labels, rating=embedded, source="embedded")


def embedded_rating(image: str | os.PathLike) -> int | None:
    """``xmp:Rating`` from the photo's own XMP packet, else EXIF's Rating tag; None when neither."""
    from PIL import Image

    try:
        if is_raw(image):  # editors keep RAW files untouched, except DNG (Lightroom writes its XMP there)
            packet, exif = (
                (_dng_packet(image), None) if Path(image).suffix.lower() == ".dng" else (None, None)
            )
        else:
            with Image.open(image) as opened:
                packet = _xmp_packet(opened)
                exif = opened.getexif().get(EXIF_RATING)
    except Exception:  # an unreadable photo is reported by the image pipeline, not here
        return None
    if packet:
        text = packet.decode("utf-8", "replace") if isinstance(packet, bytes) else str(packet)
        try:
            rating = _labels(_parse_text(text.strip("\x00 \n"), Path(image)), Path(image), "embedded").rating
        except XmpError:
            rating = None
        if rating is not None:
            return rating
    return _checked(exif, -1, 5, Path(image), "EXIF Rating") if exif is not None else None


def _xmp_packet(opened) -> bytes | str | None:
    """The XMP packet PIL found: JPEG, WebP and HEIC keep it in ``info["xmp"]``, PNG in an iTXt chunk,
    TIFF in tag 700."""
    packet = opened.info.get("xmp") or opened.info.get("XML:com.adobe.xmp")
    tags = getattr(opened, "tag_v2", None)
    return packet or (tags.get(700) if tags is not None else None)


def _dng_packet(path: str | os.PathLike) -> bytes | None:
    """The XMP packet (tag 700) of a DNG's first IFD, wherever in the file it lies."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None:
            return None
        handle.seek(struct.unpack(f"{order}I", head[4:8])[0])
        (count,) = struct.unpack(f"{order}H", handle.read(2))
        for _ in range(min(count, 4096)):
            tag, kind, length, value = struct.unpack(f"{order}HHI4s", handle.read(12))
            if tag == 700 and kind in (1, 7) and length <= 1 << 24:  # BYTE or UNDEFINED
                if length <= 4:
                    return value[:length]
                handle.seek(struct.unpack(f"{order}I", value)[0])
                return handle.read(length)
    return None


def _parse_text(text: str, path: Path) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmpError(f"{path}: not a readable XMP sidecar ({exc})") from None


def _labels(root: ET.Element, path: Path, source: str) -> Labels:
    rating = _value(root, XMP, "Rating", path, -1, 5)
    return Labels(
        rating,
        _value(root, DIGIKAM, "PickLabel", path, 0, 3),
        _value(root, NS, "Rating", path, -1, 5),
        _value(root, NS, "RejectedStars", path, 0, 5),
        source if rating is not None else None,
    )


def _value(root: ET.Element, uri: str, local: str, path: Path, low: int, high: int) -> int | None:
    """An integer field (attribute or element of any description), checked to be finite and in range."""
    tag = f"{{{uri}}}{local}"
    for description in root.iter(f"{{{RDF}}}Description"):
        text = description.get(tag)
        element = description.find(tag)
        if text is None and element is not None:
            text = element.text or ""
        if text is not None:
            return _checked(text, low, high, path, f"{PREFERRED_PREFIX[uri]}:{local}")
    return None


def _checked(text: object, low: int, high: int, path: Path, name: str) -> int:
    """``text`` as an integer in ``low..high``; an XmpError naming the file otherwise (NaN, 1e999, 7)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise XmpError(f"{path}: {name} is {text!r}, not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise XmpError(f"{path}: {name} is {text!r}, not a number from {low} to {high}")
    return round(value)


# --- writing ----------------------------------------------------------------------------------------
def write_labels(
    image: str | os.PathLike,
    labels: Labels,
    *,
    machine: bool = False,
    proposal: dict | None = None,
    ratings: bool = True,
) -> Path:
    """Write ``labels`` (and the tool's ``proposal``) into ``image``'s sidecar, changing nothing else.

    Args:
        labels: ``xmp:Rating`` and ``digiKam:PickLabel`` (None removes a field) and the held stars.
        machine: the rating is the tool's proposal: marked as such in ``clipaes:Rating``; otherwise the
            mark is removed (the rating is a person's decision).
        proposal: ``clipaes`` fields (see :data:`PROPOSAL_FIELDS`) to set.
        ratings: False leaves ``xmp:Rating``, ``digiKam:PickLabel`` and the marks as they are (only the
            proposal is written): the photographer's decision is theirs.
    """
    path = sidecar_path(image)
    exists = path.is_file()
    if exists and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):  # root too: no w bit
        raise XmpError(f"{path}: the sidecar is read-only; not changed (make it writable to rate this photo)")
    try:
        text = path.read_bytes().decode("utf-8") if exists else NEW_SIDECAR
    except UnicodeDecodeError:
        raise XmpError(f"{path}: not a readable XMP sidecar (not UTF-8)") from None
    root = _parse_text(text.lstrip("\ufeff"), path)
    changes: list[tuple[str, str, str | None]] = []
    if ratings:
        changes += [
            (XMP, "Rating", _text(labels.rating)),
            (DIGIKAM, "PickLabel", _text(labels.pick)),
            (NS, "Rating", _text(labels.rating) if machine else None),
            (NS, "RejectedStars", _text(labels.held_stars) if labels.rejected else None),
        ]
    for name, value in (proposal or {}).items():
        if name not in PROPOSAL_FIELDS:
            raise ValueError(f"unknown proposal field {name!r}")
        changes.append((NS, name, _text(value)))
    for uri, local, value in changes:
        text = _set_field(text, uri, local, value, path)
    _check_written(text, root, changes, path)
    _replace_file(path, text.encode("utf-8"), stat.S_IMODE(path.stat().st_mode) if exists else None)
    return path


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# Regular expressions over the sidecar's text. XML attribute values may hold '>' but never their own quote.
_VALUE = r"(?:\"[^\"]*\"|'[^']*')"
_ATTRIBUTES = rf"(?:\s+[^\s=/>]+\s*=\s*{_VALUE})*\s*"
_XMLNS = re.compile(rf"\sxmlns:([\w.-]+)\s*=\s*({_VALUE})")


def _start_tags(text: str, prefixes: list[str], local: str) -> list[re.Match]:
    """Start tags ``<prefix:local ...>`` in document order, for any of ``prefixes``."""
    found = []
    for prefix in prefixes:
        found += re.finditer(rf"<{re.escape(prefix)}:{local}(?=[\s/>]){_ATTRIBUTES}/?>", text)
    return sorted(found, key=lambda m: m.start())


def _declared(text: str) -> dict[str, str]:
    """prefix -> namespace of every ``xmlns:`` declaration in the document."""
    return {m.group(1): m.group(2)[1:-1] for m in _XMLNS.finditer(text)}


def _prefixes(text: str, uri: str) -> list[str]:
    return [prefix for prefix, bound in _declared(text).items() if bound == uri]


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def _set_field(text: str, uri: str, local: str, value: str | None, path: Path) -> str:
    """``text`` with ``uri:local`` set to ``value`` (None: removed) where it is; added where absent."""
    descriptions = _start_tags(text, _prefixes(text, RDF), "Description")
    if not descriptions:
        raise XmpError(f"{path}: no rdf:Description to write to; not changed")
    for prefix in _prefixes(text, uri):
        name = re.escape(f"{prefix}:{local}")
        for tag in descriptions:  # as an attribute of a description
            attribute = re.search(rf"\s+{name}\s*=\s*({_VALUE})", tag.group(0))
            if attribute:
                start, end = tag.start() + attribute.start(), tag.start() + attribute.end()
                if value is None:
                    return text[:start] + text[end:]
                quote = attribute.group(1)[0]
                value_start = tag.start() + attribute.start(1)
                return text[:value_start] + quote + _escape(value) + quote + text[end:]
        element = re.search(rf"([ \t]*)<{name}(?:\s[^>]*)?(?:/>|>([^<]*)</{name}\s*>)(\r?\n)?", text)
        if element:  # as an element
            if value is None:
                return text[: element.start()] + text[element.end() :]
            if element.group(2) is None:  # <xmp:Rating/>
                inner = f"<{prefix}:{local}>{_escape(value)}</{prefix}:{local}>"
                return text[: element.start(0) + len(element.group(1))] + inner + text[element.end(0) :]
            start = element.start(2)
            return text[:start] + _escape(value) + text[element.end(2) :]
    if value is None:
        return text
    return _add_attribute(text, descriptions[0], uri, local, value)


def _add_attribute(text: str, tag: re.Match, uri: str, local: str, value: str) -> str:
    """Add ``uri:local="value"`` to the description ``tag``, declaring the namespace there if needed."""
    in_scope = _declared(text[: tag.end()])  # declarations up to this tag (the root's, RDF's, its own)
    prefix = next((p for p, bound in in_scope.items() if bound == uri), None)
    addition = ""
    if prefix is None:
        prefix, n = PREFERRED_PREFIX[uri], 1
        while prefix in in_scope:
            prefix, n = f"{PREFERRED_PREFIX[uri]}{n}", n + 1
        addition = f' xmlns:{prefix}="{uri}"'
    body = tag.group(0)
    lines = re.findall(r"\n([ \t]+)[^\s/>]", body)  # a tag with one attribute a line: follow its layout
    separator = f"\n{lines[-1]}" if lines else " "
    addition = addition.replace(" ", separator, 1) if addition else ""
    addition += f'{separator}{prefix}:{local}="{_escape(value)}"'
    cut = tag.start() + len(body) - (2 if body.endswith("/>") else 1)
    while cut > tag.start() and text[cut - 1].isspace():  # before the whitespace ahead of '>'
        cut -= 1
    return text[:cut] + addition + text[cut:]


def _check_written(text: str, before: ET.Element, changes: list, path: Path) -> None:
    """The new text parses, has exactly the new values, and every other element and attribute as before."""
    after = _parse_text(text.lstrip("\ufeff"), path)
    changed = {f"{{{uri}}}{local}" for uri, local, _ in changes}
    for uri, local, value in changes:
        tag = f"{{{uri}}}{local}"
        found = [
            d.get(tag, None if d.find(tag) is None else d.find(tag).text)
            for d in after.iter(f"{{{RDF}}}Description")
        ]
        found = [v for v in found if v is not None]
        if (found[:1] or [None])[0] != value:
            raise XmpError(f"{path}: could not write {PREFERRED_PREFIX[uri]}:{local}; not changed")
    if _untouched(before, changed) != _untouched(after, changed):
        raise XmpError(f"{path}: a rewrite would change other fields; not changed")


def _untouched(root: ET.Element, skip: set[str]) -> list:
    return [
        (e.tag, sorted((k, v) for k, v in e.attrib.items() if k not in skip), (e.text or "").strip())
        for e in root.iter()
        if e.tag not in skip
    ]


def _replace_file(path: Path, data: bytes, mode: int | None) -> None:
    """Replace ``path`` atomically (``fileio.atomic_path``), then give it back its own mode; errors name
    the sidecar, never the hidden temporary file."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        if mode is not None:
            os.chmod(path, mode)
    except OSError as exc:
        where = "its folder is not writable" if not os.access(path.parent, os.W_OK) else exc.strerror
        raise XmpError(f"{path}: cannot write the sidecar ({where}); not changed") from None


# --- the review keys (as in Lightroom: a reject keeps the photo's stars, which come back with the flag) --
def with_stars(labels: Labels, stars: int) -> Labels:
    """A star key: sets the stars; on a rejected photo the reject stays and the stars wait under it."""
    if not 0 <= stars <= 5:
        raise ValueError(f"stars go from 0 to 5, not {stars}")
    if labels.rejected:
        return Labels(-1, PICK_REJECTED, held_stars=stars)
    return Labels(stars, labels.pick)


def rejected(labels: Labels) -> Labels:
    return Labels(-1, PICK_REJECTED, held_stars=labels.stars or None)


def picked(labels: Labels) -> Labels:
    return Labels(_unrejected(labels), PICK_ACCEPTED)


def unflagged(labels: Labels) -> Labels:
    return Labels(_unrejected(labels), PICK_NONE)


def _unrejected(labels: Labels) -> int | None:
    """The rating once a reject is lifted: the stars it held (0 when none)."""
    return (labels.held_stars or 0) if labels.rejected else labels.rating
