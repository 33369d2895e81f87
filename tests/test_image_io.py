"""load_image / load_image_bytes / image_name: every input kind and mode, and every bad input's one-line error."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasonseg.errors import InputError
from reasonseg.processing.image_io import image_name, load_image, load_image_bytes

ORIENTATION = 0x0112


def _pixels(image: Image.Image) -> np.ndarray:
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image)


def _grey(values) -> np.ndarray:
    """The RGB array expected from grayscale values: the value in all three channels."""
    values = np.asarray(values, dtype=np.uint8)
    return np.repeat(values[..., None], 3, axis=-1)


def _on_white(colour, alpha) -> np.ndarray:
    colour, alpha = np.asarray(colour, dtype=np.float64), np.asarray(alpha, dtype=np.float64)[..., None]
    return np.floor((colour * alpha + 255.0 * (255.0 - alpha)) / 255.0 + 0.5).astype(np.uint8)


def _random_rgb(height=12, width=17, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_one_line_naming(err: pytest.ExceptionInfo, *names: str) -> str:
    message = str(err.value)
    assert "\n" not in message and "\r" not in message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- files, by mode


def test_rgb_png_from_str_and_pathlib_paths(tmp_path):
    pixels = _random_rgb()
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(_pixels(load_image(str(path))), pixels)
    np.testing.assert_array_equal(_pixels(load_image(path)), pixels)


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    grey = np.arange(0, 240, 4, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "grey.png")), _grey(grey))


def test_one_bit_png(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "bits.png")), _grey(bits * 255))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 256, 1000, 4000], [20000, 32768, 60000, 65535]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = _pixels(load_image(path))
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, _grey(expected))
    # relative intensities survive: strictly increasing input stays non-decreasing, and nothing above 255 saturates
    flat = out[..., 0].ravel()
    assert np.all(np.diff(flat.astype(int)) >= 0)
    assert flat[2] == 4 and flat[3] == 16 and flat[-2] == 233 and flat[-1] == 255


def test_32_bit_integer_image_within_16_bit_range_and_beyond(tmp_path):
    in_range = Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(_pixels(load_image(in_range)), _grey([[0, 255, 128]]))
    # outside [0, 65535] the range [min, max] is stretched onto [0, 255]
    wide = Image.fromarray(np.array([[-100, 0, 100000]], dtype=np.int32), mode="I")
    expected = np.rint((np.array([[-100, 0, 100000]]) + 100) * 255 / 100100)
    np.testing.assert_array_equal(_pixels(load_image(wide)), _grey(expected))


def test_float_image_in_unit_range_and_beyond(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(unit, mode="F").save(path)
    np.testing.assert_array_equal(_pixels(load_image(path)), _grey(np.rint(unit * 255)))
    wide = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(_pixels(load_image(wide)), _grey(np.rint(np.array([[0, 1, 4]]) * 255 / 4)))


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.array([[[200, 10, 60, 0], [200, 10, 60, 255], [200, 10, 60, 128], [0, 0, 0, 64]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = _pixels(load_image(tmp_path / "rgba.png"))
    np.testing.assert_array_equal(out, _on_white(rgba[..., :3], rgba[..., 3]))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 1], [200, 10, 60])  # opaque -> the colour itself
    np.testing.assert_array_equal(out[0, 2], [227, 132, 157])


def test_la_png_is_composited_on_white(tmp_path):
    la = Image.merge("LA", [Image.new("L", (2, 1), 40), Image.fromarray(np.array([[0, 255]], dtype=np.uint8))])
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "la.png")), _grey([[255, 40]]))


def _palette_image(transparent_index: int | None) -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def test_palette_png_without_transparency(tmp_path):
    _palette_image(None).save(tmp_path / "p.png")
    out = _pixels(load_image(tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [40, 50, 60], [70, 80, 90]])
    np.testing.assert_array_equal(out[1], [[70, 80, 90], [40, 50, 60], [10, 20, 30]])


def test_palette_png_with_transparency_is_white_where_transparent(tmp_path):
    _palette_image(transparent_index=1).save(tmp_path / "p_trns.png")
    assert "transparency" in Image.open(tmp_path / "p_trns.png").info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning either
        out = _pixels(load_image(tmp_path / "p_trns.png"))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [255, 255, 255], [70, 80, 90]])
    np.testing.assert_array_equal(out[1], [[70, 80, 90], [255, 255, 255], [10, 20, 30]])


def test_palette_gif_with_transparency(tmp_path):
    _palette_image(transparent_index=0).save(tmp_path / "p.gif")
    out = _pixels(load_image(tmp_path / "p.gif"))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [40, 50, 60], [70, 80, 90]])


def test_grayscale_png_with_transparent_value(tmp_path):
    image = Image.fromarray(np.array([[0, 50, 100]], dtype=np.uint8), mode="L")
    image.save(tmp_path / "l_trns.png", transparency=50)
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "l_trns.png")), _grey([[0, 255, 100]]))


def test_cmyk_tiff_and_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "cmyk.tif")), np.full((8, 8, 3), [255, 0, 0]))
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = _pixels(load_image(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(out - [255, 0, 0]).max() <= 3


def _corner_marked_jpeg(path: Path, orientation: int | None) -> None:
    """A 40x20 (WxH) JPEG, black with a white 8x8 block in its stored top-left corner."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:8, :8] = 255
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def _block_corner(pixels: np.ndarray) -> str:
    h, w = pixels.shape[:2]
    corners = {"top-left": pixels[:4, :4], "top-right": pixels[:4, w - 4 :],
               "bottom-left": pixels[h - 4 :, :4], "bottom-right": pixels[h - 4 :, w - 4 :]}
    bright = [name for name, region in corners.items() if region.mean() > 200]
    assert len(bright) == 1, bright
    return bright[0]


