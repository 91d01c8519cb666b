"""The calibration figure, drawn from the saved results JSON (never from in-memory state).

One row per variant: the reference-vs-variant confusion matrix of integer scores for each mode,
and a scatter of expected scores (reference on x, variant on y; the diagonal is no drift).
Uses matplotlib's object API with the Agg canvas, so nothing global (backend, rcParams) changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from firm_lite.errors import missing_extra
from firm_lite.prompts import MODES

_COLORS = {"execution": "tab:blue", "consistency": "tab:orange"}


def _confusion(ax: Any, matrix: list[list[int]], title: str) -> None:
    ax.imshow(matrix, cmap="Blues", origin="lower")
    top = max(max(r) for r in matrix) or 1
    for i in range(5):
        for j in range(5):
            if matrix[i][j]:
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                        color="white" if matrix[i][j] > top / 2 else "black", fontsize=8)
    ax.set_xticks(range(5), [str(k) for k in range(1, 6)])
    ax.set_yticks(range(5), [str(k) for k in range(1, 6)])
    ax.set_xlabel("variant score")
    ax.set_ylabel("reference score")
    ax.set_title(title, fontsize=9)


def _scatter(ax: Any, items: list[dict[str, Any]], title: str) -> None:
    for m in MODES:
        pts = [row[m]["expected"] for row in items
               if row[m]["expected"][0] is not None and row[m]["expected"][1] is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.7, color=_COLORS[m], label=m)
    ax.plot([1, 5], [1, 5], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0.9, 5.1)
    ax.set_ylim(0.9, 5.1)
    ax.set_xlabel("reference expected score")
    ax.set_ylabel("variant expected score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def plot_results(results_json: str | Path, png: str | Path) -> Path:
    """Draw ``png`` from a saved ``calibration.json``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_extra("calib", "matplotlib") from None
    result = json.loads(Path(results_json).read_text("utf-8"))
    variants = result["variants"]
    fig = Figure(figsize=(12, 3.6 * max(1, len(variants))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(variants)), 3, squeeze=False)
    for row, v in zip(axes, variants, strict=False):
        status = "PASS" if v["passed"] else "FAIL"
        for ax, m in zip(row[:2], MODES, strict=True):
            _confusion(ax, v["metrics"][m]["confusion"], f"{v['variant']} [{status}]: {m}")
        _scatter(row[2], v["items"], f"{v['variant']}: expected scores")
    png = Path(png)
    fig.savefig(png, dpi=110)
    return png
