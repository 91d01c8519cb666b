"""Pixel operations the edit families are made of, on float32 RGB arrays in [0, 255].

Kept apart from :mod:`firm_lite.dev.editset.families` so that what an edit *means* (wording, how it
goes partial or wrong) and what it *does to pixels* can be read and tested separately. Every
operation is pure (returns a new array) and deterministic; none draws random numbers.
Boxes are ``(y0, x0, y1, x1)`` fractions of the image, so one region name fits every shape.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Box = tuple[float, float, float, float]


def pixel_box(box: Box, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A fractional box as integer ``(y0, x0, y1, x1)`` pixel bounds, clipped to the image (never empty)."""
    h, w = shape[:2]
    y0, x0 = min(max(int(round(box[0] * h)), 0), h - 1), min(max(int(round(box[1] * w)), 0), w - 1)
    y1, x1 = min(max(y0 + 1, int(round(box[2] * h))), h), min(max(x0 + 1, int(round(box[3] * w))), w)
    return y0, x0, y1, x1


def half_box(box: Box, vertical: bool) -> Box:
    """The left (or top, when ``vertical``) half of a box: "half the region" partial edits."""
    y0, x0, y1, x1 = box
    return (y0, x0, (y0 + y1) / 2, x1) if vertical else (y0, x0, y1, (x0 + x1) / 2)


def overlaps(a: Box, b: Box, margin: float = 0.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def luminance(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's ``convert("L")``, broadcast back to three channels."""
    lum = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(lum[..., None], 3, axis=2)


def blend(a: np.ndarray, b: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    return a * (1.0 - alpha) + b * alpha


def in_box(img: np.ndarray, changed: np.ndarray, box: Box) -> np.ndarray:
    """``img`` with ``changed``'s pixels inside ``box`` (and its own elsewhere)."""
    y0, x0, y1, x1 = pixel_box(box, img.shape)
    out = img.copy()
    out[y0:y1, x0:x1] = changed[y0:y1, x0:x1]
    return out


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(_to_pil(img).filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)


def pixelate(img: np.ndarray, block: int) -> np.ndarray:
    """Mean colour per ``block`` x ``block`` tile (edge tiles are smaller)."""
    h, w = img.shape[:2]
    out = img.copy()
    for y in range(0, h, block):
        for x in range(0, w, block):
            out[y:y + block, x:x + block] = img[y:y + block, x:x + block].mean(axis=(0, 1))
    return out


def fill_from_border(img: np.ndarray, box: Box) -> np.ndarray:
    """Paint over a box with a smooth surface interpolated from the pixels around it: what a
    simple "remove this" looks like (the content disappears, the surroundings flow in)."""
    h, w = img.shape[:2]
    y0, x0, y1, x1 = pixel_box(box, img.shape)
    top, bottom = img[max(y0 - 1, 0), x0:x1], img[min(y1, h - 1), x0:x1]
    left, right = img[y0:y1, max(x0 - 1, 0)], img[y0:y1, min(x1, w - 1)]
    ys = (np.arange(y1 - y0, dtype=np.float32) + 1) / (y1 - y0 + 1)
    xs = (np.arange(x1 - x0, dtype=np.float32) + 1) / (x1 - x0 + 1)
    vertical = top[None] * (1 - ys)[:, None, None] + bottom[None] * ys[:, None, None]
    horizontal = left[:, None] * (1 - xs)[None, :, None] + right[:, None] * xs[None, :, None]
    # weight each direction by closeness to its own borders, so every edge meets its border
    wv = np.minimum(ys, 1 - ys)[:, None, None]
    wh = np.minimum(xs, 1 - xs)[None, :, None]
    patch = (vertical * wh + horizontal * wv) / (wv + wh)
    out = img.copy()
    out[y0:y1, x0:x1] = patch
    return out


def shape_mask(shape: tuple[int, ...], kind: str, center: tuple[float, float], radius: float) -> np.ndarray:
    """Anti-aliased (4x supersampled) mask in [0, 1] of a circle, square or triangle."""
    h, w = shape[:2]
    s = 4
    canvas = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    cy, cx, r = center[0] * h * s, center[1] * w * s, radius * min(h, w) * s
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "square":
        draw.rectangle((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=255)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    small = canvas.resize((w, h), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


def paint_shape(img: np.ndarray, kind: str, center: tuple[float, float], radius: float,
                colour: tuple[int, int, int], alpha: float = 1.0) -> np.ndarray:
    mask = shape_mask(img.shape, kind, center, radius) * alpha
    return blend(img, np.array(colour, dtype=np.float32)[None, None], mask)


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation. Multiples of 90 are exact (and swap height and width);
    other angles keep the frame and fill the uncovered corners with black."""
    if degrees % 90 == 0:
        return np.ascontiguousarray(np.rot90(img, k=int(degrees // 90) % 4))
    turned = _to_pil(img).rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))
    return np.asarray(turned, dtype=np.float32)


def zoom(img: np.ndarray, box: Box) -> np.ndarray:
    """Crop ``box`` and resize it back to the full frame (Lanczos)."""
    h, w = img.shape[:2]
    y0, x0, y1, x1 = pixel_box(box, img.shape)
    crop = _to_pil(img[y0:y1, x0:x1])
    return np.asarray(crop.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
