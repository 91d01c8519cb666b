"""Evaluation reports: compare editing models by their critic scores, and look at the edits.

FIRM-Edit is also a metric for benchmarking image-editing models. This package turns score files
(one per editing model, as ``firm-lite score --out`` writes them) into a leaderboard with
bootstrap intervals, per-edit-type columns and paired model-against-model comparisons
(:mod:`.stats`, :mod:`.summary`), and into one self-contained HTML page with a gallery of the
pairs (:mod:`.page`, :mod:`.thumbs`); a calibration result gets its own page
(:mod:`.calibration_page`). It reads saved files only, never loads a model, and imports no torch.

Public API::

    from firm_lite.report import make_report
    run = make_report(["a.jsonl", "b.jsonl"], manifests=["pairs.jsonl"], out="report.html")
    run.summary["leaderboard"][0]["metrics"]["cme"]   # {"n", "mean", "low", "high"}
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_report", "score_run_page", "check_targets", "ReportRun", "write_calibration_page"]


def __getattr__(name: str) -> Any:
    if name in ("make_report", "score_run_page", "check_targets", "ReportRun"):
        from firm_lite.report import build

        return getattr(build, name)
    if name == "write_calibration_page":
        from firm_lite.report.calibration_page import write_calibration_page

        return write_calibration_page
    raise AttributeError(f"module 'firm_lite.report' has no attribute {name!r}")
