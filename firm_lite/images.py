"""Decoding edit images into the RGB pictures the critic sees, and the image-token budget.

Every image goes through :func:`load_image`, whether it comes from a path (CLI, manifests) or
bytes (the reward server), so a score does not depend on which door the image came in by:

- EXIF orientation is applied (a phone photo is scored the way it is displayed);
- the first frame of an animated/multi-frame file is used;
- 16-bit and 32-bit grey images are scaled to 8 bits (not clipped);
- CMYK, palette and grey images are converted to RGB with Pillow;
- alpha (RGBA, LA, palette transparency) is flattened by compositing onto opaque white, as
  ``qwen_vl_utils.to_rgb`` does for Qwen-VL models;
- empty, truncated and non-image files, files that are not regular files (devices, FIFOs),
  formats outside :data:`ALLOWED_FORMATS` and images over ``max_image_pixels`` (decompression
  bombs) are refused with an :class:`~firm_lite.errors.ImageError` naming the input;
- memory is bounded by design: files are read by Pillow as it decodes (never slurped first), each
  image is decoded once, and given the critic's budget an image much larger than the budget uses
  is shrunk while decoding (:func:`reduce_factor`), so at most one full-size decode exists at a
  time and what is kept is sized by the budget.

:class:`ImageBudget` is the Qwen3-VL processor's min/max pixel range. It decides how many image
tokens an image becomes, so it is explicit, configurable and written into every output record:
a different budget changes scores, and must not be mistaken for quantization drift.
"""

from __future__ import annotations

import io
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 64 MP: about 4x the largest budget the Qwen3-VL processor can use at all (16,777,216 pixels =
# 16,384 image tokens), i.e. twice its largest side on both axes. A bigger image carries detail no
# budget keeps, so refusing it loses nothing, and it bounds one transient decode at 64 MP x 4
# bytes (RGBA) = 256 MB. Images are decoded one at a time and shrunk at once (see load_image).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_ASPECT_RATIO = 200  # the Qwen-VL resizer refuses more extreme shapes
BACKGROUND = (255, 255, 255)
ORIENTATION_TAG = 0x0112
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"})
# What edit images come as. Pillow's other plugins stay off: EPS/PS shell out to Ghostscript, and
# rarely used decoders are attack surface for no user's benefit. (Phones' MPO files open as JPEG.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

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


WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_8bit(im: Image.Image, factor: int = 1) -> Image.Image:
    """Scale a high-bit-depth grey image to 8-bit L by its nominal range, box-averaging ``factor``
    x ``factor`` blocks first. Pillow cannot reduce these modes, so the averaging happens on the
    pixels' own integer array (one copy of the decode) into a small float array: never a
    full-size float copy."""
    arr = np.asarray(im)
    if factor > 1:
        h, w = arr.shape[0] // factor, arr.shape[1] // factor
        arr = arr[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3), dtype=np.float64)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
        scaled = arr.astype(np.float64) / 257.0
    elif im.mode == "F":
        scaled = arr.astype(np.float64) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
    else:
        scaled = arr.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited onto white."""
    if im.mode in WIDE_GREY_MODES:
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


def _read_regular_file(path: Path, name: str) -> Any:
    """An open binary file for ``path``, refusing anything that is not a regular file: a device
    (``/dev/zero`` never ends), a FIFO (opening blocks until a writer comes) or a folder."""
    from firm_lite.errors import ImageError

    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{name}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{name}: not a regular file (a device, FIFO or socket); give an image file")
    if st.st_size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        return path.open("rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror})") from None


def reduce_factor(width: int, height: int, budget: ImageBudget | None) -> int:
    """The integer factor an image can be shrunk by before the processor sees it, losing nothing
    the budget keeps: the result stays at least twice the size the processor resizes it to on both
    sides (so its antialiased resize still averages real pixels). 1 means 'decode as is'."""
    if budget is None:
        return 1
    factor = budget.patch_size * budget.merge_size
    th, tw = _smart_resize(height, width, factor, budget.min_pixels, budget.max_pixels)
    return max(1, min(width // (2 * tw), height // (2 * th)))


def kept_bytes(width: int, height: int, budget: ImageBudget | None) -> int:
    """Bytes of the RGB image :func:`load_image` keeps for a width x height input (for servers
    that budget memory before decoding): at most ~4x the budget's max_pixels x 3 bytes."""
    factor = reduce_factor(width, height, budget)
    return (width // factor) * (height // factor) * 3


def _open(fp: Any, name: str, max_image_pixels: int) -> Image.Image:
    """Pillow's lazy open (header only) with the guards that need no pixel data."""
    from firm_lite.errors import ImageError

    Image.init()  # registers every plugin once, so each allowed format can be named below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image firm-lite reads ({', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: broken or truncated image ({exc})") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_image_pixels:
        raise ImageError(f"{name}: {width}x{height} is over the {max_image_pixels:,}-pixel limit (possible "
                         "decompression bomb); raise --max-image-pixels if you trust it")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(f"{name}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1, which "
                         "the Qwen-VL image processor refuses")
    return im


def probe_image(source: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes from the header alone (no pixel is decoded), or
    the ImageError :func:`load_image` would raise for the size guards. For servers: refuse early
    and estimate what decoding will cost before queueing."""
    im = _open(io.BytesIO(source), _describe(source), max_image_pixels)
    try:
        return im.size
    finally:
        im.close()


def load_image(source: ImageInput, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               budget: ImageBudget | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) into an RGB image, or raise ImageError.

    With ``budget``, an image much larger than the budget keeps is shrunk while it is decoded
    (JPEG: decoded at 1/2, 1/4 or 1/8 scale; others: box-reduced right after decoding) by
    :func:`reduce_factor`, so what stays in memory is bounded by the budget, not by the file.
    """
    from firm_lite.errors import ImageError

    name = _describe(source)
    if isinstance(source, Image.Image):
        return _finish(source, owned=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError(f"{name}: empty file (0 bytes)")
        fp: Any = io.BytesIO(source)
    else:
        fp = _read_regular_file(Path(source), name)
    try:
        im = _open(fp, name, max_image_pixels)
        factor = reduce_factor(*im.size, budget)
        try:
            im.seek(0)
            if factor > 1 and im.format in ("JPEG", "MPO"):
                w, h = im.size
                im.draft("RGB", (w // factor, h // factor))  # DCT scaling: never decodes the full size
                factor = reduce_factor(*im.size, budget)
            im.load()
            if factor > 1 and im.mode in WIDE_GREY_MODES:
                im = _to_8bit(im, factor)  # 16/32-bit grey: averaged on its own integers
            elif factor > 1:
                if im.mode not in REDUCIBLE_MODES:  # palette, 1-bit: convert first
                    im = to_rgb(im)
                im = im.reduce(factor)  # the full-size decode is dropped here
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{name}: broken or truncated image ({exc})") from None
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: image is too large (decompression bomb guard)") from None
    finally:
        fp.close()
    return _finish(im, owned=True)


def _finish(im: Image.Image, owned: bool) -> Image.Image:
    """EXIF orientation and RGB conversion, without a second full copy when nothing changes."""
    from firm_lite.errors import ImageError

    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"<PIL image>: image has no pixels ({width}x{height})")
    try:
        orientation = im.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):
        orientation = 1  # unreadable EXIF: keep the stored orientation rather than fail the pair
    if orientation != 1:
        try:
            im = ImageOps.exif_transpose(im, in_place=False)
        except (OSError, ValueError, SyntaxError):
            pass
    return to_rgb(im)


def encode_jpeg(im: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image (what reward-server clients send)."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
