"""Every kind of bad or unusual image either decodes to the RGB the critic sees, or is refused
with a one-line message naming the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firm_lite.errors import ImageError
from firm_lite.images import ImageBudget, load_image


def _save(tmp_path: Path, name: str, im: Image.Image, **kw) -> Path:
    p = tmp_path / name
    im.save(p, **kw)
    return p


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    out = load_image(_save(tmp_path, "a.png", Image.fromarray(arr)))
    assert out.mode == "RGB" and out.size == (30, 20)
    assert np.array_equal(np.asarray(out), arr)


def test_missing_empty_folder_and_non_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.jpg")


def test_truncated_jpeg_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="JPEG")
    data = buf.getvalue()[: len(buf.getvalue()) // 2]
    with pytest.raises(ImageError, match="truncated"):
        load_image(data)


def test_decompression_bomb_refused() -> None:
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")  # tiny file, 16 MP
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(buf.getvalue(), max_image_pixels=1_000_000)


def test_cmyk_converted(tmp_path: Path) -> None:
    out = load_image(_save(tmp_path, "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0))))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full -> red


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    out = load_image(_save(tmp_path, "g16.png", Image.fromarray(arr)))
    assert out.mode == "RGB"
    assert abs(out.getpixel((0, 0))[0] - 127) <= 1


def test_alpha_flattened_onto_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 255, 255))
    out = load_image(_save(tmp_path, "a.png", im))
    assert out.getpixel((1, 1)) == (255, 255, 255)  # fully transparent -> white
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    im.info["transparency"] = 0
    out = load_image(_save(tmp_path, "p.png", im, transparency=0))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    p = tmp_path / "o.jpg"
    im.save(p, exif=exif.tobytes())
    assert load_image(p).size == (20, 40)


def test_extreme_aspect_ratio_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2000, 5)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(buf.getvalue())


def test_budget_token_count_matches_qwen_rule() -> None:
    b = ImageBudget(min_pixels=256 * 32 * 32, max_pixels=1280 * 32 * 32)
    assert b.tokens_for(1024, 1024) == 1024  # the reference's 1024x1024 -> 1024 tokens
    small = ImageBudget(min_pixels=64 * 64, max_pixels=128 * 128)
    assert small.tokens_for(320, 212) <= 16
    with pytest.raises(ValueError):
        ImageBudget(min_pixels=10, max_pixels=5)
