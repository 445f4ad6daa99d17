"""Decode, resize, centre-crop and re-encode one image: the per-record work of task 1.

One decode and one encode per image: Pillow's ``draft()`` lets libjpeg scale a JPEG down by 1/2, 1/4 or
1/8 while decoding, keeping the short side at least ``image_size``, and one ``Image.resize(..., box=...)``
does the rest of the resize and the crop. Bicubic with antialiasing: the reduction left after ``draft()``
is almost always below 2x, where it matches Lanczos, faster. A truncated file raises
:class:`ImageDecodeError` (``LOAD_TRUNCATED_IMAGES`` stays False) rather than give a half-grey picture.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image as PILImage

RESAMPLE = Image.Resampling.BICUBIC
_TRANSPARENT_BACKGROUND = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, not an image, or too large)."""


def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of side ``min(width, height)`` as a (left, top, right, bottom) box in source pixels
    (offsets may be half pixels): resized, it is the short side scaled and the centre cropped, exactly."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    side = min(width, height)
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return (left, top, left + side, top + side)


def resize_and_crop(img: PILImage, image_size: int) -> PILImage:
    """A copy of ``img`` (already in the output mode) with its short side scaled to ``image_size`` (up or
    down) and the centre square cropped."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    return img.resize((image_size, image_size), RESAMPLE, box=crop_box(*img.size))


def _to_rgb(img: PILImage) -> PILImage:
    """RGB version of a decoded image; transparent areas become white rather than whatever RGB they hide."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _TRANSPARENT_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Wide greyscale (16-bit PNG/TIFF): map to 8 bits before RGB, which would otherwise clip.
        img = img.convert("I")
        img = img.point(lambda v: v * (255.0 / 65535.0)).convert("L")
    return img.convert("RGB")


def transform_jpeg(data: bytes, image_size: int, quality: int = 90) -> bytes:
    """Decode any image, scale its short side to ``image_size`` (up or down), centre-crop a square, encode
    it as baseline RGB JPEG. :class:`ImageDecodeError` with a short reason for bytes that are not a whole
    image, ValueError for a bad ``image_size`` or ``quality``."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; draft() keeps such a decode small.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: PILImage = Image.open(io.BytesIO(data))
            # DCT-domain downscale by a power of two, both sides kept >= image_size (JPEG only).
            img.draft("RGB", (image_size, image_size))
            img.load()
            with contextlib.suppress(Exception):  # a broken EXIF block is not a broken image
                ImageOps.exif_transpose(img, in_place=True)  # camera photos: a portrait stays a portrait
            rgb = _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
        # Pillow reports a truncated or corrupt stream as OSError ("image file is truncated",
        # "broken data stream"), and some plugins as SyntaxError/ValueError.
        reason = str(exc) or type(exc).__name__
        raise ImageDecodeError(f"cannot decode image: {reason}") from None

    out = resize_and_crop(rgb, image_size)
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()
