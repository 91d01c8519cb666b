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


# ---- bench/gpu_8b.py: the engine comparison's pure parts and its plumbing, without a GPU ----------

def test_card_bandwidth_table_matches_specific_names_first():
    from firm_lite.bench.acceptance_speed import card_bandwidth_gbs

    cards = {"NVIDIA H200": 4800, "NVIDIA H100 80GB HBM3": 3350, "NVIDIA H100 PCIe": 2000,
             "NVIDIA A100-SXM4-80GB": 2039, "NVIDIA A100-SXM4-40GB": 1555, "NVIDIA L40S": 864, "NVIDIA L4": 300,
             "NVIDIA GeForce RTX 4090": 1008, "NVIDIA GeForce RTX 3090": 936}
    assert {name: card_bandwidth_gbs(name)[0] for name in cards} == cards
    assert card_bandwidth_gbs("Some Future GPU") == (None, "unknown card 'Some Future GPU': give --bandwidth-gbs")
    assert card_bandwidth_gbs("NVIDIA H200", 4000) == (4000.0, "--bandwidth-gbs")


def test_decode_reads_the_language_model_not_the_vision_tower():
    from firm_lite.bench.acceptance_speed import bandwidth_percent, decode_weight_bytes
    from firm_lite.plan import gptq_linear_bytes, inventory
    from firm_lite.recipes import load_recipe

    H, FFN, L, V, KV = 4096, 12288, 36, 151936, 8 * 128  # Qwen3-VL-8B text model
    linears = 2 * H * H + 2 * H * KV + 3 * H * FFN
    norms = L * (2 * H + 2 * 128) + H
    inv = inventory()
    assert decode_weight_bytes(inv, None) == (L * linears + norms + V * H) * 2  # ~14.1 GiB read per step
    gptq = sum(gptq_linear_bytes(lin, 4, 128) for name, lin in inv.linears.items()
               if name.startswith("model.language_model.layers."))
    assert decode_weight_bytes(inv, load_recipe("gptq-w4-g128")) == gptq + (norms + V * H) * 2
    # 15e9 bytes x 100 steps/s on a 4800 GB/s card: 31.25 % of the ceiling
    assert bandwidth_percent(15 * 10**9, 100.0, 4800.0) == round(31.25, 1)
    assert bandwidth_percent(15 * 10**9, None, 4800.0) is None and bandwidth_percent(1, 1.0, None) is None


def test_speed_rows_and_report():
    from firm_lite.bench.acceptance_engines import hf_measurement
    from firm_lite.bench.acceptance_speed import speed_markdown, speed_row

    gib = 2**30
    hf = hf_measurement({"load_s": 12.34, "runs": [{"pairs_per_s": 0.5, "decode_tokens_per_s": 400.0}],
                         "peak_memory": {"peak_bytes": 20 * gib}}, batch_size=4, pairs=8)
    row = speed_row("hf-bf16", hf, 14 * gib, 4800.0)
    assert row["sequences"] == 8 and row["decode_steps_per_s"] == 50.0  # 400 tok/s over 8 sequences
    assert row["bandwidth_pct"] == round(100 * 14 * gib * 50 / 4.8e12, 1) and row["peak_gib"] == 20.0
    vllm = speed_row("vllm-gptq-w4", {"pairs_per_s": 2.0, "decode_tokens_per_s": 1600.0, "sequences": 16,
                                      "quantization": "gptq", "kv_blocks": 900, "kv_blocks_planned": 929}, 4 * gib,
                     4800.0)
    assert vllm["error"] == "asked for gptq_marlin, vLLM ran gptq"  # a slower kernel is not a silent pass
    failed = speed_row("vllm-nf4", {"error": "timed out after 120 s"}, 4 * gib, 4800.0)
    assert failed["error"] == "timed out after 120 s" and "pairs_per_s" not in failed
    report = {"card": {"name": "NVIDIA H200", "bandwidth_gbs": 4800.0, "bandwidth_source": "table (H200)"},
              "pairs": 8, "image_size": 1024, "max_new_tokens": 64, "rows": [row, vllm, failed],
              "skipped": {"vllm-bf16": "time budget spent"}, "started": "t", "seconds": 1.0, "budget_s": 540}
    md = speed_markdown(report)
    assert "| hf-bf16 | 0.50 | 400.00 | 8 | 50.00 |" in md and "| 900 / 929 |" in md
    assert "timed out after 120 s" in md and "- vllm-bf16 skipped: time budget spent" in md


