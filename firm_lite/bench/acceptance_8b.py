"""The GPU acceptance check's 8B-shape stage: random-weight Qwen3-VL-8B (and its random GPTQ w4
copy) benched per variant in its own process under a memory cap, each measured peak next to what
``firm-lite plan`` predicted, plus vLLM rows (each in its own process) when vLLM and
``firm_lite.vllm_backend`` are importable. See :mod:`firm_lite.bench.acceptance`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from firm_lite.bench.acceptance_options import AcceptanceOptions, extra_installed, vllm_backend_importable


def bench_variants(dtype: str) -> list[tuple[str, str | None]]:
    """(variant, extra it needs): the reference precision, bitsandbytes nf4 and int8, GPTQ w4."""
    return [(dtype, None), ("nf4", "bnb"), ("int8", "bnb"), ("gptq", "gptq")]


def plan_rows(checkpoint: Path, dtype: str, opts: AcceptanceOptions) -> dict[str, float]:
    """What ``firm-lite plan`` predicts (GiB) per benched variant, for the largest batch."""
    from firm_lite.plan import GIB, plan

    rows = plan(str(checkpoint), opts.cap_gib, (opts.image_size, opts.image_size), dtype, max(opts.batch_sizes))
    names = {"gptq-w4-g128": "gptq"}
    return {names.get(r.variant, r.variant): round(r.total / GIB, 2) for r in rows}


def run_bench_8b(opts: AcceptanceOptions, dtype: str, checkpoint: Path) -> dict[str, Any]:
    from firm_lite.bench.runner import bench
    from firm_lite.bench.synthetic import make_random_gptq_checkpoint, make_synthetic_manifest
    from firm_lite.settings import CriticSettings

    skipped, names = {}, []
    for variant, extra in bench_variants(dtype):
        if not extra_installed(extra):
            skipped[variant] = f"the {extra} extra is not installed"
        elif variant == "gptq":
            names.append(str(make_random_gptq_checkpoint(checkpoint, opts.scratch / "random-gptq-w4")))
        else:
            names.append(variant)
    manifest = make_synthetic_manifest(opts.scratch / "pairs", opts.bench_pairs, opts.image_size)
    pixels = opts.image_size ** 2
    settings = CriticSettings(model=str(checkpoint), device=opts.device, dtype=dtype, min_pixels=pixels,
                              max_pixels=pixels, max_new_tokens=opts.max_new_tokens, memory_cap_gib=opts.cap_gib)
    result = bench(settings, variants=names, manifest=manifest, batch_sizes=list(opts.batch_sizes), out=opts.out,
                   name="gpu-8b-random", timeout_s=opts.timeout_s, progress=True)
    planned = plan_rows(checkpoint, dtype, opts)
    memory = []
    for v in result["variants"]:
        key = "gptq" if Path(v["variant"]).name == "random-gptq-w4" else v["variant"]
        peak = v.get("peak_memory") or {}
        gib = lambda b: None if b is None else round(b / 2**30, 2)  # noqa: E731
        memory.append({"variant": key, "planned_gib": planned.get(key), "peak_gib": gib(peak.get("peak_bytes")),
                       "torch_reserved_gib": gib(peak.get("torch_reserved_peak")),
                       "device_rise_gib": gib(peak.get("device_used_rise")), "method": peak.get("method"),
                       "error": v.get("error"), "backend": (v.get("provenance") or {}).get("backend")})
    if extra_installed("vllm") and vllm_backend_importable():
        memory += run_vllm_bench(opts, checkpoint, manifest, dtype)
    else:
        skipped["vllm"] = "vLLM or firm_lite.vllm_backend is not importable"
    return {"results": str(Path(opts.out) / "gpu-8b-random.json"), "memory": memory, "skipped": skipped,
            "int8_note": "random weights have no activation outliers: LLM.int8's outlier path is idle, so int8 "
                         "timings here are a lower bound for real weights"}


def run_vllm_bench(opts: AcceptanceOptions, checkpoint: Path, manifest: Path, dtype: str) -> list[dict[str, Any]]:
    """vLLM rows, each in its own process (vLLM's engine processes come and go with it)."""
    rows = []
    for label, folder in ((f"vllm-{dtype}", checkpoint), ("vllm-gptq", opts.scratch / "random-gptq-w4")):
        spec = {"folder": str(folder), "manifest": str(manifest), "device": opts.device, "dtype": dtype,
                "max_new_tokens": opts.max_new_tokens, "pixels": opts.image_size ** 2, "cap_gib": opts.cap_gib}
        out = opts.scratch / f"{label}.json"
        out.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-m", "firm_lite.bench.acceptance_8b", "vllm", json.dumps(spec),
                               str(out)], timeout=opts.timeout_s, capture_output=True, text=True)
        if proc.returncode or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            rows.append({"variant": label, "error": f"exited {proc.returncode}: {tail[0][:300]}"})
        else:
            rows.append({"variant": label, **json.loads(out.read_text("utf-8"))})
    return rows


def vllm_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One vLLM row: engine start, one timed pass over the pairs, device-level peak memory."""
    import torch
    from transformers import AutoProcessor

    from firm_lite.device import PeakMemory, total_memory_bytes
    from firm_lite.generation import DecodingConfig
    from firm_lite.images import ImageBudget, load_image
    from firm_lite.manifest import read_manifest
    from firm_lite.prompts import render_text
    from firm_lite.vllm_backend import VllmEngine, VllmOptions

    device = torch.device(spec["device"])
    folder = Path(spec["folder"])
    processor = AutoProcessor.from_pretrained(folder)
    budget = ImageBudget.from_processor(processor, spec["pixels"], spec["pixels"])
    pairs = [r.pair for r in read_manifest(spec["manifest"]) if r.pair is not None]
    items = [(p, load_image(p.source, budget=budget), load_image(p.edited, budget=budget)) for p in pairs]
    total = total_memory_bytes(device)
    share = min(0.9, spec["cap_gib"] * 2**30 / total) if total and spec.get("cap_gib") else 0.9
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        engine = VllmEngine(folder, processor, lambda m, i, r: render_text(processor, m, i, r), budget,
                            DecodingConfig(max_new_tokens=spec["max_new_tokens"]), dtype=spec["dtype"],
                            options=VllmOptions(gpu_memory_utilization=share, enforce_eager=True))
        load_s = time.perf_counter() - start
        timings: dict[str, float] = {}
        start = time.perf_counter()
        engine.score_modes(items, timings=timings)
        seconds = time.perf_counter() - start
        engine.close()
    report = peak.report()
    return {"load_s": round(load_s, 1), "pairs_per_s": round(len(items) / seconds, 3),
            "decode_tokens": timings.get("decode_tokens"), "peak_gib": round((report["peak_bytes"] or 0) / 2**30, 2),
            "method": report["method"], "gpu_memory_utilization": share,
            "note": "vLLM reserves gpu_memory_utilization of the card for its KV cache up front"}


def main(argv: list[str] | None = None) -> int:
    """``python -m firm_lite.bench.acceptance_8b vllm SPEC_JSON OUT``: one vLLM row's process."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["vllm"] or len(argv) != 3:
        raise SystemExit("usage: python -m firm_lite.bench.acceptance_8b vllm SPEC_JSON OUT")
    Path(argv[2]).write_text(json.dumps(vllm_worker(json.loads(argv[1]))), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
