"""Full-size speed check on a GPU: random-weight Qwen3-VL-8B shape, synthetic 1024x1024 pairs.

Engines (the default): firm-lite's transformers engine next to vLLM in bf16, GPTQ w4 (gptq_marlin)
and bitsandbytes 4-bit quantized at load, in ONE command under a time budget:

    python bench/gpu_8b.py --scratch /tmp/firm-8b --budget-s 540

Each row runs in its own process (killed with its vLLM processes if it runs over what is left of
the budget; rows that no longer fit are listed as skipped) and reports pairs/s, decode tok/s,
peak memory and the share of the card's memory-bandwidth ceiling its weight reads use (the card
from a table of H200/H100/A100/L40S/L4/A10/4090/3090/T4, or --bandwidth-gbs). Writes
bench/results/gpu-8b-engines.{json,md}. Pick rows with --rows (vllm-bf16, vllm-gptq-w4,
vllm-nf4, hf-bf16, hf-nf4, hf-gptq-w4).

Variants of the transformers engine only (the older sweep, per batch size, in the format of
`firm-lite bench`):

    python bench/gpu_8b.py --scratch /tmp/firm-8b --variants bf16,int8,nf4,gptq --batch-sizes 1,4 --cap-gib 24

`gptq` is a random GPTQ w4 checkpoint written next to the random bf16 one. The random model is
built in a child process (its GPU memory is back with the driver before the first row loads)
and reused only when complete. That sweep writes bench/results/gpu-8b-random.{json,md,png}, peak
memory per variant as the larger of torch's reserved peak and the device-level rise.
bench/gpu_check.py runs the sweep with the GPU acceptance check; see docs/benchmark.md and
docs/vllm.md for what has run on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/firm-lite-8b"),
                    help="Random checkpoints (~17 GB bf16 + ~7 GB GPTQ) and pairs; reused when complete.")
    ap.add_argument("--rows", default=None, help="Engine rows (default: vllm-bf16,hf-bf16,vllm-gptq-w4,vllm-nf4).")
    ap.add_argument("--budget-s", type=float, default=540.0, help="Wall-clock budget of the engine comparison.")
    ap.add_argument("--row-timeout-s", type=float, default=300.0)
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="Card memory bandwidth, GB/s (default: table).")
    ap.add_argument("--variants", default=None,
                    help="Run the transformers variant sweep instead (e.g. bf16,int8,nf4,gptq).")
    ap.add_argument("--batch-sizes", default="1,4", help="Sweep: batch sizes; engines: the first is the "
                                                         "transformers engine's batch.")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--cap-gib", type=float, default=None,
                    help="Memory cap (sweep default 24; engines: vLLM's share = min(0.9, cap / card), default none).")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="Default: 256 for the sweep, 64 for engines.")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    if a.variants:
        from firm_lite.bench.synthetic import run_gpu_bench

        cap = 24.0 if a.cap_gib is None else a.cap_gib
        res = run_gpu_bench(a.scratch, a.variants.split(","), batch_sizes, a.pairs, a.image_size, cap or None,
                            a.max_new_tokens or 256, a.out, device=a.device)
    else:
        from firm_lite.bench.acceptance_engines import EngineBenchOptions, run_engine_comparison
        from firm_lite.bench.acceptance_speed import DEFAULT_ROWS

        rows = tuple(a.rows.split(",")) if a.rows else DEFAULT_ROWS
        res = run_engine_comparison(EngineBenchOptions(
            scratch=a.scratch, out=a.out, rows=rows, pairs=a.pairs, image_size=a.image_size,
            max_new_tokens=a.max_new_tokens or 64, batch_size=batch_sizes[0], cap_gib=a.cap_gib or None,
            budget_s=a.budget_s, row_timeout_s=a.row_timeout_s, device=a.device, bandwidth_gbs=a.bandwidth_gbs))
    print(Path(res["paths"]["markdown"]).read_text("utf-8"))


if __name__ == "__main__":
    main()
