"""Calibration: how far a quantized or exported variant drifts from the reference critic.

``firm-lite calibrate`` (:func:`calibrate`) scores a held-out manifest with the reference
(fp32 on CPU, bf16 on GPU) and with each variant, and gates the drift with per-family
thresholds. The package owns the pieces; the top-level ``calibration/`` folder only holds data,
``thresholds.toml`` and recorded results.

* :mod:`.metrics`: agreement, flips, MAE, KL, rank correlations (pure functions)
* :mod:`.cache`: per-item result caches keyed by everything that decides a result
* :mod:`.collect`: one side (reference or variant) scored, teacher-forced and cached
* :mod:`.drift`: one variant's metrics, checks, worst items
* :mod:`.thresholds`: the TOML limits per family and the checks
* :mod:`.report`, :mod:`.plots`: table, markdown and PNG from the saved JSON
* :mod:`.gate`: the verdict recorded in exported variants and the warning ``score`` prints
* :mod:`.runner`: :func:`calibrate`
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("calibrate", "CalibrationRun"):
        from firm_lite.calibration import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'firm_lite.calibration' has no attribute {name!r}")
