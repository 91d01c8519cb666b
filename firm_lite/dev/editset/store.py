"""Where the edit set lives on disk, and the one function that hands its manifest to callers.

The repository commits both splits under ``calibration/`` (``editset-<split>.jsonl`` plus
JPEGs in ``calibration/editset/<split>/``, ~1.6 MB together): a calibration run then scores
the very same bytes on every machine, whatever its Pillow/libjpeg, so a score difference between
two variants is never an input difference. :func:`ensure_editset` returns that committed
manifest when it is complete and made by the current generator; otherwise (an installed package
without the checkout, a newer scikit-image whose photos differ, a sparse clone) it generates the
split once into ``~/.cache/firm-lite/editset/<fingerprint>/`` (``XDG_CACHE_HOME`` respected)
and returns that. The manifest's first line is a ``#`` comment (skipped by
:func:`firm_lite.manifest.read_manifest`) holding the provenance and the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm_lite.dev.editset.generator import GENERATOR_VERSION, JPEG_QUALITY, EditItem, generate
from firm_lite.dev.editset.photos import SPLITS, photo_fingerprint

REPO_CALIBRATION_DIR: Path = Path(__file__).resolve().parents[3] / "calibration"
HEADER_PREFIX = "# firm_lite.editset "  # the format tag of committed manifests (kept as written)


@dataclass(frozen=True)
class SplitSpec:
    """How many pairs a committed split holds; the seed and grouping that made them."""

    pairs: int
    seed: int = 0
    edits_per_source: int = 2


SPLIT_SPECS: dict[str, SplitSpec] = {"heldout": SplitSpec(pairs=80), "train": SplitSpec(pairs=40)}


def fingerprint(split: str, spec: SplitSpec) -> str:
    """Short hash of everything that decides a split's content (not the library versions)."""
    blob = json.dumps({"generator": GENERATOR_VERSION, "jpeg_quality": JPEG_QUALITY, "split": split,
                       "spec": spec.__dict__, "photos": photo_fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def manifest_name(split: str) -> str:
    return f"editset-{split}.jsonl"


def manifest_row(item: EditItem, source: str, edited: str) -> dict[str, Any]:
    """The JSONL line of an item: the standard pair fields, then ``labels`` and ``edit``."""
    return {"id": item.id, "source": source, "edited": edited, "instruction": item.instruction,
            "labels": item.labels, "edit": item.edit}


def write_split(out_dir: str | Path, split: str, spec: SplitSpec | None = None) -> Path:
    """Generate a split into ``out_dir`` (manifest + ``editset/<split>/*.jpg``); returns the manifest.

    Written to a temporary folder first and moved into place, so a reader never sees half a split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    spec = spec or SPLIT_SPECS[split]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = generate(split, spec.pairs, spec.seed, spec.edits_per_source)
    image_rel = Path("editset") / split
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{split}-") as tmp:
        tmp_images = Path(tmp) / "images"
        tmp_images.mkdir()
        lines = [HEADER_PREFIX + json.dumps({
            "split": split, "generator_version": GENERATOR_VERSION, "fingerprint": fingerprint(split, spec),
            "pairs": spec.pairs, "seed": spec.seed, "edits_per_source": spec.edits_per_source,
            # as committed: the manifests must regenerate byte for byte (now `firm_lite.dev.editset`)
            "regenerate": "python -m firm_lite.editset --out calibration"}, sort_keys=True)]
        for item in items:
            source_name, edited_name = f"{item.group}-source.jpg", f"{item.id}-edited.jpg"
            (tmp_images / source_name).write_bytes(item.source_jpeg)
            (tmp_images / edited_name).write_bytes(item.edited_jpeg)
            lines.append(json.dumps(manifest_row(item, (image_rel / source_name).as_posix(),
                                                 (image_rel / edited_name).as_posix()), sort_keys=False))
        (Path(tmp) / "manifest.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
        final_images = out_dir / image_rel
        if final_images.exists():
            shutil.rmtree(final_images)
        final_images.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_images, final_images)
        os.replace(Path(tmp) / "manifest.jsonl", out_dir / manifest_name(split))
    return out_dir / manifest_name(split)


def read_header(manifest: str | Path) -> dict[str, Any] | None:
    """The provenance comment of an edit-set manifest, or None if it has none."""
    path = Path(manifest)
    if not path.exists():
        return None
    with path.open("r", encoding="utf-8") as fh:
        first = fh.readline()
    if not first.startswith(HEADER_PREFIX):
        return None
    return json.loads(first[len(HEADER_PREFIX):])


def is_complete(manifest: Path, split: str, spec: SplitSpec) -> bool:
    """True when ``manifest`` was made by this generator for ``spec`` and all its images exist."""
    header = read_header(manifest)
    if not header or header.get("fingerprint") != fingerprint(split, spec):
        return False
    base = manifest.parent
    with manifest.open("r", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip() and not line.startswith("#")]
    return len(rows) == spec.pairs and all((base / r[k]).is_file() for r in rows for k in ("source", "edited"))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "firm-lite" / "editset"


def ensure_editset(split: str = "heldout", *, prefer_repo: bool = True) -> Path:
    """Path to the split's manifest: the committed one if complete and current, else a cached copy
    generated on first use (see module doc)."""
    if split not in SPLIT_SPECS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_SPECS)}")
    spec = SPLIT_SPECS[split]
    committed = REPO_CALIBRATION_DIR / manifest_name(split)
    if prefer_repo and is_complete(committed, split, spec):
        return committed
    cached_dir = cache_root() / fingerprint(split, spec)
    cached = cached_dir / manifest_name(split)
    if not is_complete(cached, split, spec):
        write_split(cached_dir, split, spec)
    return cached
