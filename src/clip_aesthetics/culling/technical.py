"""Technical checks of a frame: sharpness and clipped highlights and shadows.

Sharpness is the variance of the Laplacian of the grey image resized to a fixed scale (short side
:data:`SHARPNESS_SCALE` pixels), so frames of one shoot compare whatever their resolution. Motion blur and
missed focus remove the fine detail the Laplacian responds to, so a blurred copy of a frame scores a
fraction of the sharp one. The value depends on the scene (foliage is "sharper" than sky), so it is
compared between frames of one burst (:func:`clip_aesthetics.culling.grouping.rank_group`), and only a
frame below an absolute floor (:data:`BLURRED_LIMIT`, far below any sharp photograph) is blurred outright.

Clipping is the fraction of pixels at the ends of the 8-bit range in every channel (blown to white) or in
every channel at the bottom (crushed to black).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, stats

SHARPNESS_SCALE = 448  # short side in pixels; the image pipeline decodes JPEGs at least this large
HIGHLIGHT_LEVEL, SHADOW_LEVEL = 250, 5
HIGHLIGHT_LIMIT, SHADOW_LIMIT = 0.02, 0.05  # fractions of the frame above which it is flagged
# Absolute limits, checked on scikit-image's photographs (tests/test_checks_real_photos.py): sharp photos
# score 53 (the moon) to 4,400 (grass) at this scale, the same photos under a Gaussian blur of sigma 2
# score 2.7-19; a frame below the limit is "blurred" whatever its burst.
BLURRED_LIMIT = 20.0
BLOWN_LIMIT, CRUSHED_LIMIT = 0.25, 0.5  # "blown" / "crushed": a quarter of the frame white, half black


@dataclass(frozen=True)
class Technical:
    sharpness: float
    highlights: float  # fraction of pixels clipped to white
    shadows: float  # fraction of pixels crushed to black

    @property
    def flags(self) -> list[str]:
        """``highlights`` / ``shadows`` when more of the frame than the limits is clipped, ``blown`` /
        ``crushed`` when far more is, ``blurred`` when the frame is soft on the absolute scale."""
        flags = []
        if self.sharpness < BLURRED_LIMIT:
            flags.append("blurred")
        if self.highlights > HIGHLIGHT_LIMIT:
            flags.append("highlights")
        if self.highlights > BLOWN_LIMIT:
            flags.append("blown")
        if self.shadows > SHADOW_LIMIT:
            flags.append("shadows")
        if self.shadows > CRUSHED_LIMIT:
            flags.append("crushed")
        return flags

    def to_dict(self) -> dict:
        return asdict(self)


def at_fixed_scale(image: Image.Image) -> Image.Image:
    """``image`` resized (antialiased) so that its short side is :data:`SHARPNESS_SCALE` pixels."""
    width, height = image.size
    factor = SHARPNESS_SCALE / min(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image at the fixed scale (0-255 grey levels)."""
    grey = np.asarray(at_fixed_scale(image).convert("L"), dtype=np.float64)
    return float(ndimage.laplace(grey, mode="reflect").var())


def clipping(image: Image.Image) -> tuple[float, float]:
    """Fractions of pixels blown out (every channel >= 250) and crushed (every channel <= 5)."""
    rgb = np.asarray(image.convert("RGB"))
    blown = (rgb >= HIGHLIGHT_LEVEL).all(axis=2).mean()
    crushed = (rgb <= SHADOW_LEVEL).all(axis=2).mean()
    return float(blown), float(crushed)


TONE_GRID = 8  # the tone signature: the grey frame in 8 x 8 cells


def tone_signature(image: Image.Image) -> list[float]:
    """The frame's layout of light and dark, whatever its exposure: the grey frame averaged into
    :data:`TONE_GRID` x :data:`TONE_GRID` cells, each cell replaced by its rank (0-1). An exposure change is
    a monotonic change of tone, so it keeps the ranks (up to cells clipped together): on scikit-image's
    photographs the signatures of a frame and the same frame 2 stops brighter correlate at 0.87 or more,
    those of different photographs at 0.44 at most."""
    cells = np.asarray(image.convert("L").resize((TONE_GRID, TONE_GRID), Image.Resampling.BOX), float)
    ranks = (stats.rankdata(cells.ravel()) - 0.5) / cells.size
    return [round(float(v), 4) for v in ranks]


def technical(image: Image.Image) -> Technical:
    """Sharpness and clipping of one decoded RGB image."""
    return Technical(sharpness(image), *clipping(image))
