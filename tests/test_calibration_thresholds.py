"""Thresholds file: families, inheritance from [default], refusal of unknown keys, and checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm_lite.calibration.thresholds import describe_failure, evaluate, load_thresholds
from firm_lite.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text, "utf-8")
    return path


def test_shipped_thresholds_file_loads_with_expected_families() -> None:
    t = load_thresholds(REPO / "calibration" / "thresholds.toml")
    assert {"default", "reference", "bnb", "gptq", "onnx"} <= set(t.families)
    assert t.resolve(["reference", "bf16"])[1]["max_flip_rate"] < t.resolve(["bnb", "nf4"])[1]["max_flip_rate"]
    assert t.resolve(["noisy", "noisy"])[0] == "default"
    # an int8 ONNX export is held to quantization limits, an fp32 export to the onnx family's
    assert t.resolve(["onnx", "onnx", "onnx-int8"])[0] == "onnx+onnx-int8"
    assert t.resolve(["onnx", "onnx", "onnx-int8"])[1]["max_flip_rate"] > t.resolve(["onnx", "onnx", "onnx-fp32"])[1][
        "max_flip_rate"]


def test_tables_override_default_key_by_key(tmp_path: Path) -> None:
    text = "[default]\nmax_flip_rate = 0.3\nmax_kl_p95 = 1\n[bnb]\nmax_flip_rate = 0.1\n"
    t = load_thresholds(_write(tmp_path, text))
    assert t.resolve(["bnb", None]) == ("bnb", {"max_flip_rate": 0.1, "max_kl_p95": 1.0})
    assert t.resolve(["unknown-family"]) == ("default", {"max_flip_rate": 0.3, "max_kl_p95": 1.0})


@pytest.mark.parametrize("text, fragment", [
    ("[default]\nmax_flip_rat = 0.3\n", "max_flip_rat is not a known limit"),
    ("[default]\nmax_flip_rate = 'high'\n", "must be a number"),
    ("[bnb]\nmax_flip_rate = 0.3\n", "needs a [default] table"),
    ("max_flip_rate = 0.3\n[default]\n", "must be a [family] table"),
    ("[default\n", "not valid TOML"),
])
def test_bad_files_refused_with_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        load_thresholds(_write(tmp_path, text))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def _metrics(flip_ex: float, flip_co: float, spearman: float | None, labels: dict | None = None,
             ref_constant: bool = False) -> dict:
    def mode(flip: float) -> dict:
        return {"flip_rate": flip, "big_flip_rate": 0.0, "kl_p95": 0.01, "parse_failure_rate": 0.0}
    return {"execution": mode(flip_ex), "consistency": mode(flip_co),
            "cme": {"cme_spearman": spearman, "n": 8, "reference_constant": ref_constant},
            "labels": labels or {"execution": None, "consistency": None}}


def test_checks_per_mode_and_failure_text() -> None:
    limits = {"max_flip_rate": 0.2, "min_cme_spearman": 0.9}
    checks = evaluate(_metrics(0.1, 0.3125, 0.95), limits)
    assert [(c["limit"], c["mode"], c["ok"]) for c in checks] == [
        ("max_flip_rate", "execution", True), ("max_flip_rate", "consistency", False),
        ("min_cme_spearman", None, True)]
    assert describe_failure(checks[1]) == "consistency flip_rate 0.3125 > 0.2"
    low = evaluate(_metrics(0.0, 0.0, 0.5), limits)[-1]
    assert not low["ok"] and describe_failure(low) == "cme_spearman 0.5 < 0.9"


def test_boundary_values_pass() -> None:
    assert all(c["ok"] for c in evaluate(_metrics(0.2, 0.2, 0.9), {"max_flip_rate": 0.2, "min_cme_spearman": 0.9}))


def test_undefined_correlation_skipped_only_when_reference_is_constant() -> None:
    limits = {"min_cme_spearman": 0.9}
    assert evaluate(_metrics(0, 0, None, ref_constant=True), limits)[0]["ok"]
    collapsed = evaluate(_metrics(0, 0, None, ref_constant=False), limits)[0]
    assert not collapsed["ok"] and "collapsed" in collapsed["note"]


def test_label_checks_only_when_labels_exist() -> None:
    limits = {"max_label_mae_increase": 0.25}
    assert evaluate(_metrics(0, 0, 1.0), limits) == []
    labels = {"execution": {"increase": 0.5}, "consistency": {"increase": 0.0}}
    checks = evaluate(_metrics(0, 0, 1.0, labels), limits)
    assert [c["ok"] for c in checks] == [False, True]


def test_missing_value_fails_a_max_check() -> None:
    m = _metrics(0, 0, 1.0)
    m["execution"]["flip_rate"] = None  # nothing parsed on one side
    check = evaluate(m, {"max_flip_rate": 0.2})[0]
    assert not check["ok"] and "nothing to compare" in describe_failure(check)
