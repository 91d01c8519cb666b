"""``firm_lite.bench.bench``: run one worker process per variant and put the numbers side by side.

The first variant's worker also measures the reference-style baseline (see
:mod:`firm_lite.bench.worker`), so every speed figure in the run has a same-run ratio to it, and
the full protocol's integer scores are checked against the baseline's pair by pair.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.settings import CriticSettings

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 8)


def _run_worker(spec: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="firm-lite-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), "utf-8")
        proc = subprocess.run([sys.executable, "-m", "firm_lite.bench.worker", str(spec_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"variant": spec["variant"], "error": f"worker exited {proc.returncode}: {tail[0]}"}
        return json.loads(out_path.read_text("utf-8"))


def _drift(calibration: dict[str, Any] | None, label: str, variant: str) -> dict[str, Any] | None:
    """The calibration report's figures for this variant (matched by name, label or folder);
    the worse of the two modes for flip rate and KL."""
    if not calibration:
        return None
    wanted = {label, variant, str(Path(variant).resolve()) if Path(variant).exists() else variant}
    for entry in calibration.get("variants", []):
        if not wanted & {entry.get("variant"), entry.get("name"), entry.get("folder")}:
            continue
        metrics = entry.get("metrics", {})
        modes = [metrics[m] for m in ("execution", "consistency") if m in metrics]
        return {
            "flip_rate": max((m.get("flip_rate") or 0.0 for m in modes), default=None),
            "big_flip_rate": max((m.get("big_flip_rate") or 0.0 for m in modes), default=None),
            "kl_p95": max((m.get("kl_p95") or 0.0 for m in modes), default=None),
            "cme_mae": metrics.get("cme", {}).get("cme_mae"),
            "passed": entry.get("passed"),
        }
    return None


def _compare(scores: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    mismatches = [pid for pid, s in scores.items() if baseline.get(pid) != s]
    return {"pairs": len(scores), "mismatches": len(mismatches), "mismatch_ids": mismatches[:20],
            "identical": not mismatches and len(scores) == len(baseline)}


def bench(settings: CriticSettings | None = None, *, variants: list[str] | tuple[str, ...] = ("default",),
          manifest: str | Path, batch_sizes: list[int] | tuple[int, ...] = DEFAULT_BATCH_SIZES,
          out: str | Path = "bench/results", limit: int | None = None, calibration: str | Path | None = None,
          name: str | None = None, threads: int | None = None, memory_cap_gib: float | None = None,
          timeout_s: int = 3600, progress: bool = True) -> dict[str, Any]:
    """Benchmark ``variants`` on ``manifest``; writes ``<out>/<name>.json`` (+ .md and .png).

    Every variant is loaded with ``settings`` (model, device, dtype, image budget, decoding)
    and its own variant name."""
    from firm_lite import __version__
    from firm_lite.bench.report import write_views
    from firm_lite.manifest import read_manifest

    settings = settings or CriticSettings(model="tiny")
    if memory_cap_gib is None:
        memory_cap_gib = settings.memory_cap_gib
    model, device, max_new_tokens = settings.model, settings.device, settings.max_new_tokens
    manifest = Path(manifest)
    pairs = [r for r in read_manifest(manifest) if r.pair is not None]
    if not pairs:
        raise UserError(f"{manifest}: no usable pairs")
    if not variants:
        raise UserError("give at least one --variant")
    if any(b < 1 for b in batch_sizes):
        raise UserError("--batch-size values must be >= 1")
    cal = None
    if calibration:
        try:
            cal = json.loads(Path(calibration).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--calibration {calibration}: cannot read ({exc})") from None
    results: dict[str, Any] = {
        "firm_lite": __version__, "model": model, "manifest": str(manifest), "pairs": min(len(pairs), limit or 10**9),
        "device": device, "batch_sizes": list(batch_sizes), "max_new_tokens": max_new_tokens,
        "threads": threads or os.cpu_count(), "memory_cap_gib": memory_cap_gib,
        "image_budget": {"min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "variants": [],
    }
    baseline = None
    for i, variant in enumerate(variants):
        if progress:
            log.info("[bench] %s: measuring in its own process ...", variant)
        loaded = settings.replace(variant=variant, batch_size=max(batch_sizes), memory_cap_gib=memory_cap_gib)
        spec = {"settings": asdict(loaded), "variant": variant,
                "manifest": str(manifest), "batch_sizes": list(batch_sizes), "limit": limit,
                "baseline": i == 0, "threads": threads}
        res = _run_worker(spec, timeout_s)
        if i == 0 and "baseline" in res:
            baseline = res.pop("baseline")
            results["baseline"] = {k: v for k, v in baseline.items() if k != "scores"}
            results["baseline"]["variant"] = variant
        for run in res.get("runs", []):
            if baseline:
                run["ratio_pairs_per_s"] = run["pairs_per_s"] / baseline["pairs_per_s"]
                if run["protocol"] == "full" and run["scores"]:
                    run["vs_baseline"] = _compare(run["scores"], baseline["scores"])
                elif run["scores"]:
                    run["agreement_with_full"] = _compare(run["scores"], baseline["scores"])
            run.pop("scores", None)
        res["drift"] = _drift(cal, res.get("label", variant), variant)
        for run in res.get("runs", []):
            if run["protocol"] == "fast":  # the fast protocol's own drift, if calibrate measured "<variant>+fast"
                run["drift"] = _drift(cal, res.get("label", variant) + "+fast", variant + "+fast")
        results["variants"].append(res)
        if "error" in res:
            log.warning("[bench] %s: %s", variant, res["error"])
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or f"bench-{Path(model).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = out_dir / f"{stem}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n", "utf-8")
    tmp.replace(json_path)
    md, png = write_views(json_path)
    results["paths"] = {"json": str(json_path), "markdown": str(md), "plot": str(png) if png else None}
    return results
