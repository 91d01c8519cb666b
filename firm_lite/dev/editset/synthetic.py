"""Photo-free procedural pairs: random gradient scenes with a striped edit and speckled extras.

These came with the first tiny critic (which trained on them). They stay for tests that need a
quick, varied, labelled pair without scikit-image's photos: a striped region whose area grows
with the execution level and one 16 px speckled square per consistency point lost (a whole new
scene is consistency 1). The critic now trains on the photo edit set; see
:mod:`firm_lite.dev.editset.generator`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    for _ in range(int(rng.integers(2, 5))):
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        img[y:y + int(rng.integers(8, h // 2)), x:x + int(rng.integers(8, w // 2))] = \
            rng.uniform(0, 255, 3)
    return img


def synthetic_pair(rng: np.random.Generator) -> tuple[Image.Image, Image.Image, float, float]:
    """(source, edited, execution level, consistency level), levels on the 1..5 scale.

    The requested edit paints a striped region whose area grows with the execution level (none at
    1); each unrequested change is a 16 px speckled square, one per consistency point lost, and a
    whole new scene is consistency 1.
    """
    h, w = (int(v) for v in rng.integers(64, 129, size=2))
    src = _scene(rng, h, w)
    out = src.copy()
    execution, consistency = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    if execution > 1:
        side = math.sqrt((execution - 1) / 5.0)  # 0.45 .. 0.89 of each edge
        rh, rw = max(16, int(h * side)), max(16, int(w * side))
        y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        stripes = (np.arange(rw)[None, :] // 2 % 2).astype(float)[..., None]
        colour = rng.uniform(0, 255, 3)
        out[y:y + rh, x:x + rw] = stripes * colour + (1 - stripes) * (255.0 - colour)
    if rng.uniform() < 0.1:
        out, consistency = _scene(rng, h, w), 1
    else:
        for _ in range(5 - consistency):
            y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
            out[y:y + 16, x:x + 16] = rng.choice([0.0, 255.0], size=(16, 16, 1))
    as_image = lambda a: Image.fromarray(a.clip(0, 255).astype("uint8"), "RGB")  # noqa: E731
    return as_image(src), as_image(out), float(execution), float(consistency)


