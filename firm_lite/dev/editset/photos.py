"""The real photographs the edit set is cut from, and how a crop is taken.

The photos are the ones scikit-image ships inside its wheel (``skimage/data/*.png|jpg``); they are
read straight from those files with Pillow, so nothing is ever fetched (several ``skimage.data``
loaders would call pooch and the network). Each photo belongs to the splits listed in
:data:`PHOTOS`: two photos (``coffee``, ``motorcycle``) are held out entirely, so the held-out split
measures a critic on scenes it never trained on as well as on new crops of known ones. (The
Hubble deep field and the retina are left out: most crops are black, where edits don't show; so
is the motion-blurred clock, which is nearly flat grey.) A photo's
sha256 is part of the generator fingerprint: if a scikit-image release changes a file, the
cached set is regenerated instead of silently drifting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
from PIL import Image

from firm_lite.errors import UserError

SPLITS: tuple[str, ...] = ("train", "heldout")
# (height, width) of every generated image: multiples of 32, so the Qwen-VL resizer keeps them
# as they are under a 160x160 budget (25, 20 or 20 image tokens), and all 160 on the long side,
# so the second image of a pair always starts the same M-RoPE distance after the first (the tiny
# critic's comparison heads rely on it: firm_lite.dev.compare_heads).
SHAPES: tuple[tuple[int, int], ...] = ((160, 160), (128, 160), (160, 128))


@dataclass(frozen=True)
class Photo:
    """One shipped photograph: its file under ``skimage/data``, and which splits may use it."""

    name: str
    file: str
    colour: bool
    splits: tuple[str, ...]


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "astronaut.png", True, SPLITS),
    Photo("chelsea", "chelsea.png", True, SPLITS),
    Photo("rocket", "rocket.jpg", True, SPLITS),
    Photo("ihc", "ihc.png", True, SPLITS),
    Photo("camera", "camera.png", False, SPLITS),
    Photo("coins", "coins.png", False, SPLITS),
    Photo("moon", "moon.png", False, SPLITS),
    Photo("coffee", "coffee.png", True, ("heldout",)),
    Photo("motorcycle", "motorcycle_left.png", True, ("heldout",)),
)


def photos_for(split: str) -> tuple[Photo, ...]:
    """The photos a split draws from."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return tuple(p for p in PHOTOS if split in p.splits)


def _photo_bytes(photo: Photo) -> bytes:
    try:
        return resources.files("skimage.data").joinpath(photo.file).read_bytes()
    except ModuleNotFoundError:
        raise UserError('scikit-image is needed for the edit set: pip install "firm-lite[calib]"') from None
    except FileNotFoundError:
        raise UserError(f"scikit-image ships no {photo.file} (needed for the edit set); "
                        "install scikit-image>=0.22,<0.27") from None


@cache
def load_photo(name: str) -> np.ndarray:
    """The photo as an (H, W, 3) uint8 RGB array (grey photos get three equal channels)."""
    import io

    photo = next((p for p in PHOTOS if p.name == name), None)
    if photo is None:
        raise ValueError(f"unknown photo {name!r}")
    with Image.open(io.BytesIO(_photo_bytes(photo))) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    arr.setflags(write=False)
    return arr


def photo_fingerprint() -> dict[str, str]:
    """sha256 of every photo file (part of the generator fingerprint and the provenance)."""
    return {p.name: hashlib.sha256(_photo_bytes(p)).hexdigest() for p in PHOTOS}


@dataclass(frozen=True)
class Crop:
    """A box ``(top, left, height, width)`` of a photo, resized to ``shape`` = (height, width)."""

    photo: str
    box: tuple[int, int, int, int]
    shape: tuple[int, int]

    def as_record(self) -> dict[str, object]:
        return {"photo": self.photo, "box": list(self.box), "shape": list(self.shape)}


def random_crop(rng: np.random.Generator, photo: str, shape: tuple[int, int]) -> Crop:
    """A crop with ``shape``'s aspect ratio covering 45-95% of the largest box that fits."""
    full = load_photo(photo)
    ph, pw = full.shape[:2]
    h, w = shape
    fit = min(ph / h, pw / w)
    scale = float(rng.uniform(0.45, 0.95))
    ch, cw = max(h // 2, int(h * fit * scale)), max(w // 2, int(w * fit * scale))
    top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    return Crop(photo, (top, left, ch, cw), shape)


def render_crop(crop: Crop) -> np.ndarray:
    """The crop's pixels, Lanczos-resized to its shape, as float32 RGB in [0, 255]."""
    top, left, ch, cw = crop.box
    h, w = crop.shape
    region = Image.fromarray(load_photo(crop.photo)[top:top + ch, left:left + cw])
    return np.asarray(region.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)
