"""``firm_lite.calibration.calibrate``: what ``firm-lite calibrate`` does, as a function.

Scores a (held-out) manifest with the reference and with each variant, caching every side per
item (:mod:`~firm_lite.calibration.collect`), computes drift per variant and mode
(:mod:`~firm_lite.calibration.drift`), gates it with the variant family's thresholds, and writes
``calibration.json`` (the record), then ``report.md`` and ``calibration.png`` from that file.
Exported variant folders get the verdict recorded in their manifest (the drift gate that
``firm-lite score`` reads). Interrupt it at any point: re-running continues from the caches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.settings import CriticSettings

log = logging.getLogger(__name__)

DEFAULT_MANIFEST = "calibration/editset-heldout.jsonl"
DEFAULT_THRESHOLDS = "calibration/thresholds.toml"
DEFAULT_OUT = "calibration/results"
RESULTS_FILE = "calibration.json"
PNG_FILE = "calibration.png"


@dataclass
class CalibrationRun:
    """A finished calibration: the saved results and where they were written."""

    result: dict[str, Any]
    out_dir: Path

    @property
    def passed(self) -> bool:
        return bool(self.result["passed"])

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def default_path(relative: str) -> Path:
    """``relative`` under the working directory if it exists there, else next to the package
    (a source checkout), else the working-directory path (for the error message)."""
    here = Path(relative)
    if here.exists():
        return here
    beside = Path(__file__).resolve().parents[2] / relative
    return beside if beside.exists() else here


def _read_pairs(manifest: Path) -> tuple[list[Any], list[dict[str, Any]], dict[str, dict[str, int]]]:
    from firm_lite.manifest import label_of, read_manifest
    from firm_lite.prompts import MODES

    pairs, skipped, labels = [], [], {}
    for row in read_manifest(manifest):
        if row.pair is None:
            skipped.append({"id": row.id, "error": row.error})
            continue
        pairs.append(row.pair)
        found = {m: label_of(row.extra, m) for m in MODES}
        if any(v is not None for v in found.values()):
            labels[row.id] = {m: v for m, v in found.items() if v is not None}
    if not pairs:
        raise UserError(f"manifest {manifest}: no usable pairs")
    return pairs, skipped, labels


def calibrate(settings: CriticSettings | None = None, *, variants: list[str] | tuple[str, ...],
              manifest: str | Path | None = None, out: str | Path = DEFAULT_OUT,
              thresholds: str | Path | None = None, batch_size: int = 4, worst_k: int = 5,
              cache_dir: str | Path | None = None, record: bool = True, plot: bool = True,
              progress: bool = False) -> CalibrationRun:
    """Measure each variant's drift from the reference on ``manifest`` and gate it; see module doc.

    ``settings`` describe the reference critic (its ``variant``: ``default`` is the checkpoint at
    ``dtype``); each of ``variants`` is loaded with the same settings but its own variant."""
    from firm_lite.calibration.cache import FingerprintMemo, manifest_fingerprint
    from firm_lite.calibration.collect import base_key_parts, collect_side, describe_side, side_cache
    from firm_lite.calibration.drift import drift_report, teacher_forcing_gap
    from firm_lite.calibration.thresholds import load_thresholds

    if not variants:
        raise UserError("nothing to calibrate: pass --variant NAME_OR_FOLDER (repeatable)")
    if batch_size < 1 or worst_k < 0:
        raise UserError("--batch-size must be >= 1 and --worst >= 0")
    if plot and find_spec("matplotlib") is None:  # say it now, not after scoring every variant
        raise UserError('calibration.png needs matplotlib: pip install "firm-lite[calib]", or pass --no-plot')
    manifest = Path(manifest) if manifest else default_path(DEFAULT_MANIFEST)
    limits_file = load_thresholds(Path(thresholds) if thresholds else default_path(DEFAULT_THRESHOLDS))
    out_dir = Path(out)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / "cache"
    memo = FingerprintMemo(cache_dir / "fingerprints.json")

    pairs, skipped, labels = _read_pairs(manifest)
    ids = [p.id for p in pairs]
    manifest_sha = manifest_fingerprint(manifest, pairs)
    settings = (settings or CriticSettings()).replace(batch_size=batch_size)
    reference = settings.variant
    base = base_key_parts(settings, batch_size, manifest_sha, memo)
    ref_side = describe_side(reference, settings, memo)
    sides = [describe_side(v, settings, memo) for v in variants]  # fail early on a bad name
    out_dir.mkdir(parents=True, exist_ok=True)

    ref_cache = side_cache(str(cache_dir), base, ref_side)
    ref_items = collect_side(ref_side, pairs, ref_cache, settings, batch_size, base, None, progress,
                             f"reference {ref_side.label}")
    reports = []
    for side in sides:
        cache = side_cache(str(cache_dir), base, side, ref_cache.key)
        items = collect_side(side, pairs, cache, settings, batch_size, base, ref_items, progress,
                             f"variant {side.label}")
        table, limits = limits_file.resolve(side.threshold_names)
        report = drift_report(ids, ref_items, items, labels, limits, worst_k)
        reports.append({"variant": side.label, "name": side.name, "family": side.family, "folder": side.folder,
                        "thresholds_table": table, "limits": limits, "cache_key": cache.key, **report})

    failed = [r["variant"] for r in reports if not r["passed"]]
    verdict = (f"verdict: PASS: all {len(reports)} variant(s) within thresholds" if not failed else
               f"verdict: FAIL: {len(failed)} of {len(reports)} variant(s) outside thresholds ({', '.join(failed)})")
    result = {
        "schema": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "passed": not failed, "verdict": verdict,
        "manifest": {"path": str(manifest), "sha256": manifest_sha, "pairs": len(pairs), "labelled": len(labels),
                     "skipped_rows": skipped},
        "thresholds": {"path": limits_file.path, "sha256": limits_file.sha256},
        "reference": {"label": ref_side.label, "name": reference, "family": ref_side.family,
                      "cache_key": ref_cache.key, "teacher_forcing_gap": teacher_forcing_gap(ids, ref_items)},
        "provenance": {"model_id": base["model"]["model_id"], "model_revision": base["model"]["revision"],
                       "model_weights_sha256": base["model"]["weights"], "prompt_sha256": base["prompt_sha256"],
                       "image_budget": base["image_budget"], "decoding": base["decoding"],
                       "device": base["device"], **base["versions"]},
        "variants": reports,
    }
    results_path = out_dir / RESULTS_FILE
    results_path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", "utf-8")
    _write_views(results_path, out_dir, plot)
    if record:
        _record_verdicts(result)
    return CalibrationRun(result=result, out_dir=out_dir)


def _write_views(results_path: Path, out_dir: Path, plot: bool) -> None:
    """Report and figure from the saved JSON file."""
    from firm_lite.calibration.report import write_report

    saved = json.loads(results_path.read_text("utf-8"))
    png = None
    if plot:
        from firm_lite.calibration.plots import plot_results

        png = plot_results(results_path, out_dir / PNG_FILE).name
    write_report(saved, out_dir, png)


def _record_verdicts(result: dict[str, Any]) -> None:
    """The drift gate: each exported folder's manifest gets its verdict (see :mod:`.gate`)."""
    from firm_lite.artifact import VARIANT_MANIFEST
    from firm_lite.calibration.gate import record_verdict, verdict_record

    for r in result["variants"]:
        if not r["folder"]:
            continue
        if not (Path(r["folder"]) / VARIANT_MANIFEST).is_file():
            log.warning("%s has no %s: its verdict is not recorded", r["folder"], VARIANT_MANIFEST)
            continue
        try:
            record_verdict(r["folder"], verdict_record(result, r))
        except OSError as exc:
            log.warning("could not record the verdict in %s (%s); `firm-lite score` will keep warning about this "
                        "variant", r["folder"], exc.strerror or exc)
