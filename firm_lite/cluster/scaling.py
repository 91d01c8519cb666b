"""How ``firm-lite score --ray`` scales: one manifest scored by 1..N Ray Data workers in one run,
next to a single-process baseline, with each stage's fixed cost measured apart from throughput.

Per worker count: ``startup_s`` (from the call to the first record: actor start, critic load,
first batch), ``steady_pairs_per_s`` (records after the first, over the time between the first and
the last record) and ``end_to_end_pairs_per_s`` (records over the whole call); efficiency is the
rate over N times the one-worker rate of the same run. The baseline is ``firm-lite score`` in this
process with as many torch threads as a worker has CPUs. Every run's records are compared with the
baseline's (identical lines, scores that differ, largest probability difference), so a speed-up
never hides a change of result. ``bench/cluster_scaling.py`` is the command line.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from firm_lite.settings import CriticSettings


def compare_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> dict[str, Any]:
    """Identical records, differing scores/errors and the largest probability gap, by id."""
    by_id = {(r["id"], r["error"] is None): r for r in want}
    identical = score_changes = 0
    gap, worst = 0.0, None
    for rec in got:
        ref = by_id.get((rec["id"], rec["error"] is None))
        if ref is None:
            score_changes += 1
            continue
        identical += json.dumps(rec, sort_keys=True) == json.dumps(ref, sort_keys=True)
        for mode in ("execution", "consistency"):
            a, b = rec.get(mode), ref.get(mode)
            if not a or not b:
                continue
            score_changes += a["score"] != b["score"]
            for p, q in zip(a["probs"] or (), b["probs"] or (), strict=False):
                if abs(p - q) > gap:
                    gap, worst = abs(p - q), rec["id"]
    return {"records": len(got), "identical": identical, "score_changes": score_changes,
            "max_prob_diff": gap, "max_prob_diff_id": worst}


def scaling_run(settings: CriticSettings, manifest: str | Path, *, workers: list[int], batch_size: int = 4,
                cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None, ray: str = "auto",
                workdir: str | Path | None = None) -> dict[str, Any]:
    """Score ``manifest`` single-process, then with each worker count in ``workers``; see the module
    docstring for what is measured."""
    import torch

    from firm_lite.cluster.batch import score_on_ray
    from firm_lite.cluster.connect import ray_session, require_ray
    from firm_lite.critic import load_critic
    from firm_lite.merge import merge_results
    from firm_lite.scoring import score

    ray_module = require_ray()
    folder = Path(workdir or tempfile.mkdtemp(prefix="firm-lite-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus_per_worker)))
    try:
        t0 = time.perf_counter()
        load_critic(settings)
        t1 = time.perf_counter()
        base = score(settings, manifest=manifest, out=folder / "single.jsonl", batch_size=batch_size)
        t2 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    baseline = {"load_s": round(t1 - t0, 2), "score_s": round(t2 - t1, 2), "pairs": len(base.records),
                "pairs_per_s": round(len(base.records) / (t2 - t1), 3)}

    runs = []
    t_init = time.perf_counter()
    with ray_session(ray) as session:
        ray_init_s = time.perf_counter() - t_init
        for n in workers:
            out = folder / f"ray-{n}"
            stamps: list[float] = []
            start = time.perf_counter()
            run = score_on_ray(settings, manifest=manifest, out=out, ray=ray, workers=n, batch_size=batch_size,
                               cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                               on_record=lambda _, stamps=stamps: stamps.append(time.perf_counter()))
            wall = time.perf_counter() - start
            merged = merge_results([out], manifest=manifest).records
            steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] \
                else None
            runs.append({"workers": n, "pairs": len(run.records), "wall_s": round(wall, 2),
                         "startup_s": round(stamps[0] - start, 2) if stamps else None,
                         "steady_pairs_per_s": round(steady, 3) if steady else None,
                         "end_to_end_pairs_per_s": round(len(run.records) / wall, 3),
                         "vs_single_process": compare_records(merged, base.records)})
        cluster = {"address": session.address, "cpus": session.cpus, "gpus": session.gpus}
    one = runs[0] if runs and runs[0]["workers"] == 1 else None
    for r in runs:
        for key in ("steady_pairs_per_s", "end_to_end_pairs_per_s"):
            if one and one[key] and r[key]:
                r[key.replace("pairs_per_s", "efficiency")] = round(r[key] / (r["workers"] * one[key]), 3)
    return {
        "what": "firm-lite score --ray scaling: the same manifest with 1..N Ray Data workers, one run",
        "manifest": str(manifest), "batch_size": batch_size, "cpus_per_worker": cpus_per_worker,
        "gpus_per_worker": gpus_per_worker, "settings": {"model": settings.model, "variant": settings.variant,
                                                         "device": settings.device},
        "ray_init_s": round(ray_init_s, 2), "single_process": baseline, "runs": runs, "cluster": cluster,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"ray": ray_module.__version__, "torch": torch.__version__,
                     "firm_lite": base.provenance.get("firm_lite")},
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a markdown table (made from the saved JSON, see ``bench/cluster_scaling.py``)."""
    base = result["single_process"]
    lines = [f"Ray init {result['ray_init_s']} s; single process: load {base['load_s']} s, "
             f"{base['pairs_per_s']} pairs/s over {base['pairs']} pairs (batch {result['batch_size']}, "
             f"{result['cpus_per_worker']:g} CPU per worker; load average before/after "
             f"{result['machine']['load_avg_before'][0]}/{result['machine']['load_avg_after'][0]} on "
             f"{result['machine']['cpus']} CPUs)", "",
             "| workers | wall s | start-up s | steady pairs/s | efficiency | end-to-end pairs/s | efficiency | "
             "identical records | score changes | max prob diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        cmp = r["vs_single_process"]
        lines.append(f"| {r['workers']} | {r['wall_s']} | {r['startup_s']} | {r['steady_pairs_per_s']} | "
                     f"{r.get('steady_efficiency', '-')} | {r['end_to_end_pairs_per_s']} | "
                     f"{r.get('end_to_end_efficiency', '-')} | {cmp['identical']}/{cmp['records']} | "
                     f"{cmp['score_changes']} | {cmp['max_prob_diff']:.1e} |")
    return "\n".join(lines) + "\n"
