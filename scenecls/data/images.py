"""Robust image loading: any file a phone or a scanner produces -> upright 8-bit RGB numpy array.

Used by dataset preparation and patch inference, so both see images the same way.
"""

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})

# Pillow refuses images above 2 * MAX_IMAGE_PIXELS (default 89 Mpx, so 179 Mpx) as decompression bombs, which
# rejects 200-megapixel phone photos. Allow up to MAX_PIXELS; load_rgb rejects anything larger itself.
MAX_PIXELS = 300_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """An image that cannot be decoded; ``str(e)`` is one line: ``<path>: <reason>``."""


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed (or a decompression bomb); refused before decoding."""


def is_ignored(path: str | os.PathLike) -> bool:
    """Whether a file or folder is hidden or system clutter (dot-files, ``._*``, ``Thumbs.db``, ...)."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


def has_image_extension(path: str | os.PathLike) -> bool:
    """Whether the file name ends in a supported image extension (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def load_rgb(
    source: str | os.PathLike | bytes, draft_shorter_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decodes an image to uint8 (H, W, 3): EXIF orientation applied, any mode converted, first frame only.

    Args:
      source: a file path or the encoded bytes.
      draft_shorter_side: if set, JPEGs may be decoded at a reduced scale (libjpeg DCT scaling) as long as the
        shorter side stays >= this; a large speed-up when the image is downsized afterwards anyway.
      max_pixels: larger images are refused from their header, before decoding (at most ``MAX_PIXELS``).

    Raises:
      ImageError: the data is not a decodable image; ``ImageTooLarge`` if it has over ``max_pixels`` pixels.
    """
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    try:
        if isinstance(source, bytes):
            return _decode(io.BytesIO(source), draft_shorter_side, max_pixels)
        if os.path.getsize(source) == 0:
            raise ImageError("empty file (0 bytes)")
        with open(source, "rb") as f:
            return _decode(f, draft_shorter_side, max_pixels)
    except ImageError as e:
        raise type(e)(f"{name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{name}: too many pixels to decode safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format (corrupt, or not an image)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Warning) as e:
        # Pillow reports truncated/corrupt data as OSError, some plugins as SyntaxError or ValueError, and
        # some as warnings (corrupt EXIF), which are exceptions when warnings are errors (python -W error).
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"{name}: corrupt or truncated image data ({reason})") from None
    except (TypeError, AttributeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as e:
        # Plugins' own bugs on hostile data (a garbled TIFF tag gives "'IFDRational' object cannot be
        # interpreted as an integer"): still just an undecodable file.
        raise ImageError(f"{name}: corrupt image data ({type(e).__name__}: {e})") from None


def _decode(f: BinaryIO, draft_shorter_side: int | None, max_pixels: int) -> np.ndarray:
    """Opens, checks the size, decodes and converts one image file object."""
    with Image.open(f) as image:
        width, height = image.size
        limit = min(max_pixels, MAX_PIXELS)
        if width * height > limit:
            raise ImageTooLarge(f"{width}x{height} pixels is over the {limit / 1e6:g} Mpx limit")
        if draft_shorter_side and image.format == "JPEG":
            image.draft("RGB", (draft_shorter_side, draft_shorter_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Converts any Pillow mode to uint8 RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: scale the 16-bit range to 8 bits instead of clipping.
        gray = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        gray = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if has_alpha or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of a uint8 RGB image; a no-op at the same size."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes (up or down, antialiased) so the shorter side is ``size``, keeping the aspect ratio."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    return resize(image, max(1, round(height * scale)), max(1, round(width * scale)))


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encodes a uint8 RGB array as JPEG bytes (the format prepared datasets store)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
