"""The GPU acceptance script's plumbing without a GPU: its dry run (what CI runs) does everything up
to the first CUDA call and writes the report, and touching CUDA on the way is an error here; its
verdicts are tested on made-up results. ``-m slow`` runs every stage on the CPU at the tiny shape."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from firm_lite.bench.acceptance import AcceptanceOptions, Row, judge, run_acceptance
from firm_lite.bench.acceptance_report import verdict

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
REF = {"a": (4, 5), "b": (2, 3), "c": (5, 5), "d": (1, 2)}


@pytest.mark.requires_extra("onnx")  # without it the onnx-fp32 row says "skipped", not "not run"
def test_dry_run_stops_before_cuda_and_writes_one_report(tmp_path, monkeypatch, capsys):
    import torch

    def no_cuda(*args, **kwargs):
        raise AssertionError("a dry run initialised CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    out = tmp_path / "report"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--dry-run", "--out", str(out), "--scratch", str(tmp_path / "s"),
                                      "--tiny-pairs", "1"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_.value.code == 0
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["verdict"] == {"passed": True, "dry_run": True, "failures": [], "warnings": []}
    assert result["reference"]["pairs"] == 1 and all(s in (1, 2, 3, 4, 5)
                                                      for v in result["reference"]["scores"].values() for s in v)
    statuses = {r["name"]: r["status"] for r in result["tiny"]}
    assert statuses["fp32"] == statuses["onnx-fp32"] == "not run (dry run)"
    assert set(statuses) >= {"bf16", "fp16", "int8", "nf4", "gptq-w4", "bnb-nf4", "onnx-fp16", "vllm"}
    assert all(s == "not run (dry run)" or s.startswith("skipped") for s in statuses.values())
    assert result["bench_8b"]["variants"][1:] == ["nf4", "int8", "gptq"]
    assert set(result["decisions"]) >= {"dtype_auto", "gptq_kernels", "onnx_providers_tensorrt_folder"}
    markdown = (out / "gpu-check.md").read_text()
    assert markdown.startswith("# firm-lite GPU acceptance check: DRY RUN") and "| fp32 (must match) |" in markdown
    assert capsys.readouterr().out.startswith("# firm-lite GPU acceptance check")


def test_exact_variants_must_match_and_others_may_drift_but_not_break():
    exact = judge(Row("fp32", "fp32"), {**REF, "d": (1, 3)}, REF)
    assert exact.status.startswith("FAIL") and exact.agreement == 3 and exact.mismatches == ["d: (1, 3) vs (1, 2)"]
    assert judge(Row("onnx-fp32", "x"), dict(REF), REF).status == "pass"
    drift = judge(Row("nf4", "nf4"), {**REF, "d": (1, 3)}, REF)
    assert drift.status == "pass (drift: 1/4 differ)"
    broken = judge(Row("int8", "int8"), {k: (None, None) for k in REF}, REF)
    assert broken.status.startswith("FAIL (broken") and broken.parse_failures == 8
    assert judge(Row("bf16", "bf16"), {**REF, "a": (1, 1), "b": (1, 1), "c": (1, 1)}, REF).status.startswith("FAIL")


def test_verdict_fails_on_errors_and_warns_when_the_plan_is_off():
    result = {"options": {"dry_run": False, "device": "cuda"},
              "tiny": [{"name": "fp32", "status": "pass"}, {"name": "int8", "status": "FAIL (error)", "error": "boom"}],
              "bench_8b": {"status": "run", "memory": [
                  {"variant": "bf16", "planned_gib": 18.7, "peak_gib": 23.0},
                  {"variant": "nf4", "planned_gib": 9.1, "peak_gib": 8.0},
                  {"variant": "gptq", "error": "worker exited 1: CUDA out of memory"}]}}
    v = verdict(result)
    assert not v["passed"]
    assert v["failures"] == ["tiny int8: FAIL (error) (boom)", "8B gptq: worker exited 1: CUDA out of memory"]
    assert v["warnings"] == ["8B bf16: peak 23.0 GiB is over the plan's 18.7 GiB"]
    result["options"]["device"] = "cpu"  # a CPU peak is the process's RSS, not comparable with the plan
    assert verdict(result)["warnings"] == []


@pytest.mark.slow
def test_every_stage_runs_on_cpu_at_the_tiny_shape(tmp_path):
    opts = AcceptanceOptions(out=tmp_path / "out", scratch=tmp_path / "s", device="cpu", shape="tiny", tiny_pairs=2,
                             bench_pairs=2, batch_sizes=(1,), max_new_tokens=8, image_size=160, cap_gib=None)
    result = run_acceptance(opts)
    rows = {r["name"]: r for r in result["tiny"]}
    assert rows["fp32"]["status"] == "pass" and rows["fp32"]["agreement"] == 2
    ran = [r for r in rows.values() if not r["status"].startswith("skipped")]
    assert all(not r["status"].startswith("FAIL") for r in ran), [(r["name"], r["status"], r["error"]) for r in ran]
    bench = result["bench_8b"]
    assert bench["status"] == "run" and {m["variant"] for m in bench["memory"]} >= {"fp32", "gptq"}
    assert all(m["error"] is None and m["peak_gib"] for m in bench["memory"]), bench["memory"]
    assert result["verdict"]["passed"], result["verdict"]
