"""transform: decode once, keep aspect, centre-crop, re-encode; bad bytes raise ImageDecodeError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from bigimage.data.transform import ImageDecodeError, crop_box, resize_and_crop, transform_jpeg

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def thirds(width: int, height: int, horizontal: bool = True) -> Image.Image:
    """An image whose first/middle/last thirds (along the long side) are red/green/blue."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    n = width if horizontal else height
    for k, color in enumerate((RED, GREEN, BLUE)):
        sl = slice(k * n // 3, (k + 1) * n // 3)
        if horizontal:
            arr[:, sl] = color
        else:
            arr[sl, :] = color
    return Image.fromarray(arr, "RGB")


def near(pixel, color, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, color))


def test_crop_box_is_the_centred_square():
    assert crop_box(400, 200) == (100.0, 0.0, 300.0, 200.0)
    assert crop_box(200, 400) == (0.0, 100.0, 200.0, 300.0)
    assert crop_box(301, 300) == (0.5, 0.0, 300.5, 300.0)
    assert crop_box(50, 50) == (0.0, 0.0, 50.0, 50.0)
    with pytest.raises(ValueError):
        crop_box(0, 10)


@pytest.mark.parametrize("horizontal", [True, False])
def test_aspect_kept_then_centre_cropped(horizontal):
    """A 600x200 image with red|green|blue thirds: the square output is (almost) all green.

    A squashing resize would keep all three colours; keeping the aspect and cropping the centre
    keeps exactly the middle third.
    """
    img = thirds(600, 200) if horizontal else thirds(200, 600, horizontal=False)
    out = decode(transform_jpeg(encode(img, quality=95), 64))
    arr = np.asarray(out)
    assert out.size == (64, 64)
    for pixel in (arr[32, 32], arr[2, 2], arr[61, 61], arr[32, 2], arr[2, 32]):
        assert near(pixel, GREEN), pixel


def test_wider_image_shows_the_middle_not_the_edges():
    img = thirds(400, 200)  # the centred 200x200 square spans x 100..300: red | green | blue
    arr = np.asarray(decode(transform_jpeg(encode(img, quality=95), 60)))
    assert near(arr[30, 30], GREEN)
    assert near(arr[30, 3], RED)  # x=100..133 of the source is still red
    assert near(arr[30, 56], BLUE)


@pytest.mark.parametrize("size", [(500, 375), (333, 480), (64, 40), (10, 10), (192, 192)])
def test_output_is_square_rgb_jpeg(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    data = transform_jpeg(encode(img), 48)
    out = decode(data)
    assert out.format == "JPEG"
    assert out.size == (48, 48) and out.mode == "RGB"
    assert np.asarray(out).shape == (48, 48, 3)
    assert "progressive" not in out.info and "progression" not in out.info  # baseline


def test_small_images_are_upscaled():
    img = thirds(30, 10)
    out = decode(transform_jpeg(encode(img, fmt="PNG"), 100))
    assert out.size == (100, 100)
    assert near(np.asarray(out)[50, 50], GREEN)


def test_grayscale_png_rgba_and_palette_inputs():
    gray = Image.fromarray(np.full((80, 120), 128, dtype=np.uint8), "L")
    for data in (encode(gray), encode(gray, fmt="PNG")):
        out = decode(transform_jpeg(data, 32))
        assert out.mode == "RGB" and out.size == (32, 32)
        assert near(np.asarray(out)[16, 16], (128, 128, 128), tol=6)

    rgba = Image.new("RGBA", (90, 60), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 90, 30))  # top half fully transparent (hidden colour: blue)
    out = np.asarray(decode(transform_jpeg(encode(rgba, fmt="PNG"), 40)))
    assert out.shape == (40, 40, 3)
    assert near(out[5, 20], (255, 255, 255))  # transparent -> white, not the hidden blue
    assert near(out[35, 20], (255, 0, 0))

    palette = Image.new("P", (50, 50), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    out = np.asarray(decode(transform_jpeg(encode(palette, fmt="PNG"), 20)))
    assert near(out[10, 10], (10, 200, 30))

    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))
    out = np.asarray(decode(transform_jpeg(encode(cmyk), 16)))
    assert out.shape == (16, 16, 3)


def test_sixteen_bit_png():
    arr = np.full((40, 60), 65535 // 2, dtype=np.uint16)
    img = Image.fromarray(arr)
    out = np.asarray(decode(transform_jpeg(encode(img, fmt="PNG"), 20)))
    assert out.shape == (20, 20, 3)
    assert near(out[10, 10], (127, 127, 127), tol=8)


def test_draft_decoding_keeps_quality_close_to_a_full_decode():
    """draft() scales in the DCT domain; the result must match a full decode + resize closely."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((1600, 1200), Image.Resampling.BICUBIC)  # smooth content
    data = encode(img, quality=95)
    fast = np.asarray(decode(transform_jpeg(data, 100, quality=95)), dtype=np.float32)
    full = np.asarray(resize_and_crop(decode(data).convert("RGB"), 100), dtype=np.float32)
    assert np.abs(fast - full).mean() < 4.0


def test_quality_changes_size():
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8), "RGB")
    data = encode(img)
    assert len(transform_jpeg(data, 128, quality=30)) < len(transform_jpeg(data, 128, quality=95))


def test_resize_and_crop_on_pil_image():
    out = resize_and_crop(thirds(300, 100), 50)
    assert out.size == (50, 50)
    assert near(out.getpixel((25, 25)), GREEN)


def test_exif_orientation_is_applied():
    img = thirds(300, 100)  # wide; EXIF 6 = rotate 90 clockwise on display -> tall
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, exif=exif.tobytes(), quality=95)
    arr = np.asarray(decode(transform_jpeg(data, 30)))
    assert near(arr[15, 15], GREEN)  # the centre is still the middle third


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is a text file, not an image\n" * 20, "not a recognised image"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not a recognised image|cannot decode"),  # JPEG magic, garbage
    ],
)
def test_bad_bytes_raise_image_decode_error(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        transform_jpeg(data, 32)


def test_truncated_jpeg_raises():
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), "RGB")
    data = encode(img)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for cut in (len(data) // 2, len(data) - 100):
        with pytest.raises(ImageDecodeError):
            transform_jpeg(data[:cut], 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_raises():
    rng = np.random.default_rng(4)
    img = Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8), "RGB")
    data = encode(img, fmt="PNG")
    with pytest.raises(ImageDecodeError):
        transform_jpeg(data[: len(data) // 2], 32)


def test_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 0}, {"image_size": 32, "quality": 0}, {"image_size": 32, "quality": 101}]
)
def test_bad_arguments(kwargs):
    data = encode(Image.new("RGB", (10, 10)))
    with pytest.raises(ValueError) as info:
        transform_jpeg(data, **kwargs)
    assert not isinstance(info.value, ImageDecodeError)
