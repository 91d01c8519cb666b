"""Measure one variant: load time, peak memory, latency by phase, throughput per batch size.

Run as ``python -m firm_lite.bench.worker SPEC.json OUT.json`` by the runner, one process per
variant. Images are decoded before timing starts (decoding is the same work for every variant);
what is timed is the model's work: vision, prefill, decode.

The *baseline* reproduces the reference pipeline: one pair at a time, one ``generate`` call per
mode (so both images are encoded again for each mode), no stop at the closed answer (EOS or
``max_new_tokens``, 256 by default).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _items(critic: Any, manifest: str, limit: int | None) -> list[tuple[Any, Any, Any]]:
    from firm_lite.manifest import read_manifest

    items = []
    for row in read_manifest(manifest):
        if row.pair is None:
            continue
        src, edt = critic.prepare(row.pair)
        items.append((row.pair, src, edt))
        if limit and len(items) >= limit:
            break
    return items


def measure_baseline(critic: Any, items: list[tuple[Any, Any, Any]]) -> dict[str, Any]:
    """The reference pipeline's way: per pair, per mode, plain generate, no early stop."""
    from firm_lite.device import synchronize

    base = replace(critic, engine="generate", decoding=replace(critic.decoding, stop_on_close=False))
    latencies, scores = [], {}
    t_all = time.perf_counter()
    for item in items:
        synchronize(critic.device)
        t0 = time.perf_counter()
        out = {m: base.score_modes([item], [m])[m][0] for m in ("execution", "consistency")}
        synchronize(critic.device)
        latencies.append(time.perf_counter() - t0)
        scores[item[0].id] = {m: out[m].score for m in out}
    total = time.perf_counter() - t_all
    return {"pairs": len(items), "seconds": total, "pairs_per_s": len(items) / total,
            "latency_p50_s": statistics.median(latencies), "latency_p95_s": _percentile(latencies, 0.95),
            "scores": scores}


def measure_engine(critic: Any, items: list[tuple[Any, Any, Any]], batch_size: int, protocol: str
                   ) -> dict[str, Any]:
    """Throughput and per-batch latency split by phase for the shared-prefix engine."""
    run = replace(critic, protocol=protocol)
    phases: dict[str, list[float]] = {"vision": [], "prefill": [], "decode": [], "total": []}
    tokens = wasted = 0  # wasted: steps vLLM ran after firm-lite's stop rule had ended an answer
    scores = {}
    t_all = time.perf_counter()
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        out = run.score_modes(batch, timings=timings)
        phases["total"].append(time.perf_counter() - t0)
        for phase in ("vision", "prefill", "decode"):
            phases[phase].append(timings.get(phase, 0.0))
        tokens += int(timings.get("decode_tokens", 0))
        wasted += int(timings.get("wasted_decode_tokens", 0))
        for k, (pair, _, _) in enumerate(batch):
            scores[pair.id] = {m: out[m][k].score for m in out}
    total = time.perf_counter() - t_all
    decode_s = sum(phases["decode"])
    return {
        "protocol": protocol, "batch_size": batch_size, "pairs": len(items), "seconds": total,
        "pairs_per_s": len(items) / total, "decode_tokens": tokens, "wasted_decode_tokens": wasted,
        "decode_tokens_per_s": tokens / decode_s if decode_s else None,
        "batch_latency_s": {p: {"p50": statistics.median(v), "p95": _percentile(v, 0.95)}
                            for p, v in phases.items() if any(v)},
        "scores": scores,
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load and measure one variant. Peak memory covers load and every run: torch's reserved
    peak and the device-level used memory sampled throughout (:class:`firm_lite.device.PeakMemory`),
    so the CUDA context and memory that ONNX Runtime or vLLM allocate are counted too."""
    from firm_lite.critic import load_critic
    from firm_lite.device import PeakMemory, resolve_device
    from firm_lite.settings import CriticSettings

    settings = CriticSettings(**spec["settings"])
    device = resolve_device(settings.device)
    with PeakMemory(device) as peak:
        t0 = time.perf_counter()
        critic = load_critic(settings.replace(device=str(device)))  # applies settings.memory_cap_gib
        load_s = time.perf_counter() - t0
        items = _items(critic, spec["manifest"], spec.get("limit"))
        if not items:
            raise SystemExit(f"no usable pairs in {spec['manifest']}")
        # warm-up (first-call allocations, lazy kernels) outside the timings
        critic.score_modes(items[:1])
        result: dict[str, Any] = {"variant": spec["variant"], "label": critic.variant, "device": str(device),
                                  "load_s": load_s, "engine": critic.uses_engine, "runs": [],
                                  "provenance": _provenance(critic)}
        if spec.get("baseline"):
            result["baseline"] = measure_baseline(critic, items)
        for b in spec["batch_sizes"]:  # backends without the engine batch through generate (no phase split)
            result["runs"].append(measure_engine(critic, items, b, "full"))
        if (critic.uses_engine or critic.backend is not None) and spec.get("fast", True):
            result["runs"].append(measure_engine(critic, items, max(spec["batch_sizes"]), "fast"))
    result["peak_memory"] = peak.report()
    result["peak_memory_bytes"] = result["peak_memory"]["peak_bytes"]
    return result


def _provenance(critic: Any) -> dict[str, Any]:
    """What was chosen on this machine (``--variant auto``; the backend's providers or kernel),
    for the results file, as JSON-safe values."""
    import json

    extra = {k: v for k, v in critic.provenance.items() if k in ("variant_choice", "backend")}
    return json.loads(json.dumps(extra, default=str))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text("utf-8"))
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result = run_worker(spec)
    Path(argv[1]).write_text(json.dumps(result, indent=1), "utf-8")


if __name__ == "__main__":
    main()
