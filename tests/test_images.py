"""shared.images against real Pillow: generated PNGs that compress badly (noise) and well (flat page-like images)."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Literal

import pytest
from PIL import Image, ImageDraw

from shared.images import Encoded, fit_screenshot

Format = Literal["webp", "jpeg"]

CONTENT_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg"}
PIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1: the tests care about decoding, not about the PNG being small.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 1) -> Image.Image:
    """Random pixels: the worst case for any lossy codec."""
    return Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def block_noise(width: int, height: int, block: int) -> Image.Image:
    """Noise in `block`-pixel squares, so it stays noise even after downscaling by `block`."""
    return noise(width // block, height // block).resize((width, height), Image.Resampling.NEAREST)


def page(width: int = 1280, height: int = 2000) -> Image.Image:
    """A flat page-like image: white background, a header bar, text and boxes. Compresses easily."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 80), fill=(30, 60, 120))
    draw.text((20, 25), "trawl: a page worth keeping", fill="white")
    for row, top in enumerate(range(120, height - 100, 160)):
        draw.rectangle((40, top, width - 40, top + 120), outline=(200, 200, 200), width=2)
        draw.text((60, top + 20), f"Item {row}: some text that stands in for a paragraph.", fill="black")
        draw.rectangle((60, top + 60, 260, top + 100), fill=(220, 80, 40))
    return image


def grey_png(width: int, height: int, bands: list[tuple[int, int]]) -> bytes:
    """A greyscale PNG of horizontal (rows, grey level) bands, written by hand so that Pillow never holds it whole.

    The pixel data is split into 64 KB IDAT chunks, as real encoders (Chromium's included) do.
    """
    compressor = zlib.compressobj(1)
    stream = [compressor.compress((b"\x00" + bytes([level]) * width) * rows) for rows, level in bands]
    stream.append(compressor.flush())
    data = b"".join(stream)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    idats = b"".join(chunk(b"IDAT", data[i : i + 65536]) for i in range(0, len(data), 65536))
    return b"\x89PNG\r\n\x1a\n" + header + idats + chunk(b"IEND", b"")


def decoded(result: Encoded, image_format: str) -> Image.Image:
    image = Image.open(io.BytesIO(result.data))
    image.load()
    assert image.format == PIL_FORMATS[image_format]
    assert image.size == (result.width, result.height)
    assert result.content_type == CONTENT_TYPES[image_format]
    return image


@pytest.mark.parametrize("image_format", ["webp", "jpeg"])
def test_noise_steps_quality_down_until_it_fits(image_format: Format) -> None:
    # Noise at 640x480 is about 220 KB at quality 85 in both formats, and well under 200 KB further down.
    result = fit_screenshot(png_bytes(noise(640, 480)), target_kb=200, image_format=image_format)

    assert len(result.data) <= 200 * 1024
    assert result.quality < 85
    assert (result.width, result.height) == (640, 480)
    decoded(result, image_format)


def test_large_noise_is_downscaled_when_min_quality_is_not_enough() -> None:
    result = fit_screenshot(png_bytes(noise(1280, 4000)), target_kb=200, image_format="jpeg")

    assert len(result.data) <= 200 * 1024
    assert result.quality == 20
    assert result.width < 1280
    assert result.width / result.height == pytest.approx(1280 / 4000, rel=0.01)
    decoded(result, "jpeg")


@pytest.mark.parametrize("image_format", ["webp", "jpeg"])
def test_flat_page_stays_at_quality_85(image_format: Format) -> None:
    result = fit_screenshot(png_bytes(page()), target_kb=200, image_format=image_format)

    assert len(result.data) <= 200 * 1024
    assert result.quality == 85
    assert (result.width, result.height) == (1280, 2000)
    decoded(result, image_format)


@pytest.mark.parametrize("image_format", ["webp", "jpeg"])
def test_unreachable_target_returns_the_smallest_result(image_format: Format) -> None:
    # 64-pixel blocks survive every downscale as noise, so not even 1 KB can be reached.
    image = block_noise(1024, 1024, 64)
    first = io.BytesIO()
    image.save(first, format=PIL_FORMATS[image_format], quality=85)

    result = fit_screenshot(png_bytes(image), target_kb=1, image_format=image_format)

    assert len(result.data) > 1024
    assert len(result.data) < len(first.getvalue())
    assert result.quality == 20
    decoded(result, image_format)


@pytest.mark.parametrize("image_format", ["webp", "jpeg"])
def test_tall_screenshot_is_cropped_to_its_top(image_format: Format) -> None:
    image = Image.new("RGB", (400, 3000), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 400, 1000))

    result = fit_screenshot(png_bytes(image), max_height=1000, image_format=image_format)

    assert (result.width, result.height) == (400, 1000)
    red, green, blue = decoded(result, image_format).convert("RGB").getpixel((200, 990))  # type: ignore[misc]
    assert red > 200 and green < 50 and blue < 50


def test_endless_page_is_cropped_without_decoding_it_whole() -> None:
    # 200 million pixels: Pillow refuses to decode that much as a likely decompression bomb, so this only works if
    # just the top 8000 rows are decoded.
    width, height = 1000, 200_000
    png = grey_png(width, height, [(100, 0), (height - 100, 255)])
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png))

    result = fit_screenshot(png, image_format="jpeg")

    assert (result.width, result.height) == (width, 8000)
    image = decoded(result, "jpeg").convert("L")
    assert image.getpixel((500, 50)) < 20  # type: ignore[operator]
    assert image.getpixel((500, 7990)) > 235  # type: ignore[operator]


def test_non_png_input_is_cropped_after_decoding() -> None:
    buffer = io.BytesIO()
    page(800, 3000).save(buffer, format="JPEG", quality=90)

    result = fit_screenshot(buffer.getvalue(), max_height=1200, image_format="webp")

    assert (result.width, result.height) == (800, 1200)
    decoded(result, "webp")


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (300, 200), (0, 0, 0, 0))

    result = fit_screenshot(png_bytes(image), image_format="jpeg")

    assert decoded(result, "jpeg").convert("L").getpixel((150, 100)) > 245  # type: ignore[operator]


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64])
def test_invalid_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="image"):
        fit_screenshot(data)


def test_truncated_png_raises_value_error() -> None:
    data = png_bytes(noise(200, 200))

    with pytest.raises(ValueError, match="image"):
        fit_screenshot(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_kb": 0}, "target_kb"),
        ({"target_kb": -5}, "target_kb"),
        ({"max_height": 0}, "max_height"),
        ({"min_quality": 0}, "min_quality"),
        ({"min_quality": 90}, "min_quality"),
        ({"image_format": "gif"}, "image_format"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_screenshot(png_bytes(page(100, 100)), **kwargs)  # type: ignore[arg-type]
