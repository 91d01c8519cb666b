"""The GPU acceptance check's verdict and its report: ``gpu-check.json`` (the record) and
``gpu-check.md`` (made from the same dict, for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAN_SLACK = 1.15  # a measured peak this far above the plan is a warning: the planner is off


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Failures (any make the run fail) and warnings, from the result dict alone."""
    failures = [f"tiny {r['name']}: {r['status']}" + (f" ({r['error']})" if r.get("error") else "")
                for r in result.get("tiny", []) if r["status"].startswith("FAIL")]
    warnings = []
    bench = result.get("bench_8b") or {}
    if str(bench.get("status", "")).startswith("FAIL"):
        failures.append(f"8B bench: {bench['status']}: {bench.get('error')}")
    on_gpu = str(result.get("options", {}).get("device", "")).startswith("cuda")  # a CPU peak is the RSS
    for m in bench.get("memory", []):
        if m.get("error"):
            failures.append(f"8B {m['variant']}: {m['error']}")
        elif on_gpu and m.get("planned_gib") and m.get("peak_gib") and m["peak_gib"] > PLAN_SLACK * m["planned_gib"]:
            warnings.append(f"8B {m['variant']}: peak {m['peak_gib']} GiB is over the plan's {m['planned_gib']} GiB")
    return {"passed": not failures, "dry_run": bool(result.get("options", {}).get("dry_run")),
            "failures": failures, "warnings": warnings}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        keys = ("gptq_kernel", "providers", "kv_cache", "platform", "engines_built")
        shown = {k: value[k] for k in keys if k in value}
        return json.dumps(shown)[:140].replace("|", "/") if shown else "-"
    return str(value).replace("|", "/")


def markdown(result: dict[str, Any]) -> str:
    v, m, d = result["verdict"], result["machine"], result["decisions"]
    devices = ", ".join(f"cuda:{c['index']} {c['name']} (sm {c['capability'][0]}.{c['capability'][1]}, "
                        f"{c['total_bytes'] / 2**30:.0f} GiB)" for c in m["cuda"]) or "no CUDA device"
    head = "DRY RUN (CPU parts only)" if v["dry_run"] else ("PASSED" if v["passed"] else "FAILED")
    lines = [f"# firm-lite GPU acceptance check: {head}", "",
             f"Started {result['started']}, {result['seconds']} s. Device `{result['options']['device']}`: {devices}. "
             f"torch CUDA {m['torch_cuda']}, nvcc {'yes' if m['nvcc'] else 'no'}, triton {m['triton']}, "
             f"ONNX Runtime providers {', '.join(m['ort_providers']) or 'none'}, TensorRT libraries "
             f"{m['tensorrt_libs']}, vLLM {m['vllm']}, NVML {m['nvml']}.", "",
             f"Decisions from that report{'' if m['cuda'] else ' (no CUDA device: as for a GPU of unknown kind)'}: "
             f"`--dtype auto` = {d['dtype_auto']}; GPTQ kernels tried in order "
             f"{', '.join(d['gptq_kernels'])}; an ONNX folder opted in to TensorRT asks for "
             f"{d['onnx_providers_tensorrt_folder'] or '-'}.", ""]
    lines += [f"- {x}" for x in d["gptq_notes"] + d["onnx_provider_notes"]]
    ref = result["reference"]
    lines += ["", f"## Tiny critic on the device vs {ref['variant']} ({ref['pairs']} pairs, integer scores)", "",
              "| variant | status | same scores | parse failures | load s | score s | backend | error |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["tiny"]:
        same = f"{r['agreement']}/{r['pairs']}" if r["agreement"] is not None else "-"
        lines.append(f"| {r['name']}{' (must match)' if r['expect_identical'] else ''} | {r['status']} | {same} | "
                     f"{_cell(r['parse_failures'])} | {_cell(r['load_s'])} | {_cell(r['score_s'])} | "
                     f"{_cell(r['backend'])} | {_cell(r['error'])} |")
    bench = result.get("bench_8b") or {}
    lines += ["", "## 8B-shape random weights: speed and memory", "", f"Status: {bench.get('status')}."]
    if bench.get("memory"):
        lines += ["", "| variant | planned GiB | peak GiB | torch reserved GiB | device-level rise GiB | backend "
                      "| error |", "|---|---|---|---|---|---|---|"]
        for row in bench["memory"]:
            lines.append(f"| {row['variant']} | {_cell(row.get('planned_gib'))} | {_cell(row.get('peak_gib'))} | "
                         f"{_cell(row.get('torch_reserved_gib'))} | {_cell(row.get('device_rise_gib'))} | "
                         f"{_cell(row.get('backend'))} | {_cell(row.get('error'))} |")
        lines += ["", f"Speed per batch size: `{bench.get('results')}` and its `.md`. {bench.get('int8_note', '')}"]
    for name, why in (bench.get("skipped") or {}).items():
        lines.append(f"- {name} skipped: {why}")
    lines += ["", "## Verdict", ""]
    lines += [f"- FAIL: {f}" for f in v["failures"]] + [f"- warning: {w}" for w in v["warnings"]]
    if not v["failures"] and not v["warnings"]:
        lines.append("- nothing to report" if not v["dry_run"] else "- the CPU parts ran; nothing ran on a GPU")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu-check.json", out / "gpu-check.md"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n", "utf-8")
    md_path.write_text(markdown(json.loads(json_path.read_text("utf-8"))), "utf-8")
    return json_path, md_path
