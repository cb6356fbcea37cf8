"""Image loading: EXIF orientation, colour modes, bit depths, broken files, size guard, resizing."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from scenecls.data import images

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _upright(height=40, width=60) -> np.ndarray:
    """Red top half, blue bottom half, a green mark in the top-left corner."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = RED
    image[height // 2 :] = BLUE
    image[:6, :6] = (20, 220, 20)
    return image


def _save(path, image, fmt="PNG", **kwargs):
    Image.fromarray(image).save(path, format=fmt, **kwargs)
    return path


def _png(width: int, height: int, bit_depth: int, idat: bytes) -> bytes:
    """A hand-made RGB PNG (Pillow cannot write 16-bit RGB, nor an image with missing pixel data)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


def _png16(rgb16: np.ndarray) -> bytes:
    height, width, _ = rgb16.shape
    return _png(width, height, 16, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16))


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [
        (6, lambda a: np.rot90(a, 1)),  # display = rotate stored 90 degrees clockwise
        (8, lambda a: np.rot90(a, -1)),  # display = rotate stored 90 degrees counter-clockwise
        (3, lambda a: np.rot90(a, 2)),
        (2, lambda a: a[:, ::-1]),  # mirrored
    ],
)
def test_exif_orientation_comes_out_upright(tmp_path, orientation, stored):
    upright = _upright()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "photo.jpg", np.ascontiguousarray(stored(upright)), "JPEG", quality=95, exif=exif)
    loaded = images.load_rgb(path)
    assert loaded.shape == upright.shape
    assert np.abs(loaded.astype(int) - upright).mean() < 4


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_any_mode_becomes_rgb_uint8(tmp_path, mode):
    image = Image.fromarray(_upright()).convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        image = Image.fromarray(np.full((40, 60), 40000, np.uint16))
    elif mode in ("I", "F"):
        image = Image.fromarray(np.full((40, 60), 40000, np.int32)).convert(mode)
    fmt = {"CMYK": "JPEG", "I;16": "PNG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    loaded = images.load_rgb(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (40, 60, 3)
    if mode in ("I;16", "I"):  # 16-bit range scaled down, not clipped to white
        np.testing.assert_array_equal(loaded, round(40000 / 257))
    if mode in ("RGBA", "CMYK", "P"):  # colours survive
        assert np.abs(loaded[30, 30].astype(int) - BLUE).max() < 40


def test_16_bit_rgb_png(tmp_path):
    rgb16 = np.zeros((4, 5, 3), np.uint16)
    rgb16[...] = (65535, 32896, 257)
    (tmp_path / "deep.png").write_bytes(_png16(rgb16))
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "deep.png")[0, 0], (255, 128, 1))


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (10, 200, 10, 255)  # opaque green top, transparent black bottom
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    loaded = images.load_rgb(tmp_path / "alpha.png")
    np.testing.assert_array_equal(loaded[0, 0], (10, 200, 10))
    np.testing.assert_array_equal(loaded[7, 7], (255, 255, 255))


def test_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((10, 12, 3), color, np.uint8)) for color in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert images.load_rgb(tmp_path / "anim.gif")[5, 5, 0] > 200


def test_bytes_input_and_webp_bmp_tiff(tmp_path):
    for fmt in ("WEBP", "BMP", "TIFF"):
        buffer = io.BytesIO()
        Image.fromarray(_upright()).save(buffer, format=fmt)
        assert np.abs(images.load_rgb(buffer.getvalue()).astype(int) - _upright()).mean() < 4


def _valid_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file renamed to .jpg\n" * 3, "not a recognised image"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "corrupt"),
        (_valid_jpeg()[:700], "truncated"),
    ],
)
def test_broken_files_raise_one_line_image_error(tmp_path, content, reason):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(images.ImageError) as error:
        images.load_rgb(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_absurd_size_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png(20000, 20000, 8, b""))  # 400 Mpx header, no pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(images.ImageTooLarge, match="20000x20000 pixels is over the 300 Mpx limit"):
            images.load_rgb(tmp_path / "bomb.png")


def test_a_lower_pixel_limit_refuses_before_decoding(tmp_path):
    path = _save(tmp_path / "photo.png", np.zeros((40, 50, 3), np.uint8), "PNG")
    assert images.load_rgb(path, max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(images.ImageTooLarge, match="photo.png: 50x40 pixels is over the 0.001999 Mpx limit"):
        images.load_rgb(path, max_pixels=1999)


def test_draft_decodes_large_jpegs_smaller_but_big_enough(tmp_path):
    path = _save(tmp_path / "big.jpg", np.zeros((600, 800, 3), np.uint8), "JPEG")
    assert images.load_rgb(path).shape == (600, 800, 3)
    drafted = images.load_rgb(path, draft_shorter_side=100)
    assert 100 <= min(drafted.shape[:2]) < 600 and drafted.shape[1] * 3 == drafted.shape[0] * 4


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((600, 800, 3), 256, (256, 341, 3)),
        ((800, 600, 3), 256, (341, 256, 3)),
        ((30, 40, 3), 60, (60, 80, 3)),
        ((64, 64, 3), 64, (64, 64, 3)),
    ],
)
def test_resize_shorter_side_keeps_aspect(shape, size, expected):
    assert images.resize_shorter_side(np.zeros(shape, np.uint8), size).shape == expected


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        (".DS_Store", True),
        ("._IMG_0001.jpg", True),
        ("Thumbs.db", True),
        (".hidden", True),
        ("desktop.ini", True),
        ("IMG_0001.JPG", False),
        ("a/b/photo.png", False),
        ("a/.cache/", True),
    ],
)
def test_is_ignored(name, ignored):
    assert images.is_ignored(name) is ignored


def test_image_extensions_are_lower_case_and_complete():
    assert images.IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    assert images.has_image_extension("X/IMG.JPEG") and not images.has_image_extension("notes.txt")


def test_200_megapixel_phone_photo_passes_the_size_guard(tmp_path):
    (tmp_path / "phone.png").write_bytes(_png(16320, 12240, 8, b""))  # header of a 200 Mpx photo, no pixels
    with pytest.raises(images.ImageError) as error:
        images.load_rgb(tmp_path / "phone.png")
    assert "truncated" in str(error.value)  # it got as far as decoding: no size refusal


def test_a_decoder_bug_on_garbled_data_is_an_image_error(tmp_path):
    """A TIFF with one flipped bit in a tag makes Pillow's plugin raise TypeError; load_rgb names the file."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 40, 3), 90, np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    data[72] ^= 1  # the bit the fuzz test found, in a tag of the image file directory
    path = tmp_path / "garbled.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(images.ImageError, match=r"garbled\.tif: corrupt image data \(TypeError"):
        images.load_rgb(str(path))
