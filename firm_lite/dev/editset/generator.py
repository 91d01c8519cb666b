"""Labelled edit pairs, made deterministically from a seed: one group = one photo crop + edits.

Every group draws from its own ``numpy.random.default_rng([seed, split, group])``, so an item
depends only on (seed, split, group) and never on global state or on what was generated before:
the training stream and a manifest written to disk hold the same items, and group 1234 can be
remade alone. Images are JPEG-encoded here (quality :data:`JPEG_QUALITY`) and edits are applied
to the *decoded* source, so training, the committed manifests and a scoring run all see the same
kind of pixels. For each item the generator picks a family, an outcome (how well the request was
carried out, see :mod:`firm_lite.dev.editset.labels`) and 0-5 unrequested local changes ("extras"),
and records all of it next to the labels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from firm_lite.dev.editset import pixels as px
from firm_lite.dev.editset.families import FAMILIES, SHAPE_COLOURS, SHAPES, EditFamily, families_for, pick
from firm_lite.dev.editset.labels import labels_for
from firm_lite.dev.editset.photos import PHOTOS, SPLITS, photos_for, random_crop, render_crop
from firm_lite.dev.editset.photos import SHAPES as IMAGE_SHAPES

GENERATOR_VERSION = "3"
JPEG_QUALITY = 90
SPLIT_CODES: dict[str, int] = {"train": 0, "heldout": 1}
OUTCOME_WEIGHTS: dict[str, float] = {
    "full": 0.34, "mostly": 0.07, "partial": 0.10, "half": 0.07, "weak": 0.05, "wrong_param": 0.08,
    "opposite": 0.05, "wrong_family": 0.08, "none": 0.11, "unrelated": 0.05}
EXTRA_COUNT_WEIGHTS: tuple[float, ...] = (0.55, 0.2, 0.1, 0.06, 0.05, 0.04)  # P(0..5 extras)
# Mean absolute change (0..255) an edit must make inside its region at full strength, and an extra
# inside its box: a blur of clear sky or a patch painted over a flat wall would be labelled as a
# change nobody can see.
MIN_VISIBLE = 8.0
_LEVELS = ("full", "mostly", "partial", "weak", "half")


@dataclass
class EditItem:
    """One labelled pair: JPEG bytes of both images, the instruction, labels and what was done."""

    id: str
    group: str
    instruction: str
    source_jpeg: bytes
    edited_jpeg: bytes
    labels: dict[str, int]
    edit: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> str:
        """Canonical phrase of the requested edit (e.g. "blur the top-left corner")."""
        return str(self.edit["request"])

    def source_image(self) -> Image.Image:
        return decode_jpeg(self.source_jpeg)

    def edited_image(self) -> Image.Image:
        return decode_jpeg(self.edited_jpeg)


def encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px.to_uint8(img), "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0,
                                                  optimize=False, progressive=False)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def group_rng(seed: int, split: str, group: int) -> np.random.Generator:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(group)])


def _choose_outcome(rng: np.random.Generator, family: EditFamily, params: dict[str, Any]) -> str:
    allowed = [o for o in OUTCOME_WEIGHTS
               if (o not in _LEVELS or o in family.levels)
               and (o != "wrong_param" or family.can_respecify(params)) and (o != "opposite" or family.contrary)]
    weights = np.array([OUTCOME_WEIGHTS[o] for o in allowed])
    return allowed[int(rng.choice(len(allowed), p=weights / weights.sum()))]


def visible(before: np.ndarray, after: np.ndarray, box: px.Box | None = None) -> bool:
    """Whether ``after`` differs from ``before`` enough to see, inside ``box`` (default: all)."""
    if before.shape != after.shape:
        return True  # a quarter turn of a non-square frame
    y0, x0, y1, x1 = px.pixel_box(box or (0.0, 0.0, 1.0, 1.0), before.shape)
    return float(np.abs(after[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean()) >= MIN_VISIBLE


def _fraction_box(center: tuple[float, float], radius: float, shape: tuple[int, ...]) -> px.Box:
    h, w = shape[:2]
    ry, rx = radius * min(h, w) / h, radius * min(h, w) / w
    return (center[0] - ry, center[1] - rx, center[0] + ry, center[1] + rx)


def _add_extras(rng: np.random.Generator, img: np.ndarray, count: int, avoid: list[px.Box],
                colour_photo: bool) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Up to ``count`` small unrequested changes, none touching ``avoid`` or each other."""
    placed: list[dict[str, Any]] = []
    taken = list(avoid)
    kinds = ("shape", "patch", "recolour") if colour_photo else ("shape", "patch")
    for _ in range(count):
        kind = pick(rng, kinds)
        for _attempt in range(100):
            if kind == "shape":
                radius = float(rng.uniform(0.08, 0.10))
                center = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)))
                box = _fraction_box(center, radius + 0.01, img.shape)
            else:
                side = float(rng.uniform(0.18, 0.24))
                y0, x0 = float(rng.uniform(0.02, 0.98 - side)), float(rng.uniform(0.02, 0.98 - side))
                box = (y0, x0, y0 + side, x0 + side)
            if any(px.overlaps(box, t, margin=0.02) for t in taken):
                continue
            if kind == "shape":
                shape, colour = pick(rng, SHAPES), pick(rng, SHAPE_COLOURS)
                changed = px.paint_shape(img, shape, center, radius, SHAPE_COLOURS[colour])
                record = {"kind": "shape", "shape": shape, "colour": colour}
            elif kind == "patch":
                changed, record = px.fill_from_border(img, box), {"kind": "patch"}
            else:
                changed = px.in_box(img, np.roll(img, int(rng.integers(1, 3)), axis=2), box)
                record = {"kind": "recolour"}
            if visible(img, changed, box):
                break
        else:
            break  # no room left: fewer extras, and the label counts what was placed
        img = changed
        placed.append({**record, "box": [round(v, 4) for v in box]})
        taken.append(box)
    return img, placed


