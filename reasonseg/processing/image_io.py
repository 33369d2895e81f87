"""Reading user images robustly: paths, bytes, PIL images or numpy arrays, in any common mode, returned as RGB.

Every input the model sees goes through :func:`load_image` (or :func:`load_image_bytes` for uploads), so every
conversion rule lives here:

* **Grayscale** ``L`` and ``1`` are replicated to three channels.
* **16-bit grayscale** (``I;16*`` modes, ``uint16`` arrays) is scaled linearly, ``v * 255 / 65535`` rounded, so
  relative intensities are kept; Pillow's own ``convert`` would clip everything above 255 to white.
* **32-bit integer** (``I``) is treated as 16-bit when all values lie in ``[0, 65535]``; otherwise its range
  ``[min, max]`` is stretched linearly onto ``[0, 255]``.
* **Float** (``F`` mode) in ``[0, 1]`` becomes ``round(v * 255)``; any other range is stretched linearly from
  ``[min, max]``. NaN becomes 0. Float *arrays* must lie in ``[0, 1]`` (anything else is ambiguous and refused).
* **Transparency** (``RGBA``, ``LA``, ``PA``, palette or grayscale images with a ``transparency`` entry) is composited
  onto a **white** background: ``round((c * a + 255 * (255 - a)) / 255)``. The model never sees alpha, and white is
  what a viewer shows behind a transparent PNG.
* **Palette** (``P``) and **CMYK**/``YCbCr`` are converted with Pillow.
* **EXIF orientation** is applied to files and bytes, and to PIL images straight from ``Image.open`` (those with a
  ``format``), so a portrait photo taken sideways comes out upright. PIL images made in memory are taken as they are.
* **Multi-frame** files (animated GIF/WebP, multi-page TIFF) give their first frame.

Everything a user can get wrong raises :class:`~reasonseg.errors.InputError` with a one-line message that names the
image and says what to do. Files are fully decoded here (``.load()``), so a truncated download fails at load time,
not later inside the model. PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) applies unless
``max_pixels`` is given, which then replaces it (up to PIL's hard limit of twice ``MAX_IMAGE_PIXELS``).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

# Raster formats Pillow decodes itself. Uploads in any other format (EPS runs Ghostscript; PDF, ...) are refused.
# Multi-picture JPEGs (MPO) come in through "JPEG": Pillow has no separate opener for them.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# What Pillow raises on a broken file: truncated data (OSError), malformed headers (SyntaxError, ValueError,
# struct.error), and on some damaged files IndexError/TypeError from deep inside a plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)


def load_image(image, *, max_pixels: int | None = None) -> Image.Image:
    """Any supported image input -> an RGB ``PIL.Image.Image`` (see the module docstring for the conversions).

    ``image`` may be a path (``str`` or ``os.PathLike``), the bytes of an image file, a ``PIL.Image.Image``, or a
    numpy array: ``HxW``, ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA) of ``uint8``, ``uint16`` or float in
    ``[0, 1]``. ``max_pixels`` refuses images with more than that many pixels (width * height) before they are
    decoded.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return load_image_bytes(bytes(image), max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return _load_pil(image, max_pixels)
    if isinstance(image, np.ndarray):
        return _load_array(image, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return _load_path(image, max_pixels)
    raise InputError(
        f"unsupported image type {type(image).__name__}; pass a file path, image bytes, a PIL image or a numpy array"
    )


def load_image_bytes(
    data: bytes, *, max_pixels: int | None = None, formats: tuple[str, ...] | None = UPLOAD_FORMATS
) -> Image.Image:
    """The bytes of an image file (an upload) -> an RGB ``PIL.Image.Image``, with the same rules as :func:`load_image`.

    ``formats`` lists the Pillow formats accepted; the default is the plain raster formats in ``UPLOAD_FORMATS``, so
    an upload can never make Pillow start an external program. ``None`` accepts every format Pillow knows.
    """
    label = f"the uploaded image ({len(data)} bytes)"
    if formats is not None:
        Image.init()
        unknown = [f for f in formats if f.upper() not in Image.OPEN]
        if unknown:
            raise InputError(f"unknown image formats {unknown}; choose from {sorted(Image.OPEN)}")
    if not data:
        raise InputError("the uploaded image is empty (0 bytes); send the bytes of a PNG or JPEG file")
    return _open_and_decode(lambda: Image.open(io.BytesIO(data), formats=formats), label, max_pixels, formats)


def image_name(image) -> str:
    """A file stem to name outputs after: ``photos/cat.jpg`` -> ``"cat"``; ``"image"`` for anything but a path."""
    if isinstance(image, (str, os.PathLike)):
        stem = Path(image).stem
        if stem and stem not in (".", ".."):
            return stem
    return "image"


def _load_path(given, max_pixels: int | None) -> Image.Image:
    path = Path(given).expanduser()
    label = _one_line(str(path))
    if not path.exists():
        if "://" in str(given):
            url = _one_line(str(given))
            raise InputError(f"image {url} not found; URLs are not downloaded, save the file and pass its path")
        raise InputError(f"image {label} not found; check the path")
    if path.is_dir():
        raise InputError(f"image {label} is a directory; pass the path of an image file inside it")
    if not path.is_file():
        raise InputError(f"image {label} is not a regular file; pass the path of an image file")
    return _open_and_decode(lambda: Image.open(path), f"image {label}", max_pixels, formats=None)


def _open_and_decode(open_image, label: str, max_pixels: int | None, formats) -> Image.Image:
    """Open with ``open_image()``, check the size from the header, force full decoding, then convert to RGB."""
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # our own size check below replaces PIL's warning (and honours a max_pixels above PIL's threshold)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image() as opened:
                width, height = opened.size
                _check_size(width, height, label, limit, max_pixels is not None)
                opened.load()
                return _to_rgb(_exif_upright(opened), label)
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(
            f"{label} is too large to decode safely ({_first_line(err)}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "if the file is trusted"
        ) from None
    except UnidentifiedImageError:
        accepted = f"one of {', '.join(formats)}" if formats else "a PNG, JPEG or other format Pillow reads"
        raise InputError(
            f"{label} is not a readable image (unknown format or damaged header); pass {accepted}"
        ) from None
    except PermissionError as err:
        raise InputError(f"{label} cannot be opened ({err.strerror}); check the file's permissions") from None
    except MemoryError:
        raise InputError(f"{label} does not fit in memory once decoded; pass a smaller image") from None
    except _DECODE_ERRORS as err:
        raise InputError(
            f"{label} is truncated or corrupt ({_first_line(err)}); re-export or re-download the file"
        ) from None


def _check_size(width: int, height: int, label: str, limit: int | None, explicit: bool) -> None:
    if width < 1 or height < 1:
        raise InputError(f"{label} is empty ({width}x{height} pixels); pass an image with at least one pixel")
    if limit is not None and width * height > limit:
        if explicit:
            hint = "pass a smaller image or raise max_pixels"
        else:
            hint = f"pass max_pixels={width * height} (or more) if the file is trusted"
        raise InputError(
            f"{label} has {width}x{height} = {width * height} pixels, more than the limit of {limit}; {hint}"
        )


def _load_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    filename = getattr(image, "filename", "")
    label = f"the PIL image from {_one_line(str(filename))}" if filename else "the PIL image"
    _check_size(image.width, image.height, label, max_pixels, explicit=True)
    try:
        image.load()
        if image.format is not None:  # straight from Image.open: its EXIF orientation describes these pixels
            image = _exif_upright(image)
        return _to_rgb(image, label)
    except InputError:
        raise
    except _DECODE_ERRORS as err:
        raise InputError(f"{label} cannot be decoded ({_first_line(err)}); re-open or re-create it") from None


def _load_array(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    """An ``HxW[xC]`` array -> RGB. ``uint16`` is scaled by 255/65535, float in [0, 1] by 255 (rounded)."""
    label = f"the {array.dtype} image array of shape {tuple(array.shape)}"
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        hint = "pass HxWx3 RGB, HxWx4 RGBA or HxW grayscale"
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint += " (this looks channel-first: use array.transpose(1, 2, 0))"
        raise InputError(f"unsupported shape of {label}; {hint}")
    _check_size(array.shape[1], array.shape[0], label, max_pixels, explicit=True)
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = _sixteen_to_eight_bit(array)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise InputError(
                f"{label} has values outside [0, 1] (or NaN/inf); scale float images to [0, 1] or pass uint8"
            )
        pixels = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InputError(f"unsupported dtype of {label}; pass uint8 (0-255), uint16 or float in [0, 1]")
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim == 2:
        return Image.fromarray(pixels, mode="L").convert("RGB")
    if pixels.shape[2] == 4:
        return Image.fromarray(_composite_on_white(pixels), mode="RGB")
    return Image.fromarray(pixels, mode="RGB")


def _exif_upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF is metadata damage; the pixels are still good
        return image


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode -> ``RGB`` by the rules in the module docstring."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = Image.fromarray(_high_depth_to_eight_bit(image), mode="L")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        return Image.fromarray(_composite_on_white(rgba), mode="RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:  # e.g. LAB, which Pillow cannot convert to RGB
        raise InputError(f"{label} is in mode {image.mode}, which cannot be converted to RGB ({err})") from None


def _high_depth_to_eight_bit(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_to_eight_bit(np.asarray(image))
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            return np.rint(values * 255.0).astype(np.uint8)
    elif values.size and values.min() >= 0 and values.max() <= 65535:
        return _sixteen_to_eight_bit(values)
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.full(values.shape, np.clip(round(low), 0, 255), dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _sixteen_to_eight_bit(values: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(values, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``HxWx4`` uint8 -> ``HxWx3`` uint8 over a white background (alpha 0 = white, 255 = the colour itself)."""
    colour = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    # integer round-half-up of (c * a + 255 * (255 - a)) / 255
    blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return _one_line(text.splitlines()[0]) if text else type(err).__name__


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
