"""Decoding uploaded image bytes safely: a size limit in bytes and in pixels, a short list of raster formats."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from ..processing.image_io import load_image

# Raster formats PIL decodes itself. Anything else (EPS, which runs Ghostscript; PDF; SVG; ...) is refused.
_WANTED = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")
Image.init()  # register every plugin now, so that ``formats=`` below can name them
ALLOWED_FORMATS = tuple(name for name in _WANTED if name in Image.OPEN)

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class ImageRejected(Exception):
    """An upload the server will not decode. ``status`` is the HTTP code, ``error`` the short error name."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Standard base64, optionally as a ``data:image/...;base64,`` URL; URLs of other kinds are refused."""
    text = text.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise ImageRejected(422, "invalid_image", "image URLs are not fetched; send the image bytes as base64")
    text = _DATA_URL.sub("", text, count=1)
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise ImageRejected(413, "image_too_large", f"the image is larger than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(422, "invalid_image", "image_base64 is not valid base64") from None
    return data


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes of a PNG/JPEG/WebP/GIF/BMP/TIFF -> RGB PIL image (EXIF orientation applied), within the limits."""
    if len(data) > max_bytes:
        raise ImageRejected(413, "image_too_large", f"the image has {len(data)} bytes, more than the limit {max_bytes}")
    if not data:
        raise ImageRejected(422, "invalid_image", "the image is empty")
    try:
        with warnings.catch_warnings():
            # our own pixel limit below replaces PIL's DecompressionBombWarning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageRejected(
                        413, "image_too_large", f"the image has {width}x{height} pixels, more than the limit {max_pixels}"
                    )
                if width < 1 or height < 1:
                    raise ImageRejected(422, "invalid_image", f"the image is {width}x{height}")
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return load_image(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        raise ImageRejected(413, "image_too_large", str(err).splitlines()[0]) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            422, "invalid_image", f"not a readable image; send one of {', '.join(n for n in ALLOWED_FORMATS if n != 'MPO')}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.UnidentifiedImageError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageRejected(422, "invalid_image", f"cannot decode the image: {message}") from None