@pytest.mark.parametrize(
    "orientation, size, corner",
    [
        (None, (40, 20), "top-left"),
        (1, (40, 20), "top-left"),
        (3, (40, 20), "bottom-right"),  # rotated 180
        (6, (20, 40), "top-right"),  # displayed rotated 90 degrees clockwise
        (8, (20, 40), "bottom-left"),  # displayed rotated 90 degrees counter-clockwise
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, size, corner):
    path = tmp_path / "photo.jpg"
    _corner_marked_jpeg(path, orientation)
    image = load_image(path)
    assert image.size == size
    assert _block_corner(_pixels(image)) == corner


def test_exif_orientation_applied_to_pil_image_straight_from_open_and_bytes(tmp_path):
    path = tmp_path / "photo.jpg"
    _corner_marked_jpeg(path, 6)
    with Image.open(path) as opened:
        image = load_image(opened)
    assert image.size == (20, 40) and _block_corner(_pixels(image)) == "top-right"
    image = load_image_bytes(path.read_bytes())
    assert image.size == (20, 40) and _block_corner(_pixels(image)) == "top-right"


def test_pil_image_made_in_memory_is_taken_as_it_is():
    pixels = _random_rgb()
    image = Image.fromarray(pixels)
    out = load_image(image)
    np.testing.assert_array_equal(_pixels(out), pixels)


def test_multi_frame_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "anim.gif")), np.full((4, 4, 3), [255, 0, 0]))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "I", "F", "1", "YCbCr", "RGBX"])
def test_every_pil_mode_becomes_rgb_of_the_same_size(mode):
    image = Image.new(mode, (7, 5))
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (7, 5)


# ---------------------------------------------------------------- numpy arrays and bytes


def test_uint8_rgb_array_is_exact_and_non_contiguous_arrays_work():
    pixels = _random_rgb()
    np.testing.assert_array_equal(_pixels(load_image(pixels)), pixels)
    flipped = pixels[:, ::-1]
    np.testing.assert_array_equal(_pixels(load_image(flipped)), flipped)


def test_grayscale_arrays_hw_and_hw1():
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    np.testing.assert_array_equal(_pixels(load_image(grey)), _grey(grey))
    np.testing.assert_array_equal(_pixels(load_image(grey[..., None])), _grey(grey))


def test_rgba_array_is_composited_on_white():
    rgba = np.random.default_rng(1).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    np.testing.assert_array_equal(_pixels(load_image(rgba)), _on_white(rgba[..., :3], rgba[..., 3]))


