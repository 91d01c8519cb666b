"""A second, clearly worse "editing model" for a manifest, to show what a comparison looks like.

``python -m firm_lite.dev.degraded_edits calibration/editset-heldout.jsonl --out /tmp/worse``
writes ``/tmp/worse/manifest.jsonl`` and its edited images: the same ids, sources and
instructions, but each edit replaced, by a seeded draw per pair, with

- ``nothing`` (share ``--nothing``, default 0.6): the source returned unchanged, the edit not
  done, the commonest failure of real editing models;
- ``sloppy`` (the rest): the original edit, blurred (Gaussian radius 1.5), with Gaussian noise
  (sigma 10) and saved as a low-quality JPEG (quality 40).

Score both manifests with the same critic and report them side by side::

    firm-lite score --model tiny --manifest calibration/editset-heldout.jsonl --out a.jsonl
    firm-lite score --model tiny --manifest /tmp/worse/manifest.jsonl --out b.jsonl
    firm-lite report a.jsonl b.jsonl --name edit-set --name worse \\
        --manifest calibration/editset-heldout.jsonl --manifest /tmp/worse/manifest.jsonl --out report.html

Each output row keeps the pair's edit type as ``category`` (from the edit set's ``edit.family``)
and says what was done to it in ``degraded``; the edit set's labels are dropped (they describe the
original edit, not this one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

BLUR_RADIUS = 1.5
NOISE_SIGMA = 10.0
JPEG_QUALITY = 40


def degrade(source: Path, edited: Path, kind: str, rng: np.random.Generator) -> Image.Image:
    """The worse model's output for one pair."""
    if kind == "nothing":
        with Image.open(source) as im:
            return im.convert("RGB")
    with Image.open(edited) as im:
        blurred = im.convert("RGB").filter(ImageFilter.GaussianBlur(BLUR_RADIUS))
    noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0.0, NOISE_SIGMA, (blurred.height, blurred.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def write_degraded(manifest: str | Path, out: str | Path, nothing: float = 0.6, seed: int = 0) -> Path:
    """Write the worse model's manifest and images under ``out``; returns the manifest path."""
    from firm_lite.manifest import read_manifest

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in read_manifest(manifest):
        if row.pair is None:
            continue
        rng = np.random.default_rng([seed, len(lines)])
        kind = "nothing" if rng.random() < nothing else "sloppy"
        image = degrade(Path(row.pair.source), Path(row.pair.edited), kind, rng)
        target = out / "images" / f"{len(lines):05d}-{kind}.jpg"
        image.save(target, format="JPEG", quality=JPEG_QUALITY)
        extra = row.extra or {}
        family = (extra.get("edit") or {}).get("family")
        entry = {"id": row.id, "source": str(Path(row.pair.source).resolve()),
                 "edited": str(target.relative_to(out)), "instruction": row.pair.instruction,
                 "category": extra.get("category") or family, "degraded": kind}
        lines.append(json.dumps(entry, ensure_ascii=False))
    path = out / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firm_lite.dev.degraded_edits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for manifest.jsonl and images/")
    parser.add_argument("--nothing", type=float, default=0.6, help="share of pairs left unedited (default 0.6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 <= args.nothing <= 1.0:
        parser.error("--nothing must be between 0 and 1")
    print(f"wrote {write_degraded(args.manifest, args.out, args.nothing, args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
