"""The drift gate: calibration verdicts recorded in exported variants, and the warning on use.

``firm-lite calibrate`` writes its verdict for an exported variant folder into that folder's
``firm_lite_variant.json`` under ``"calibration"`` (passed, the failing checks, metrics,
thresholds and the manifest hash it was measured on) through
:func:`firm_lite.export.record_calibration`, so the verdict travels with the weights.
``firm-lite score`` calls :func:`calibration_warning` and prints its one line on stderr when a
variant was never calibrated or failed its last calibration. Reference precisions and
quantize-at-load names have no folder to carry a verdict and are not gated here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def verdict_record(result: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """What goes into the variant manifest: enough to judge the verdict without the report."""
    keep = ("exact_agreement", "flip_rate", "big_flip_rate", "mae_score", "mae_expected", "kl_mean",
            "kl_p95", "parse_failure_rate", "n_paired")
    metrics = {m: {k: variant["metrics"][m][k] for k in keep} for m in ("execution", "consistency")}
    metrics["cme"] = {k: v for k, v in variant["metrics"]["cme"].items() if k != "reference_constant"}
    metrics["labels"] = variant["metrics"]["labels"]
    return {
        "passed": variant["passed"], "failures": variant["failures"], "created": result["created"],
        "metrics": metrics,
        "thresholds": {"file": result["thresholds"]["path"], "sha256": result["thresholds"]["sha256"],
                       "table": variant["thresholds_table"], "limits": variant["limits"]},
        "manifest": {"path": result["manifest"]["path"], "sha256": result["manifest"]["sha256"],
                     "pairs": result["manifest"]["pairs"]},
        "reference": result["reference"]["label"], "firm_lite": result["provenance"]["firm_lite"],
    }


def record_verdict(folder: str | Path, record: dict[str, Any]) -> None:
    """Store the verdict in the folder's variant manifest (``firm_lite.export`` owns the file)."""
    from firm_lite.export import record_calibration

    record_calibration(Path(folder), record)


def calibration_warning(folder: str | Path | None) -> str | None:
    """One line when the exported variant in ``folder`` is uncalibrated or failed, else None."""
    if not folder:
        return None
    from firm_lite.export.provenance import CALIBRATION_KEY
    from firm_lite.variants import VARIANT_MANIFEST

    path = Path(folder) / VARIANT_MANIFEST
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # loading the variant already reported what is wrong with its manifest
    verdict = meta.get(CALIBRATION_KEY) if isinstance(meta, dict) else None
    if not isinstance(verdict, dict):
        return (f"warning: variant {folder} was never calibrated; run `firm-lite calibrate --variant {folder}` "
                "before trusting its scores")
    if not verdict.get("passed"):
        why = "; ".join(verdict.get("failures") or [])[:160]
        return (f"warning: variant {folder} FAILED calibration on {str(verdict.get('created', '?'))[:10]}"
                f"{f' ({why})' if why else ''}: its scores drift from the reference")
    return None