def test_uint16_array_is_scaled_by_255_over_65535():
    values = np.array([[0, 257, 1000], [30000, 65000, 65535]], dtype=np.uint16)
    expected = np.rint(values * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(_pixels(load_image(values)), _grey(expected))
    rgb16 = np.stack([values, values // 2, 65535 - values], axis=-1)
    np.testing.assert_array_equal(_pixels(load_image(rgb16)), np.rint(rgb16 * 255.0 / 65535.0).astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_array_in_unit_range_is_scaled_by_255(dtype):
    values = np.random.default_rng(2).random((4, 5, 3)).astype(dtype)
    expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_pixels(load_image(values)), expected)


def test_bytes_inputs(tmp_path):
    pixels = _random_rgb()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    np.testing.assert_array_equal(_pixels(load_image_bytes(buffer.getvalue())), pixels)
    np.testing.assert_array_equal(_pixels(load_image(buffer.getvalue())), pixels)
    for image_format in ["BMP", "TIFF", "WEBP", "GIF"]:
        buffer = io.BytesIO()
        Image.new("RGB", (3, 2), (0, 0, 255)).save(buffer, format=image_format, lossless=True)
        np.testing.assert_array_equal(_pixels(load_image_bytes(buffer.getvalue())), np.full((2, 3, 3), [0, 0, 255]))


def test_max_pixels_allows_images_at_the_limit(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "ten.png")
    assert load_image(tmp_path / "ten.png", max_pixels=100).size == (10, 10)
    assert load_image(np.zeros((10, 10, 3), np.uint8), max_pixels=100).size == (10, 10)


# ---------------------------------------------------------------- image_name


@pytest.mark.parametrize(
    "given, expected",
    [
        ("photos/cat.jpg", "cat"),
        (Path("/data/a.b.png"), "a.b"),
        ("noext", "noext"),
        ("..", "image"),
        (Image.new("RGB", (1, 1)), "image"),
        (np.zeros((1, 1, 3), np.uint8), "image"),
        (b"\x89PNG", "image"),
    ],
)
def test_image_name(given, expected):
    assert image_name(given) == expected


# ---------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "nope.png")
    assert "not found" in _assert_one_line_naming(err, str(tmp_path / "nope.png"))


def test_url_is_not_downloaded(tmp_path):
    with pytest.raises(InputError) as err:
        load_image("https://example.com/cat.png")
    assert "not downloaded" in _assert_one_line_naming(err, "https://example.com/cat.png")


def test_directory_given_as_image(tmp_path):
    with pytest.raises(InputError) as err:
        load_image(tmp_path)
    assert "directory" in _assert_one_line_naming(err, str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_file(tmp_path, content):
    path = tmp_path / "junk.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_image(path)
    assert "not a readable image" in _assert_one_line_naming(err, str(path))


@pytest.mark.parametrize("image_format, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file_is_caught_at_load_time(tmp_path, image_format, suffix):
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64)).save(buffer, format=image_format)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.open(path)  # the header alone is fine: only decoding finds the damage
    with pytest.raises(InputError) as err:
        load_image(path)
    assert "truncated" in _assert_one_line_naming(err, str(path))
    with pytest.raises(InputError) as err:
        load_image_bytes(path.read_bytes())
    assert "truncated" in _assert_one_line_naming(err, "uploaded image")


def test_truncated_file_opened_by_the_caller(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:200])
    with Image.open(path) as opened, pytest.raises(InputError) as err:
        load_image(opened)
    _assert_one_line_naming(err, str(path))


def test_zero_width_png_header(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    path = tmp_path / "zero.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(InputError) as err:
        load_image(path)
    _assert_one_line_naming(err, str(path))


@pytest.mark.parametrize("given", [Image.new("RGB", (0, 0)), Image.new("L", (5, 0)), np.zeros((0, 5, 3), np.uint8)])
def test_zero_sized_image(given):
    with pytest.raises(InputError) as err:
        load_image(given)
    assert "empty" in _assert_one_line_naming(err)


def test_more_pixels_than_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(path)
    with pytest.raises(InputError) as err:
        load_image(path, max_pixels=199)
    _assert_one_line_naming(err, str(path), "20x10", "199")
    with pytest.raises(InputError) as err:
        load_image_bytes(path.read_bytes(), max_pixels=199)
    _assert_one_line_naming(err, "uploaded image", "20x10")
    with pytest.raises(InputError):
        load_image(np.zeros((10, 20, 3), np.uint8), max_pixels=199)
    with pytest.raises(InputError):
        load_image(Image.new("RGB", (20, 10)), max_pixels=199)


def test_decompression_bomb_limits(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    # between PIL's limit and twice it, PIL only warns: the warning becomes our error, naming max_pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    with pytest.raises(InputError) as err:
        load_image(path)
    _assert_one_line_naming(err, str(path), "max_pixels=10000")
    # an explicit max_pixels above PIL's warning threshold is honoured, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path, max_pixels=10000).size == (100, 100)
    # beyond twice PIL's limit, PIL refuses to open it at all
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError) as err:
        load_image(path, max_pixels=10**6)
    _assert_one_line_naming(err, str(path), "MAX_IMAGE_PIXELS")
    with pytest.raises(InputError) as err:
        load_image_bytes(path.read_bytes())
    _assert_one_line_naming(err, "uploaded image")


def test_error_message_stays_one_line_for_a_name_with_a_newline(tmp_path):
    path = tmp_path / "two\nlines.png"
    path.write_bytes(b"not an image")
    with pytest.raises(InputError) as err:
        load_image(path)
    _assert_one_line_naming(err, "two\\nlines.png")


@pytest.mark.parametrize(
    "array, hint",
    [
        (np.zeros((3, 8, 8), np.uint8), "channel-first"),
        (np.zeros((8, 8, 2), np.uint8), "HxWx3"),
        (np.zeros((2, 8, 8, 3), np.uint8), "HxWx3"),
        (np.zeros(8, np.uint8), "HxWx3"),
        (np.zeros((8, 8, 3), np.int64), "uint8"),
        (np.zeros((8, 8), bool), "uint8"),
        (np.full((8, 8, 3), 1.5), "[0, 1]"),
        (np.full((8, 8, 3), -0.1, np.float32), "[0, 1]"),
        (np.full((8, 8, 3), np.nan), "NaN"),
    ],
)
def test_unsupported_arrays(array, hint):
    with pytest.raises(InputError) as err:
        load_image(array)
    _assert_one_line_naming(err, hint, str(array.dtype), str(tuple(array.shape)))


def test_unsupported_input_type():
    with pytest.raises(InputError) as err:
        load_image([[0, 1], [2, 3]])
    _assert_one_line_naming(err, "list")


def test_uploads_are_limited_to_plain_raster_formats(tmp_path):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(InputError) as err:
        load_image_bytes(eps)
    _assert_one_line_naming(err, "uploaded image", "PNG, JPEG")
    with pytest.raises(InputError) as err:
        load_image_bytes(b"")
    _assert_one_line_naming(err, "empty")
