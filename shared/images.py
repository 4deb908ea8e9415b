"""Screenshots made small enough to store: re-encoded with Pillow to WebP or JPEG, quality stepped down until the
image fits a target size."""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from PIL import Image, UnidentifiedImageError

_START_QUALITY = 85
_QUALITY_STEP = 10
# Each downscale shrinks by at most half per side, so a few rounds already reach 1/8 or less of the width.
_MAX_DOWNSCALES = 4
_MIN_SCALE_FACTOR = 0.5
# Encoded size does not shrink exactly with the area, so aim a little below the target to avoid an extra round.
_DOWNSCALE_MARGIN = 0.95
# libwebp cannot encode an image with a side longer than this.
_WEBP_MAX_SIDE = 16383

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CONTENT_TYPES: dict[str, str] = {"webp": "image/webp", "jpeg": "image/jpeg"}


@dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded screenshot and what it took to get it under the target size."""

    data: bytes
    content_type: str  # "image/webp" or "image/jpeg"
    width: int
    height: int
    quality: int


def fit_screenshot(
    png: bytes,
    *,
    target_kb: int = 200,
    image_format: Literal["webp", "jpeg"] = "webp",
    max_height: int = 8000,
    min_quality: int = 20,
) -> Encoded:
    """Re-encode a PNG screenshot so it fits in `target_kb` kilobytes, if that can be done.

    The image is cropped to its top `max_height` pixels, then encoded at quality 85, 75, ... down to `min_quality`,
    stopping at the first result that fits. If none does, it is downscaled (aspect ratio kept) and encoded again at
    `min_quality`, a few times at most. When the target cannot be met the smallest result is returned rather than
    an error: a big screenshot is still better than none.

    Raises ValueError for bytes that are not an image, or for out-of-range arguments.
    """
    if target_kb < 1:
        raise ValueError(f"target_kb must be at least 1, got {target_kb}")
    if max_height < 1:
        raise ValueError(f"max_height must be at least 1, got {max_height}")
    if not 1 <= min_quality <= _START_QUALITY:
        raise ValueError(f"min_quality must be between 1 and {_START_QUALITY}, got {min_quality}")
    if image_format not in _CONTENT_TYPES:
        raise ValueError(f"image_format must be 'webp' or 'jpeg', got {image_format!r}")

    if image_format == "webp":
        max_height = min(max_height, _WEBP_MAX_SIDE)
    image = _decode(png, max_height)
    if image_format == "webp" and image.width > _WEBP_MAX_SIDE:
        image = _scaled(image, _WEBP_MAX_SIDE / image.width)

    target = target_kb * 1024
    content_type = _CONTENT_TYPES[image_format]

    best: Encoded | None = None
    data = b""
    for quality in _qualities(min_quality):
        data = _encode(image, image_format, quality)
        result = Encoded(data, content_type, image.width, image.height, quality)
        if len(data) <= target:
            return result
        if best is None or len(data) < len(best.data):
            best = result
    assert best is not None  # the quality sequence is never empty

    scale = 1.0
    for _ in range(_MAX_DOWNSCALES):
        # `data` is the last encoding, made at the current scale and min_quality.
        scale *= max(_MIN_SCALE_FACTOR, math.sqrt(target / len(data)) * _DOWNSCALE_MARGIN)
        # Resample from the full-size image each round so the blur of earlier rounds does not add up.
        smaller = _scaled(image, scale)
        data = _encode(smaller, image_format, min_quality)
        result = Encoded(data, content_type, smaller.width, smaller.height, min_quality)
        if len(data) <= target:
            return result
        if len(data) < len(best.data):
            best = result
        if smaller.width == 1 and smaller.height == 1:
            break
    return best


def _qualities(min_quality: int) -> list[int]:
    """85, 75, 65, ... for as long as it stays above `min_quality`, then `min_quality` itself."""
    return [*range(_START_QUALITY, min_quality, -_QUALITY_STEP), min_quality]


def _decode(png: bytes, max_height: int) -> Image.Image:
    """The screenshot as an RGB image no taller than `max_height`, transparency flattened onto white."""
    try:
        with Image.open(io.BytesIO(_clip_png_height(png, max_height))) as opened:
            opened.load()
            image: Image.Image = opened
            if image.height > max_height:
                image = image.crop((0, 0, image.width, max_height))
            return _to_rgb(image)
    except UnidentifiedImageError as e:
        raise ValueError(f"not a decodable image ({len(png)} bytes)") from e
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt or unsupported image ({len(png)} bytes): {e}") from e


def _clip_png_height(png: bytes, max_height: int) -> bytes:
    """The PNG with its header claiming at most `max_height` rows, so Pillow decodes only the top of the image.

    Full-page screenshots of endless pages can be hundreds of thousands of pixels tall: decoding them whole would
    cost gigabytes and trips Pillow's decompression-bomb check before there is any chance to crop. Rows of a
    non-interlaced PNG are stored top to bottom, so the decoder simply stops after `max_height` of them and the
    rest of the data is skipped. Anything else is returned unchanged and cropped after decoding.
    """
    # Signature, then the IHDR chunk: length, type, width, height, bit depth, colour type, compression, filter,
    # interlace, CRC.
    if len(png) < 33 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        return png
    (height,) = struct.unpack(">I", png[20:24])
    interlaced = png[28] != 0
    if height <= max_height or interlaced:
        return png
    header = png[12:20] + struct.pack(">I", max_height) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the encoders; transparent areas (omit_background screenshots) become white rather than black."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap first shrinks by whole factors cheaply, then resamples the rest with Lanczos.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(image: Image.Image, image_format: Literal["webp", "jpeg"], quality: int) -> bytes:
    buffer = io.BytesIO()
    if image_format == "webp":
        # method 4 of 0-6: most of the size gain of the slow methods at a fraction of their time.
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
