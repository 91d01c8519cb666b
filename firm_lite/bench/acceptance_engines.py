"""The 8B-shape engine comparison behind ``bench/gpu_8b.py``: firm-lite's transformers engine and
vLLM (bf16, GPTQ w4 through gptq_marlin, bitsandbytes 4-bit quantized at load) on random weights
of the exact Qwen3-VL-8B shape, in one run under a time budget.

Each row runs in its own process group (:func:`~firm_lite.bench.acceptance_8b.run_worker_process`),
given at most what is left of the budget, and killed with its vLLM engine processes when it runs
over; rows that no longer fit the budget are listed as skipped. The random checkpoint is built in a
child process (and reused when complete); its GPTQ copy is written on the CPU while the first row
runs. This process never touches CUDA: the card's name and size come from a short child process.
Results: ``<out>/gpu-8b-engines.json`` and ``.md`` (made from the JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from firm_lite.bench.acceptance_8b import run_worker_process, vllm_worker_command
from firm_lite.bench.acceptance_options import extra_installed, vllm_backend_importable
from firm_lite.bench.acceptance_speed import (
    DEFAULT_ROWS,
    SPEED_ROWS,
    card_bandwidth_gbs,
    decode_weight_bytes,
    speed_markdown,
    speed_row,
)

MIN_ROW_S = 60  # a row started with less than this left would only time out
REPORT_RESERVE_S = 10


@dataclass
class EngineBenchOptions:
    scratch: Path = Path("/tmp/firm-lite-8b")
    out: Path = Path("bench/results")
    rows: tuple[str, ...] = DEFAULT_ROWS
    pairs: int = 8
    image_size: int = 1024
    max_new_tokens: int = 64
    batch_size: int = 4  # the transformers engine's pairs per batch (vLLM takes all at once)
    cap_gib: float | None = None  # vLLM's share of the card = min(0.9, cap / card); None: 0.9
    budget_s: float = 540.0
    row_timeout_s: float = 300.0
    device: str = "cuda"
    bandwidth_gbs: float | None = None


def row_unavailable(name: str) -> str | None:
    """Why a row cannot run in this environment (None: it can)."""
    spec = SPEED_ROWS[name]
    if spec["engine"] == "vllm" and not (extra_installed("vllm") and vllm_backend_importable()):
        return "vLLM or firm_lite.vllm_backend is not importable (pip install \"firm-lite[vllm]\")"
    if spec.get("recipe") == "bnb-nf4" and not extra_installed("bnb"):
        return "bitsandbytes is not installed"
    if spec["engine"] == "hf" and spec["checkpoint"] == "gptq" and not extra_installed("gptq"):
        return "the gptq extra is not installed"
    return None


def probe_card(device: str) -> dict[str, Any]:
    """Name and memory of ``device``, read in a child process (this one stays off CUDA)."""
    code = ("import json, sys; from firm_lite.device import machine_report; d = sys.argv[1]; "
            "i = int(d.partition(':')[2] or 0); c = [x for x in machine_report().cuda if x.index == i]; "
            "print(json.dumps({'name': c[0].name, 'total_bytes': c[0].total_bytes} if c else {}))")
    proc = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if proc.returncode == 0 and lines else {}


def hf_measurement(result: dict[str, Any], batch_size: int, pairs: int) -> dict[str, Any]:
    """A :mod:`firm_lite.bench.worker` result as the fields :func:`speed_row` reads."""
    if result.get("error") or not result.get("runs"):
        return {"error": result.get("error") or "no run recorded"}
    run = result["runs"][0]
    peak = (result.get("peak_memory") or {}).get("peak_bytes")
    return {"pairs_per_s": round(run["pairs_per_s"], 3), "decode_tokens_per_s": run.get("decode_tokens_per_s"),
            "sequences": 2 * min(batch_size, pairs), "load_s": round(result.get("load_s", 0), 1),
            "peak_gib": round(peak / 2**30, 2) if peak else None}


def run_engine_comparison(opts: EngineBenchOptions) -> dict[str, Any]:
    from firm_lite.bench.synthetic import make_random_checkpoint, make_random_gptq_checkpoint, make_synthetic_manifest
    from firm_lite.plan import GIB, inventory
    from firm_lite.recipes import load_recipe
    from firm_lite.settings import CriticSettings

    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    deadline = t0 + opts.budget_s
    unknown = [r for r in opts.rows if r not in SPEED_ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows are {', '.join(SPEED_ROWS)}")
    scratch, out = Path(opts.scratch), Path(opts.out)
    card = probe_card(opts.device)
    gbs, source = card_bandwidth_gbs(card.get("name"), opts.bandwidth_gbs)
    skipped = {name: why for name in opts.rows if (why := row_unavailable(name))}
    wanted = [name for name in opts.rows if name not in skipped]
    ckpt = make_random_checkpoint(scratch / "qwen3-vl-random", device=opts.device)
    gptq: dict[str, Any] = {}
    builder = None
    if any(SPEED_ROWS[n]["checkpoint"] == "gptq" for n in wanted):
        def build() -> None:
            gptq["path"] = make_random_gptq_checkpoint(ckpt, scratch / "qwen3-vl-random-gptq-w4")

        builder = threading.Thread(target=build, name="random-gptq", daemon=True)
        builder.start()
    manifest = make_synthetic_manifest(scratch / "pairs", opts.pairs, opts.image_size)
    inv = inventory()  # the shipped 8B config: the random checkpoint's shape
    total = card.get("total_bytes")
    share = min(0.9, opts.cap_gib * GIB / total) if total and opts.cap_gib else 0.9
    planned = _planned_vllm(total, share, opts.image_size) if total else {}
    pixels = opts.image_size ** 2
    rows = []
    for name in wanted:
        spec = SPEED_ROWS[name]
        left = deadline - time.perf_counter() - REPORT_RESERVE_S
        folder: Path | None = ckpt
        if spec["checkpoint"] == "gptq":
            builder.join(timeout=max(0.0, left))
            folder = gptq.get("path")
            left = deadline - time.perf_counter() - REPORT_RESERVE_S
        if folder is None or left < MIN_ROW_S:
            skipped[name] = "time budget spent" if left < MIN_ROW_S else "the random GPTQ checkpoint is not ready"
            continue
        timeout = min(opts.row_timeout_s, left)
        result_file = scratch / f"{name}.json"
        if spec["engine"] == "vllm":
            job = {"folder": str(folder), "manifest": str(manifest), "device": opts.device, "dtype": "bf16",
                   "max_new_tokens": opts.max_new_tokens, "pixels": pixels, "cap_gib": opts.cap_gib,
                   "quantization": spec["quantization"] if spec["quantization"] == "bitsandbytes" else None}
            measured = run_worker_process(vllm_worker_command(job, result_file), result_file, timeout)
            fit = planned.get(spec["plan"])
            if fit is not None:
                measured["kv_blocks_planned"] = fit.kv_blocks
                concurrent = 2 * fit.pairs_in_flight
                if measured.get("sequences") and concurrent and concurrent < measured["sequences"]:
                    measured["note"] = (f"the plan holds {fit.pairs_in_flight} pairs at once: decoded in waves, "
                                        "steps/s is a lower bound")
                    measured["sequences"] = concurrent
        else:
            variant = str(folder) if spec["checkpoint"] == "gptq" else spec["variant"]
            settings = CriticSettings(model=str(ckpt), variant=variant, device=opts.device, dtype="bf16",
                                      min_pixels=pixels, max_pixels=pixels, max_new_tokens=opts.max_new_tokens,
                                      memory_cap_gib=opts.cap_gib, batch_size=opts.batch_size)
            job = {"settings": asdict(settings), "variant": variant, "manifest": str(manifest),
                   "batch_sizes": [opts.batch_size], "limit": None, "baseline": False, "fast": False}
            spec_file = scratch / f"{name}.spec.json"
            spec_file.write_text(json.dumps(job, default=str), "utf-8")
            raw = run_worker_process([sys.executable, "-m", "firm_lite.bench.worker", str(spec_file),
                                      str(result_file)], result_file, timeout)
            measured = hf_measurement(raw, opts.batch_size, opts.pairs)
        recipe = load_recipe(spec["recipe"]) if spec["recipe"] else None
        rows.append(speed_row(name, measured, decode_weight_bytes(inv, recipe), gbs))
    report = {"started": started, "seconds": round(time.perf_counter() - t0, 1), "budget_s": opts.budget_s,
              "card": {**card, "bandwidth_gbs": gbs, "bandwidth_source": source},
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
              "pairs": opts.pairs, "image_size": opts.image_size, "max_new_tokens": opts.max_new_tokens,
              "gpu_memory_utilization": share, "rows": rows, "skipped": skipped}
    return write_speed_report(report, out)


def _planned_vllm(total_bytes: int, share: float, image_size: int) -> dict[str, Any]:
    """The vLLM plan's engine fit per variant for this card and share (one engine per card)."""
    from firm_lite.plan import GIB
    from firm_lite.plan.vllm import plan_vllm

    plan = plan_vllm(vram_gib=total_bytes / GIB, image_size=(image_size, image_size), gpu_memory_utilization=share)
    return {r.variant: r.fit for r in plan.rows if r.fit is not None and r.tensor_parallel_size == 1}


def write_speed_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "gpu-8b-engines.json"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", "utf-8")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(speed_markdown(json.loads(json_path.read_text("utf-8"))), "utf-8")
    return {**report, "paths": {"json": str(json_path), "markdown": str(md_path)}}
