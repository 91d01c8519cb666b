"""The GPU acceptance check's 8B-shape stage: random-weight Qwen3-VL-8B (and its random GPTQ w4
copy) benched per variant in its own process under a memory cap, each measured peak next to what
``firm-lite plan`` predicted, plus vLLM rows (each in its own process) when vLLM and
``firm_lite.vllm_backend`` are importable. See :mod:`firm_lite.bench.acceptance`.
"""

from __future__ import annotations

import json
import os
import signal
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
        if not extra_installed("bnb"):
            skipped["vllm-nf4"] = "bitsandbytes is not installed (vLLM's in-flight 4-bit needs it)"
    else:
        skipped["vllm"] = "vLLM or firm_lite.vllm_backend is not importable"
    return {"results": str(Path(opts.out) / "gpu-8b-random.json"), "memory": memory, "skipped": skipped,
            "int8_note": "random weights have no activation outliers: LLM.int8's outlier path is idle, so int8 "
                         "timings here are a lower bound for real weights"}


def run_vllm_bench(opts: AcceptanceOptions, checkpoint: Path, manifest: Path, dtype: str) -> list[dict[str, Any]]:
    """vLLM rows (bf16 or fp16, GPTQ w4 via gptq_marlin, bitsandbytes 4-bit in flight), each in its own
    process (vLLM's engine processes come and go with it)."""
    from firm_lite.bench.synthetic import make_random_gptq_checkpoint

    rows = []
    gptq = make_random_gptq_checkpoint(checkpoint, opts.scratch / "random-gptq-w4")  # reused when complete
    for label, folder, quantization in ((f"vllm-{dtype}", checkpoint, None), ("vllm-gptq", gptq, None),
                                        ("vllm-nf4", checkpoint, "bitsandbytes")):
        if quantization == "bitsandbytes" and not extra_installed("bnb"):
            continue  # the caller lists it as skipped
        spec = {"folder": str(folder), "manifest": str(manifest), "device": opts.device, "dtype": dtype,
                "max_new_tokens": opts.max_new_tokens, "pixels": opts.image_size ** 2, "cap_gib": opts.cap_gib,
                "quantization": quantization}
        out = opts.scratch / f"{label}.json"
        result = run_worker_process(vllm_worker_command(spec, out), out, opts.timeout_s)
        rows.append({"variant": label, **result})
    return rows


def vllm_worker_command(spec: dict[str, Any], out: Path) -> list[str]:
    return [sys.executable, "-m", "firm_lite.bench.acceptance_8b", "vllm", json.dumps(spec), str(out)]


def run_worker_process(command: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    """Run one worker in its own process group and read its JSON; on timeout the whole group is
    killed (vLLM's engine-core processes too, so the card is free for the next row)."""
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode or not out.exists():
        lines = [line for line in (output or "").strip().splitlines() if line.strip()]
        return {"error": f"exited {proc.returncode}: {(lines[-1] if lines else 'no output')[:300]}"}
    return json.loads(out.read_text("utf-8"))


def vllm_options(share: float, quantization: str | None) -> Any:
    """The engine options of a bench row: eager (no CUDA graph capture in a timed start), the share
    of the card, and vLLM's in-flight quantization when the row asks for it (GPTQ is read from the
    checkpoint's config)."""
    from dataclasses import fields

    from firm_lite.settings import VllmOptions

    kwargs: dict[str, Any] = {"gpu_memory_utilization": share, "enforce_eager": True}
    if quantization:
        if "quantization" not in {f.name for f in fields(VllmOptions)}:
            raise RuntimeError(f"VllmOptions has no 'quantization' field in this firm-lite (firm_lite/settings.py): "
                               f"the {quantization} row needs it")
        kwargs["quantization"] = quantization
    return VllmOptions(**kwargs)


def engine_facts(engine: Any) -> dict[str, Any]:
    """What vLLM actually ran: its quantization method and the KV cache blocks it allocated."""
    config = getattr(getattr(engine.llm, "llm_engine", None), "vllm_config", None)
    model = getattr(config, "model_config", None)
    cache = getattr(config, "cache_config", None)
    return {"quantization": getattr(model, "quantization", None), "kv_blocks": getattr(cache, "num_gpu_blocks", None)}


def time_vllm(engine: Any, items: list[Any]) -> dict[str, Any]:
    """Pairs/s of firm-lite's protocol, and decode tokens/s as (full run - prefill-only run); a
    prefill-only warm-up first (kernels, vLLM's processor cache), the prefix cache reset before
    each timed run."""
    from vllm import SamplingParams

    from firm_lite.prompts import MODES

    llm = engine.llm
    requests = engine.requests(items, list(MODES))
    prefill_only = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False)
    llm.generate(requests, prefill_only, use_tqdm=False)
    llm.reset_prefix_cache()
    start = time.perf_counter()
    llm.generate(requests, prefill_only, use_tqdm=False)
    prefill_s = time.perf_counter() - start
    llm.reset_prefix_cache()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    engine.score_modes(items, timings=timings)
    full_s = time.perf_counter() - start
    generated = int(timings.get("decode_tokens", 0) + timings.get("wasted_decode_tokens", 0))
    decode_s = full_s - prefill_s
    return {"pairs_per_s": round(len(items) / full_s, 3), "prefill_s": round(prefill_s, 2),
            "full_s": round(full_s, 2), "generated_tokens": generated, "sequences": len(requests),
            "decode_tokens_per_s": round((generated - len(requests)) / decode_s, 1) if decode_s > 0 else None}


def vllm_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One vLLM row: engine start, the timed runs of :func:`time_vllm`, device-level peak memory."""
    import torch
    from transformers import AutoProcessor

    from firm_lite.device import PeakMemory, total_memory_bytes
    from firm_lite.generation import DecodingConfig
    from firm_lite.images import ImageBudget, load_image
    from firm_lite.manifest import read_manifest
    from firm_lite.prompts import render_text
    from firm_lite.vllm_backend import VllmEngine

    device = torch.device(spec["device"])
    folder = Path(spec["folder"])
    processor = AutoProcessor.from_pretrained(folder)
    budget = ImageBudget.from_processor(processor, spec["pixels"], spec["pixels"])
    pairs = [r.pair for r in read_manifest(spec["manifest"]) if r.pair is not None]
    items = [(p, load_image(p.source, budget=budget), load_image(p.edited, budget=budget)) for p in pairs]
    total = total_memory_bytes(device)
    share = min(0.9, spec["cap_gib"] * 2**30 / total) if total and spec.get("cap_gib") else 0.9
    options = vllm_options(share, spec.get("quantization"))
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        engine = VllmEngine(folder, processor, lambda m, i, r: render_text(processor, m, i, r), budget,
                            DecodingConfig(max_new_tokens=spec["max_new_tokens"]), dtype=spec["dtype"],
                            options=options)
        load_s = time.perf_counter() - start
        facts = engine_facts(engine)
        measured = time_vllm(engine, items)
        engine.close()
    report = peak.report()
    return {"load_s": round(load_s, 1), **measured, **facts,
            "peak_gib": round((report["peak_bytes"] or 0) / 2**30, 2), "method": report["method"],
            "gpu_memory_utilization": share,
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
