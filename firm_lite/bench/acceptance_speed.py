"""The 8B-shape engine comparison's pure parts: card bandwidth, bytes read per decode step, the
rows and the report of ``bench/gpu_8b.py`` (:mod:`firm_lite.bench.acceptance_8b` runs the rows).

Decode on one GPU is bound by memory bandwidth: every decode step reads every weight of the
language model once (the vision tower ran at prefill; an embedding lookup reads a few rows), for
all the sequences decoding together. So a row's share of the card's bandwidth ceiling is

    bytes of decoder + lm_head weights x decode steps per second / card bandwidth

with decode steps per second = decode tokens per second / sequences decoding together (both modes
of every pair in the batch). The KV cache is read at every step too and is not counted: the
percentage is a lower bound of the memory traffic, and a row near 100% is at the ceiling.
Everything here is plain arithmetic on results and a config: no GPU, tested on CPU.
"""

from __future__ import annotations

import math
from typing import Any

# Vendor peak memory bandwidth, GB/s (1e9 bytes/s), matched against torch's device name in this
# order (first match wins: specific names before the family name).
CARD_BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5 80GB HBM3
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),  # 40GB, SXM4 or PCIe
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("T4", 320.0),
)

# What each benched row is: engine, the vLLM quantization it must end up with (None: dense), the
# checkpoint it loads ("bf16": the random checkpoint; "gptq": its random GPTQ w4 copy), the
# recipe that prices its decoder (None: dense at the run dtype), and its row in the vLLM plan.
SPEED_ROWS: dict[str, dict[str, Any]] = {
    "vllm-bf16": {"engine": "vllm", "quantization": None, "checkpoint": "bf16", "recipe": None, "plan": "bf16"},
    "vllm-gptq-w4": {"engine": "vllm", "quantization": "gptq_marlin", "checkpoint": "gptq", "recipe": "gptq-w4-g128",
                     "plan": "gptq-w4-g128"},
    "vllm-nf4": {"engine": "vllm", "quantization": "bitsandbytes", "checkpoint": "bf16", "recipe": "bnb-nf4",
                 "plan": "nf4"},
    "hf-bf16": {"engine": "hf", "variant": "bf16", "checkpoint": "bf16", "recipe": None},
    "hf-nf4": {"engine": "hf", "variant": "nf4", "checkpoint": "bf16", "recipe": "bnb-nf4"},
    "hf-gptq-w4": {"engine": "hf", "variant": "gptq", "checkpoint": "gptq", "recipe": "gptq-w4-g128"},
}
DEFAULT_ROWS = ("vllm-bf16", "hf-bf16", "vllm-gptq-w4", "vllm-nf4")


def card_bandwidth_gbs(device_name: str | None, override: float | None = None) -> tuple[float | None, str]:
    """(GB/s, where it came from): ``override`` (``--bandwidth-gbs``) wins, then the table."""
    if override:
        return float(override), "--bandwidth-gbs"
    for key, gbs in CARD_BANDWIDTH_GBS:
        if device_name and key.lower() in device_name.lower():
            return gbs, f"table ({key})"
    return None, f"unknown card {device_name!r}: give --bandwidth-gbs"


def decode_weight_bytes(inv: Any, recipe: Any | None, dense_bytes: int = 2) -> int:
    """Bytes of weights one decode step reads: the model's weight memory under ``recipe`` less
    the vision tower and the token embedding (kept dense by every recipe)."""
    from firm_lite.plan import module_group, weight_bytes

    skipped = sum(lin.in_features * lin.out_features + lin.bias * lin.out_features
                  for lin in inv.linears.values() if module_group(lin.name) in ("vision", "embeddings"))
    skipped += sum(n for name, n in inv.others.items() if module_group(name) in ("vision", "embeddings"))
    return weight_bytes(inv, recipe, dense_bytes) - skipped * dense_bytes


def bandwidth_percent(bytes_per_step: int, steps_per_s: float | None, gbs: float | None) -> float | None:
    """Share of the card's bandwidth ceiling the weight reads of decode use (see module docstring)."""
    if not steps_per_s or not gbs:
        return None
    return round(100.0 * bytes_per_step * steps_per_s / (gbs * 1e9), 1)


