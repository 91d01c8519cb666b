"""Images embedded in a report page: downscaled, de-duplicated, and never a crash.

A report is one file that works offline and by mail, so every image is embedded as a ``data:``
URI, twice at most: a thumbnail (long side ``thumb_px``) for the gallery and a larger copy (long
side ``view_px``) shown when the thumbnail is clicked. A small JPEG/PNG/WebP file that already
fits the thumbnail is embedded as it is (its exact pixels, no second copy). Each file is embedded
once however many pairs use it (a source photo edited several ways).

Every image is decoded by :func:`firm_lite.images.load_image`, the decoder scoring uses, so a
file the critic refused is refused here too; a missing or broken file becomes a placeholder in the
page and an entry in :attr:`ImageStore.missing`, never an exception.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from firm_lite.errors import ImageError
from firm_lite.images import ImageBudget, load_image

THUMB_PX = 160
VIEW_PX = 640
_AS_IS_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_AS_IS_MAX_BYTES = 48_000


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _jpeg(im: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return _data_uri("image/jpeg", buf.getvalue())


def _as_is(path: Path, size: tuple[int, int], thumb_px: int) -> str | None:
    """The file's own bytes as a data URI when it is small enough to be its own thumbnail."""
    if max(size) > thumb_px or path.stat().st_size > _AS_IS_MAX_BYTES:
        return None
    with Image.open(path) as im:
        mime = _AS_IS_FORMATS.get(im.format or "")
        if mime is None or im.getexif().get(0x0112, 1) != 1:  # rotated by EXIF: re-encode upright
            return None
    return _data_uri(mime, path.read_bytes())


@dataclass
class ImageStore:
    """Embedded images, indexed; ``add(path)`` gives an index into :attr:`images` or -1."""

    thumb_px: int = THUMB_PX
    view_px: int = VIEW_PX
    images: list[tuple[str, str | None]] = field(default_factory=list)  # (thumbnail, larger copy or None)
    missing: dict[str, str] = field(default_factory=dict)  # path -> why
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, path: Path | None) -> int | None:
        """Index of ``path``'s embedded image; -1 when it cannot be shown; None when no path is known."""
        if path is None:
            return None
        key = str(path)
        if key in self._index:
            return self._index[key]
        try:
            index = self._embed(path)
        except ImageError as exc:
            self.missing[key] = str(exc).removeprefix(f"{key}: ")
            index = -1
        self._index[key] = index
        return index

    def _embed(self, path: Path) -> int:
        largest = max(self.view_px, self.thumb_px)
        im = load_image(path, budget=ImageBudget(1, largest * largest))  # shrunk while decoding
        own = _as_is(path, im.size, self.thumb_px)
        thumb_img = im.copy()
        thumb_img.thumbnail((self.thumb_px, self.thumb_px), Image.Resampling.LANCZOS)
        thumb = own or _jpeg(thumb_img, 85)
        view = None
        if self.view_px > self.thumb_px and max(im.size) > self.thumb_px:
            im.thumbnail((self.view_px, self.view_px), Image.Resampling.LANCZOS)
            view = _jpeg(im, 90)
        self.images.append((thumb, view))
        return len(self.images) - 1

    @property
    def embedded_bytes(self) -> int:
        return sum(len(t) + len(v or "") for t, v in self.images)
