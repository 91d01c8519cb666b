"""The drift gate: the calibration verdict the harness records in an exported variant folder.

``firm-lite calibrate`` writes its verdict for an exported variant folder into that folder's
``firm_lite_variant.json`` under ``"calibration"`` (passed, the failing checks, metrics,
thresholds and the manifest hash it was measured on) through
:func:`firm_lite.artifact.record_calibration`, so the verdict travels with the weights; loading
the folder later warns through :func:`firm_lite.artifact.calibration_warning`. Reference
precisions and quantize-at-load names have no folder to carry a verdict and are not gated here.
"""

from __future__ import annotations

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
    from firm_lite.artifact import record_calibration

    record_calibration(Path(folder), record)