def speed_row(name: str, measured: dict[str, Any], bytes_per_step: int, gbs: float | None) -> dict[str, Any]:
    """One report row from a worker's measurement. ``measured`` holds ``pairs_per_s``,
    ``decode_tokens_per_s``, ``sequences`` (decoding together in one step), ``peak_gib``,
    ``load_s`` and optionally ``quantization`` (what vLLM ran), ``kv_blocks``, ``error``."""
    row: dict[str, Any] = {"row": name, "engine": SPEED_ROWS.get(name, {}).get("engine"),
                           "weights_read_per_step_gib": round(bytes_per_step / 2**30, 2), "error": None}
    if measured.get("error"):
        return {**row, "error": measured["error"]}
    tok_s, seqs = measured.get("decode_tokens_per_s"), measured.get("sequences")
    steps = tok_s / seqs if tok_s and seqs else None
    row.update({k: measured.get(k) for k in ("load_s", "pairs_per_s", "decode_tokens_per_s", "sequences",
                                              "peak_gib", "quantization", "kv_blocks", "kv_blocks_planned",
                                              "note")})
    row["decode_steps_per_s"] = round(steps, 2) if steps else None
    row["bandwidth_pct"] = bandwidth_percent(bytes_per_step, steps, gbs)
    wanted = SPEED_ROWS.get(name, {}).get("quantization")
    if row["engine"] == "vllm" and wanted:
        if measured.get("quantization") is None:
            row["note"] = (row["note"] + "; " if row["note"] else "") + "vLLM's quantization method not readable"
        elif measured["quantization"] != wanted:
            row["error"] = f"asked for {wanted}, vLLM ran {measured['quantization']}"
    return row


def waves(sequences: int, concurrent: int | None) -> int:
    """How many rounds the sequences decode in when at most ``concurrent`` fit at once."""
    return math.ceil(sequences / concurrent) if concurrent else 1


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "/")


def speed_markdown(report: dict[str, Any]) -> str:
    """The report people read, made from the saved JSON."""
    card = report.get("card") or {}
    lines = [f"# firm-lite 8B-shape engines on {card.get('name') or 'an unknown card'}", "",
             f"Random weights of the Qwen3-VL-8B shape, {report.get('pairs')} synthetic "
             f"{report.get('image_size')}x{report.get('image_size')} pairs, {report.get('max_new_tokens')} new "
             f"tokens per answer (random weights never close the answer: every sequence decodes to the cap). "
             f"Bandwidth ceiling {_cell(card.get('bandwidth_gbs'))} GB/s ({card.get('bandwidth_source')}). "
             f"Started {report.get('started')}, {report.get('seconds')} s of a {report.get('budget_s')} s budget.", "",
             "| row | pairs/s | decode tok/s | seqs/step | steps/s | weights read/step GiB | BW % (weights) "
             "| peak GiB | load s | vLLM quantization | KV blocks (vLLM / plan) | note / error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.get("rows", []):
        blocks = (f"{_cell(r.get('kv_blocks'))} / {_cell(r.get('kv_blocks_planned'))}"
                  if r.get("engine") == "vllm" else "-")
        lines.append(f"| {r['row']} | {_cell(r.get('pairs_per_s'))} | {_cell(r.get('decode_tokens_per_s'))} | "
                     f"{_cell(r.get('sequences'))} | {_cell(r.get('decode_steps_per_s'))} | "
                     f"{_cell(r.get('weights_read_per_step_gib'))} | {_cell(r.get('bandwidth_pct'))} | "
                     f"{_cell(r.get('peak_gib'))} | {_cell(r.get('load_s'))} | {_cell(r.get('quantization'))} | "
                     f"{blocks} | {_cell(r.get('error') or r.get('note'))} |")
    for name, why in (report.get("skipped") or {}).items():
        lines.append(f"- {name} skipped: {why}")
    lines += ["", "BW % counts the weights each decode step reads (decoder + lm_head), not the KV cache: a lower "
                  "bound of the memory traffic. vLLM's decode time is its full run less a prefill-only run of the "
                  "same prompts (prefix cache reset before each); the transformers engine times its decode phase."]
    return "\n".join(lines) + "\n"