def test_bitsandbytes_row_needs_the_quantization_option(monkeypatch):
    from dataclasses import dataclass

    import firm_lite.settings
    from firm_lite.bench.acceptance_8b import vllm_options

    @dataclass
    class OldOptions:
        gpu_memory_utilization: float = 0.9
        enforce_eager: bool = False

    assert vllm_options(0.5, None).gpu_memory_utilization == 0.5
    monkeypatch.setattr(firm_lite.settings, "VllmOptions", OldOptions)
    with pytest.raises(RuntimeError, match="no 'quantization' field"):
        vllm_options(0.5, "bitsandbytes")


def test_a_worker_over_its_time_is_killed_with_its_children(tmp_path):
    import time

    from firm_lite.bench.acceptance_8b import run_worker_process

    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    result = run_worker_process([sys.executable, "-c", code], tmp_path / "out.json", 3)
    assert result == {"error": "timed out after 3 s"}
    child = Path(f"/proc/{int(pid_file.read_text())}/stat")
    time.sleep(0.5)
    # the grandchild (a vLLM engine core, in real life) is gone too: no process, or a zombie awaiting its reaper
    assert not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    ok = run_worker_process([sys.executable, "-c", f"open({str(tmp_path / 'o.json')!r}, 'w').write('{{\"a\": 1}}')"],
                            tmp_path / "o.json", 30)
    assert ok == {"a": 1}
    failed = run_worker_process([sys.executable, "-c", "raise SystemExit('no GPU here')"], tmp_path / "x.json", 30)
    assert failed == {"error": "exited 1: no GPU here"}


def test_engine_comparison_runs_rows_within_the_budget(tmp_path, monkeypatch):
    import firm_lite.bench.acceptance_engines as engines
    import firm_lite.bench.synthetic as synthetic

    calls = []

    def fake_worker(command, out, timeout):
        calls.append((command, timeout))
        if "firm_lite.bench.worker" in command:
            return {"load_s": 5.0, "runs": [{"pairs_per_s": 0.4, "decode_tokens_per_s": 320.0}],
                    "peak_memory": {"peak_bytes": 19 * 2**30}}
        quantization = "gptq_marlin" if "gptq" in command[-2] else None  # the job's JSON names the folder
        return {"load_s": 60.0, "pairs_per_s": 1.5, "decode_tokens_per_s": 1500.0, "sequences": 4,
                "quantization": quantization, "kv_blocks": 100000, "peak_gib": 126.0}

    monkeypatch.setattr(engines, "probe_card", lambda device: {"name": "NVIDIA H200", "total_bytes": 140 * 2**30})
    monkeypatch.setattr(engines, "row_unavailable", lambda name: "bitsandbytes is not installed"
                        if name == "vllm-nf4" else None)
    monkeypatch.setattr(engines, "run_worker_process", fake_worker)
    monkeypatch.setattr(synthetic, "make_random_checkpoint", lambda folder, device: folder)
    monkeypatch.setattr(synthetic, "make_random_gptq_checkpoint", lambda src, folder: folder)
    opts = engines.EngineBenchOptions(scratch=tmp_path / "s", out=tmp_path / "out", pairs=2, image_size=64,
                                      budget_s=500, row_timeout_s=200)
    report = engines.run_engine_comparison(opts)
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["vllm-bf16", "hf-bf16", "vllm-gptq-w4"]
    assert report["skipped"] == {"vllm-nf4": "bitsandbytes is not installed"}
    assert rows["hf-bf16"]["decode_steps_per_s"] == 80.0  # 320 tok/s, both modes of 2 pairs
    assert rows["vllm-bf16"]["bandwidth_pct"] is not None and rows["vllm-bf16"]["kv_blocks_planned"] > 0
    assert rows["vllm-gptq-w4"]["error"] is None and rows["vllm-gptq-w4"]["quantization"] == "gptq_marlin"
    assert rows["vllm-gptq-w4"]["weights_read_per_step_gib"] < rows["vllm-bf16"]["weights_read_per_step_gib"] / 2
    assert all(timeout <= 200 for _, timeout in calls)
    markdown = (tmp_path / "out" / "gpu-8b-engines.md").read_text()
    assert markdown.startswith("# firm-lite 8B-shape engines on NVIDIA H200")
    short = engines.run_engine_comparison(engines.EngineBenchOptions(
        scratch=tmp_path / "s", out=tmp_path / "out2", pairs=2, image_size=64, budget_s=30))
    assert short["rows"] == [] and set(short["skipped"].values()) >= {"time budget spent"}
