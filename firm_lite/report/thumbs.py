"""Images embedded in a report page: downscaled, de-duplicated, and never a crash.

A report is one file that works offline and by mail, so every image is embedded as a ``data:``
URI, twice at most: a thumbnail (long side ``thumb_px``) for the gallery and, for images larger
than that, a bigger copy (long side ``view_px``) shown when the thumbnail is clicked. Both are
WebP (quality 80 and 85): at thumbnail sizes about half the bytes of the same JPEG, and what sets
a report's size once it has thousands of pairs. Each file is embedded once however many pairs use
it (a source photo edited several ways).

Every image is decoded by :func:`firm_lite.images.load_image`, the decoder scoring uses, so a
file the critic refused is refused here too; a missing or broken file becomes a placeholder in the
page and an entry in :attr:`ImageStore.missing`, never an exception.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from firm_lite.errors import ImageError
from firm_lite.images import ImageBudget, load_image

THUMB_PX = 160
VIEW_PX = 640
THUMB_QUALITY = 80
VIEW_QUALITY = 85


def _webp(im: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    im.save(buf, format="WEBP", quality=quality, method=2)  # 4+ is 2x slower for ~3% fewer bytes
    return f"data:image/webp;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


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
        self.add_all([path])
        return self._index[str(path)]

    def add_all(self, paths: list[Path | None], workers: int | None = None) -> None:
        """Embed every new path, decoding and encoding on ``workers`` threads (Pillow releases the
        GIL while it codes, so this scales with cores); indices follow the order of ``paths``."""
        todo = list(dict.fromkeys(str(p) for p in paths if p is not None and str(p) not in self._index))
        if not todo:
            return
        workers = workers or min(8, os.cpu_count() or 1)
        if workers > 1 and len(todo) > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(self._encode, todo))
        else:
            results = [self._encode(key) for key in todo]
        for key, result in zip(todo, results, strict=True):
            if isinstance(result, str):
                self.missing[key] = result
                self._index[key] = -1
            else:
                self.images.append(result)
                self._index[key] = len(self.images) - 1

    def _encode(self, key: str) -> tuple[str, str | None] | str:
        """(thumbnail, larger copy or None) for the file ``key``, or why it cannot be shown."""
        largest = max(self.view_px, self.thumb_px)
        try:
            im = load_image(Path(key), budget=ImageBudget(1, largest * largest))  # shrunk while decoding
        except ImageError as exc:
            return str(exc).removeprefix(f"{key}: ")
        thumb_img = im.copy()
        thumb_img.thumbnail((self.thumb_px, self.thumb_px), Image.Resampling.LANCZOS)
        thumb = _webp(thumb_img, THUMB_QUALITY)
        view = None
        if self.view_px > self.thumb_px and max(im.size) > self.thumb_px:
            im.thumbnail((self.view_px, self.view_px), Image.Resampling.LANCZOS)
            view = _webp(im, VIEW_QUALITY)
        return thumb, view

    @property
    def embedded_bytes(self) -> int:
        return sum(len(t) + len(v or "") for t, v in self.images)
