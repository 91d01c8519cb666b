"""Decoding edit images into the RGB pictures the critic sees, and the image-token budget.

Every image goes through :func:`load_image`, whether it comes from a path (CLI, manifests) or
bytes (the reward server), so a score does not depend on which door the image came in by:

- EXIF orientation is applied (a phone photo is scored the way it is displayed);
- the first frame of an animated/multi-frame file is used;
- 16-bit and 32-bit grey images are scaled to 8 bits (not clipped);
- CMYK, palette and grey images are converted to RGB with Pillow;
- alpha (RGBA, LA, palette transparency) is flattened by compositing onto opaque white, as
  ``qwen_vl_utils.to_rgb`` does for Qwen-VL models;
- empty, truncated and non-image files, and images over ``max_image_pixels`` (decompression
  bombs), are refused with an :class:`~firm_lite.errors.ImageError` naming the input.

:class:`ImageBudget` is the Qwen3-VL processor's min/max pixel range. It decides how many image
tokens an image becomes, so it is explicit, configurable and written into every output record:
a different budget changes scores, and must not be mistaken for quantization drift.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000  # 64 MP: larger inputs are refused as possible bombs.
MAX_ASPECT_RATIO = 200  # the Qwen-VL resizer refuses more extreme shapes
BACKGROUND = (255, 255, 255)

ImageInput = str | Path | bytes | Image.Image


@dataclass(frozen=True)
class ImageBudget:
    """Pixel range every image is resized into before patching (Qwen-VL ``smart_resize``).

    Image tokens per image = (H' / 32) * (W' / 32) for patch 16 and merge 2, where H' x W' is the
    resized size with min_pixels <= H' * W' <= max_pixels.
    """

    min_pixels: int
    max_pixels: int
    patch_size: int = 16
    merge_size: int = 2

    def __post_init__(self) -> None:
        if self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
            raise ValueError(f"image budget needs 0 < min_pixels <= max_pixels (got {self.min_pixels}, "
                             f"{self.max_pixels})")

    @classmethod
    def from_processor(cls, processor: Any, min_pixels: int | None = None,
                       max_pixels: int | None = None) -> ImageBudget:
        """The processor's own budget, with optional overrides."""
        ip = processor.image_processor
        size = dict(getattr(ip, "size", None) or {})
        lo = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
        hi = size.get("longest_edge") or getattr(ip, "max_pixels", None)
        return cls(
            min_pixels=int(min_pixels if min_pixels is not None else lo),
            max_pixels=int(max_pixels if max_pixels is not None else hi),
            patch_size=int(getattr(ip, "patch_size", 16)),
            merge_size=int(getattr(ip, "merge_size", 2)),
        )

    def processor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the processor call that pin this budget."""
        return {"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}

    def as_record(self) -> dict[str, int]:
        return asdict(self)

    def tokens_for(self, width: int, height: int) -> int:
        """Image tokens this budget gives a width x height image (after merge)."""
        factor = self.patch_size * self.merge_size
        h, w = _smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        return (h // factor) * (w // factor)


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    import math

    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _describe(source: ImageInput) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale high-bit-depth grey images to 8-bit L by their nominal range."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
        scaled = arr.astype(np.float64) / 257.0
    elif im.mode == "F":
        scaled = arr.astype(np.float64) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
    else:
        scaled = arr.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited onto white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def load_image(source: ImageInput, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) into an RGB image, or raise ImageError."""
    from firm_lite.errors import ImageError

    name = _describe(source)
    if isinstance(source, Image.Image):
        im = source
    else:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            path = Path(source)
            if not path.exists():
                raise ImageError(f"{name}: file not found")
            if path.is_dir():
                raise ImageError(f"{name}: is a folder, not an image file")
            data = path.read_bytes()
        if not data:
            raise ImageError(f"{name}: empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                width, height = im.size
                if width * height > max_image_pixels:
                    raise ImageError(f"{name}: {width}x{height} is over the {max_image_pixels:,}-pixel "
                                     "limit (possible decompression bomb); raise --max-image-pixels "
                                     "if you trust it")
                im.seek(0)
                im.load()
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image Pillow can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: image is too large (decompression bomb guard)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{name}: broken or truncated image ({exc})") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(f"{name}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1, which "
                         "the Qwen-VL image processor refuses")
    try:
        im = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError):
        pass  # unreadable EXIF: keep the stored orientation rather than fail the pair
    return to_rgb(im)


def encode_jpeg(im: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image (what reward-server clients send)."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
