"""Views of a saved benchmark JSON: the markdown table and the accuracy-vs-speed Pareto plot.

Both are made from the file on disk (never from in-memory state), so a result can be re-plotted
or compared later with ``firm-lite bench --report FILE.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(results: dict[str, Any]) -> str:
    """Markdown table: one row per variant x protocol x batch size, ratios to the baseline."""
    lines = [f"Model `{results['model']}`, manifest `{results['manifest']}` ({results['pairs']} pairs), "
             f"device {results['device']}, {results.get('threads')} threads, max_new_tokens "
             f"{results['max_new_tokens']}. Peak memory per variant (its own process, load and every run): on a "
             "GPU the larger of torch's reserved peak and the device-level rise (counts the CUDA context and "
             "memory other runtimes allocate); on a CPU the peak RSS.", ""]
    base = results.get("baseline")
    if base:
        lines.append(f"Baseline (reference-style: one pair at a time, one `generate` per mode, images encoded per "
                     f"call, no early stop), variant `{base['variant']}`: **{base['pairs_per_s']:.3f} pairs/s**, "
                     f"p50 {base['latency_p50_s'] * 1000:.0f} ms, p95 {base['latency_p95_s'] * 1000:.0f} ms per pair.")
        lines.append("")
    lines += ["| variant | protocol | batch | pairs/s | x baseline | decode tok/s "
              "| batch p50 ms (vision/prefill/decode) | batch p95 ms | same int scores as baseline "
              "| load s | peak MiB | flip rate | KL p95 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in results["variants"]:
        if "error" in v:
            lines.append(f"| {v['variant']} | error: {v['error']} |" + " |" * 11)
            continue
        for r in v["runs"]:
            drift = r.get("drift", v.get("drift")) or {}
            lat = r.get("batch_latency_s", {})
            split = "/".join(_fmt(lat.get(p, {}).get("p50", 0) * 1000, ".0f") for p in ("vision", "prefill", "decode"))
            total = lat.get("total", {})
            cmp_ = r.get("vs_baseline") or r.get("agreement_with_full") or {}
            same = (f"{cmp_['pairs'] - cmp_['mismatches']}/{cmp_['pairs']}" if cmp_ else "-")
            lines.append(
                f"| {_short(v)} | {r['protocol']} | {r['batch_size']} | {r['pairs_per_s']:.3f} | "
                f"{_fmt(r.get('ratio_pairs_per_s'), '.1f')} | {_fmt(r.get('decode_tokens_per_s'), '.0f')} | "
                f"{_fmt(total.get('p50', 0) * 1000, '.0f')} ({split}) | {_fmt(total.get('p95', 0) * 1000, '.0f')} | "
                f"{same} | {v['load_s']:.1f} | {v['peak_memory_bytes'] / 2**20:.0f} | "
                f"{_fmt(drift.get('flip_rate'), '.3f')} | {_fmt(drift.get('kl_p95'), '.4f')} |")
    return "\n".join(lines) + "\n"


def _short(v: dict[str, Any]) -> str:
    return Path(str(v.get("label", v["variant"]))).name


def pareto_plot(results: dict[str, Any], path: Path) -> None:
    """Drift (flip rate from calibration; 0 for the reference) vs pairs/s. One colour per
    variant, marker per protocol (o full, ^ fast), marker area ~ peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    ok = [v for v in results["variants"] if "error" not in v]
    scale = 400 / max([v["peak_memory_bytes"] for v in ok] or [1])
    colours = plt.get_cmap("tab10")
    for i, v in enumerate(ok):
        for r in v["runs"]:
            drift = (r.get("drift", v.get("drift")) or {}).get("flip_rate") or 0.0
            ax.scatter(r["pairs_per_s"], drift, s=max(20, v["peak_memory_bytes"] * scale), alpha=0.6,
                       color=colours(i % 10), marker="o" if r["protocol"] == "full" else "^",
                       label=_short(v) if r is v["runs"][0] else None)
            ax.annotate(f"b{r['batch_size']}", (r["pairs_per_s"], drift), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    if results.get("baseline"):
        ax.axvline(results["baseline"]["pairs_per_s"], color="grey", ls="--", lw=1, label="baseline")
    ax.set_xscale("log")
    ax.set_xlabel("pairs/s (log); o = full protocol, ^ = fast protocol, bN = batch size")
    ax.set_ylabel("flip rate vs reference (calibration)")
    ax.set_title("firm-lite: drift vs speed (marker area ~ peak memory)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_views(json_path: str | Path) -> tuple[Path, Path | None]:
    """Write ``.md`` and ``.png`` next to a saved results JSON (no ``.png`` without matplotlib,
    e.g. in the vLLM environment: said once, ``--report FILE.json`` draws it elsewhere)."""
    from importlib.util import find_spec

    json_path = Path(json_path)
    results = json.loads(json_path.read_text("utf-8"))
    md, png = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md.write_text(table(results), "utf-8")
    if find_spec("matplotlib") is None:
        log.warning("no plot: matplotlib is not installed (pip install \"firm-lite[calib]\"); "
                    "`firm-lite bench --report %s` draws it where it is", json_path)
        return md, None
    pareto_plot(results, png)
    return md, png
