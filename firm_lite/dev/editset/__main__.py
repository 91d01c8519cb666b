"""``python -m firm_lite.dev.editset``: regenerate the edit-set manifests (and optionally score them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from firm_lite.dev.editset.photos import SPLITS


def regenerate(out: str | Path, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """Write every split's manifest and images under ``out`` (the repo's ``calibration/``)."""
    from firm_lite.dev.editset.store import write_split

    return [write_split(out, split) for split in splits]


def evaluate(split: str = "heldout", model: str = "tiny", device: str = "cpu", batch_size: int = 4,
             out: str | Path | None = None) -> dict:
    """Score a split with a critic through the normal scoring path; the agreement report."""
    from firm_lite.dev.editset.metrics import editset_report, read_labels
    from firm_lite.dev.editset.store import ensure_editset
    from firm_lite.scoring import score
    from firm_lite.settings import CriticSettings

    manifest = ensure_editset(split)
    run = score(CriticSettings(model=model, device=device), manifest=manifest, batch_size=batch_size, out=out,
                progress=True)
    return editset_report(run.records, read_labels(manifest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firm_lite.dev.editset", description=__doc__)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write the manifests into (the repository's calibration/)")
    parser.add_argument("--split", choices=SPLITS, action="append", help="only this split (repeatable)")
    parser.add_argument("--evaluate", metavar="MODEL", default=None,
                        help="score the held-out split with MODEL (e.g. tiny) and print MAE per mode")
    parser.add_argument("--json", action="store_true", help="print the evaluation report as JSON")
    args = parser.parse_args(argv)
    splits = tuple(args.split or SPLITS)
    if args.out is None and args.evaluate is None:
        parser.error("give --out DIR to regenerate, and/or --evaluate MODEL")
    if args.out is not None:
        for path in regenerate(args.out, splits):
            print(f"wrote {path}")
    if args.evaluate is not None:
        from firm_lite.dev.editset.metrics import format_report

        report = evaluate("heldout", model=args.evaluate)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