def _unrelated(rng: np.random.Generator, split: str, photo: str, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    others = [p.name for p in photos_for(split) if p.name != photo]
    other = pick(rng, others)
    return render_crop(random_crop(rng, other, shape)), other


def make_item(rng: np.random.Generator, item_id: str, group: str, split: str, photo: str, crop: dict[str, Any],
              source_jpeg: bytes) -> EditItem:
    """One pair on a decoded source: family, outcome, the edit as done, extras and labels."""
    src = np.asarray(decode_jpeg(source_jpeg), dtype=np.float32)
    colour_photo = next(p.colour for p in PHOTOS if p.name == photo)
    for _attempt in range(50):  # a request whose full edit would not show is not asked
        family = pick(rng, families_for(colour_photo))
        params = family.sample(rng)
        if visible(src, family.apply(src, params), family.changed_box(params)):
            break
    if "region" in params:
        params["half_vertical"] = bool(rng.uniform() < 0.5)
    instruction = family.instruction(rng, params)
    outcome = _choose_outcome(rng, family, params)
    applied: dict[str, Any] = {"family": family.name, "params": params, "level": "full"}
    if outcome in _LEVELS:
        applied["level"] = outcome
    elif outcome in ("wrong_param", "opposite", "wrong_family"):
        for _attempt in range(20):
            if outcome == "wrong_family":
                other = pick(rng, [f for f in families_for(colour_photo) if f.name != family.name])
                applied = {"family": other.name, "params": other.sample(rng), "level": "full"}
            else:
                applied["params"] = (family.wrong_params(rng, params) if outcome == "wrong_param"
                                     else family.opposite(params))
            done = FAMILIES[applied["family"]]
            if visible(src, done.apply(src, applied["params"]), done.changed_box(applied["params"])):
                break
        else:
            outcome = "none"  # nothing wrong could be seen to happen: it is a no-op
    edit: dict[str, Any] = {"family": family.name, "params": params, "outcome": outcome,
                            "request": family.describe(params), "photo": photo, "crop": crop}
    applied_family = FAMILIES[applied["family"]]
    requested_local = family.changed_box(params) is not None
    if outcome == "unrelated":
        edited, other_photo = _unrelated(rng, split, photo, tuple(src.shape[:2]))
        edit.update(applied=None, unrelated_photo=other_photo, extras=[])
        labels = labels_for(outcome, requested_local, False, 0)
    else:
        edited = src if outcome == "none" else applied_family.apply(src, applied["params"], applied["level"])
        if outcome != "none" and not visible(src, edited, applied_family.changed_box(applied["params"])):
            outcome, edited = "none", src  # e.g. a weak blur of a flat wall: nothing was done
            edit["outcome"] = outcome
        avoid = [b for b in (family.changed_box(params),
                             applied_family.changed_box(applied["params"]) if outcome != "none" else None) if b]
        count = int(rng.choice(len(EXTRA_COUNT_WEIGHTS), p=EXTRA_COUNT_WEIGHTS))
        edited, extras = _add_extras(rng, edited, count, avoid, colour_photo)
        edit.update(applied=None if outcome == "none" else applied, extras=extras)
        applied_local = applied_family.changed_box(applied["params"]) is not None
        labels = labels_for(outcome, requested_local, applied_local, len(extras))
    unchanged = outcome == "none" and not edit["extras"]
    edited_jpeg = source_jpeg if unchanged else encode_jpeg(edited)
    return EditItem(item_id, group, instruction, source_jpeg, edited_jpeg, labels, edit)


def make_group(split: str, group: int, seed: int = 0, edits_per_source: int = 2) -> list[EditItem]:
    """The ``edits_per_source`` items of one group: one fresh crop, several edits of it."""
    rng = group_rng(seed, split, group)
    pool = photos_for(split)
    if split == "heldout":  # a third of held-out on photos training never saw, the rest on new crops
        unseen = group % 3 == 0
        pool = tuple(p for p in pool if (p.splits == ("heldout",)) == unseen)
    photo = pick(rng, [p.name for p in pool])
    shape = IMAGE_SHAPES[int(rng.integers(len(IMAGE_SHAPES)))]
    crop = random_crop(rng, photo, shape)
    source_jpeg = encode_jpeg(render_crop(crop))
    group_id = f"{split}-{group:04d}"
    return [make_item(rng, f"{group_id}-{k}", group_id, split, photo, crop.as_record(), source_jpeg)
            for k in range(edits_per_source)]


def iter_items(split: str, seed: int = 0, edits_per_source: int = 2, first_group: int = 0) -> Iterator[EditItem]:
    """Endless stream of items, group after group."""
    group = first_group
    while True:
        yield from make_group(split, group, seed, edits_per_source)
        group += 1


def generate(split: str, pairs: int, seed: int = 0, edits_per_source: int = 2) -> list[EditItem]:
    """The first ``pairs`` items of a split's stream."""
    out: list[EditItem] = []
    for item in iter_items(split, seed, edits_per_source):
        if len(out) == pairs:
            break
        out.append(item)
    return out
