"""Drift thresholds per variant family, read from a TOML file, and the checks they imply.

The limits are data (``calibration/thresholds.toml``), not code: a family table (``reference``,
``bnb``, ``gptq``, ``onnx``, ...) overrides the ``[default]`` table key by key, a table named
after the variant itself (``nf4``, or an export's ``onnx-int8``) overrides its family's, and a
variant with no table of its own gets ``[default]``. Unknown tables' keys, unknown metric names and
non-numbers are refused with one line naming the file and the key, so a typo never silently
disables a check. Per-mode limits apply to both modes; a variant passes when every check does.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.prompts import MODES

# name -> (metric it reads, where it lives, direction): "max" fails above, "min" fails below
LIMITS: dict[str, tuple[str, str, str]] = {
    "min_exact_agreement": ("exact_agreement", "mode", "min"),
    "max_flip_rate": ("flip_rate", "mode", "max"),
    "max_big_flip_rate": ("big_flip_rate", "mode", "max"),
    "max_mae_score": ("mae_score", "mode", "max"),
    "max_mae_expected": ("mae_expected", "mode", "max"),
    "max_kl_mean": ("kl_mean", "mode", "max"),
    "max_kl_p95": ("kl_p95", "mode", "max"),
    "max_parse_failure_rate": ("parse_failure_rate", "mode", "max"),
    "max_cme_mae": ("cme_mae", "cme", "max"),
    "min_cme_spearman": ("cme_spearman", "cme", "min"),
    "min_cme_kendall": ("cme_kendall", "cme", "min"),
    "max_label_mae_increase": ("increase", "labels", "max"),
}
DEFAULT_FAMILY = "default"


@dataclass(frozen=True)
class Thresholds:
    """Parsed thresholds file: family -> {limit name: value} (``default`` always present)."""

    path: str
    sha256: str
    families: dict[str, dict[str, float]]

    def resolve(self, names: Sequence[str | None]) -> tuple[str, dict[str, float]]:
        """Limits for a variant known by ``names``, least to most specific (family, registered
        name, exported variant name such as ``onnx-int8``): ``[default]`` overlaid by every one of
        them that has a table. Returns the tables used (``"onnx+onnx-int8"``) and the limits."""
        merged = dict(self.families[DEFAULT_FAMILY])
        used: list[str] = []
        for name in names:
            if name and name != DEFAULT_FAMILY and name in self.families and name not in used:
                merged.update(self.families[name])
                used.append(name)
        return "+".join(used) or DEFAULT_FAMILY, merged


def load_thresholds(path: str | Path) -> Thresholds:
    """Read and validate a thresholds TOML file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"thresholds file {path} not found: pass --thresholds FILE.toml")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    families: dict[str, dict[str, float]] = {}
    for family, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: top-level key {family!r} must be a [family] table of limits")
        limits: dict[str, float] = {}
        for key, value in table.items():
            if key not in LIMITS:
                raise UserError(f"{path}: [{family}] {key} is not a known limit "
                                f"(known: {', '.join(sorted(LIMITS))})")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UserError(f"{path}: [{family}] {key} must be a number (got {value!r})")
            limits[key] = float(value)
        families[family] = limits
    if DEFAULT_FAMILY not in families:
        raise UserError(f"{path}: needs a [{DEFAULT_FAMILY}] table (used for families without their own)")
    return Thresholds(path=str(path), sha256=hashlib.sha256(raw).hexdigest(), families=families)


def _value(metrics: dict[str, Any], metric: str, where: str, mode: str | None) -> Any:
    if where == "mode":
        return metrics[mode][metric]
    if where == "cme":
        return metrics["cme"][metric]
    section = (metrics.get("labels") or {}).get(mode) if mode else None
    return section[metric] if section else None


def evaluate(metrics: dict[str, Any], limits: dict[str, float]) -> list[dict[str, Any]]:
    """One check per (limit, mode): ``{"limit", "metric", "mode", "value", "bound", "ok", "note"}``.

    A missing value fails a "max"/"min" check when it is missing because nothing could be
    compared (e.g. no answer parsed) or the variant's CME collapsed to one value; label checks
    are skipped when the set has no labels, and rank correlations when the reference's CME is
    constant (undefined there; noted).
    """
    checks = []
    for name, bound in sorted(limits.items()):
        metric, where, direction = LIMITS[name]
        for mode in (MODES if where in ("mode", "labels") else (None,)):
            value = _value(metrics, metric, where, mode)
            note = ""
            if value is None:
                if where == "labels":
                    continue
                if where == "cme" and metric.endswith(("spearman", "kendall")) and metrics["cme"]["reference_constant"]:
                    ok, note = True, "undefined (the reference's CME is constant); not gated"
                elif where == "cme" and metric.endswith(("spearman", "kendall")) and metrics["cme"]["n"] >= 2:
                    ok, note = False, "undefined: the variant's CME is constant (collapsed)"
                else:
                    ok, note = False, "nothing to compare (no paired answers)"
            else:
                ok = value <= bound if direction == "max" else value >= bound
            checks.append({"limit": name, "metric": metric, "mode": mode, "value": value, "bound": bound,
                           "direction": direction, "ok": bool(ok), "note": note})
    return checks


def describe_failure(check: dict[str, Any]) -> str:
    """``consistency flip_rate 0.312 > 0.2`` for a failed check."""
    where = f"{check['mode']} " if check["mode"] else ""
    if check["value"] is None:
        return f"{where}{check['metric']}: {check['note']}"
    op = ">" if check["direction"] == "max" else "<"
    return f"{where}{check['metric']} {check['value']:.4g} {op} {check['bound']:.4g}"
