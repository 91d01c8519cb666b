"""GPU acceptance check: does firm-lite work on this CUDA machine? One run, no network, ~5-8 min on
one GPU; writes <out>/gpu-check.json and gpu-check.md (and the 8B bench's own files beside them).

    python bench/gpu_check.py                      # the check, on cuda:0, 8B shape capped at 24 GiB
    python bench/gpu_check.py --dry-run            # CPU only: everything up to the first CUDA call
    python bench/gpu_check.py --device cpu --shape tiny --out /tmp/gc   # every stage on CPU (slow)

Stages (see firm_lite/bench/acceptance.py): the machine's report and the decisions firm-lite takes
from it; the tiny critic on the GPU for every backend/variant against its CPU fp32 integer scores;
the random-weight 8B-shape bench (bf16 or fp16, nf4, int8, GPTQ w4; vLLM when installed) with peak
memory as torch's reserved peak and the device-level rise, next to `firm-lite plan`'s prediction.
Exit status 0 when every check passed (or the dry run ran), 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from firm_lite.bench.acceptance import AcceptanceOptions, run_acceptance


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu-check"))
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/firm-lite-gpu-check"),
                    help="Exports and random checkpoints (~25 GB for the 8B shape); reused when complete.")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --shape tiny: a CPU smoke run)")
    ap.add_argument("--dry-run", action="store_true", help="Stop before the first CUDA call.")
    ap.add_argument("--shape", choices=["8b", "tiny"], default="8b", help="Shape of the random-weight bench model.")
    ap.add_argument("--tiny-pairs", type=int, default=6)
    ap.add_argument("--bench-pairs", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,2")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="Random weights decode to this cap every time.")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--cap-gib", type=float, default=24.0, help="Memory cap of the 8B bench (0: none).")
    ap.add_argument("--skip-8b", action="store_true")
    ap.add_argument("--timeout-s", type=int, default=420, help="Per bench worker.")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    opts = AcceptanceOptions(out=a.out, scratch=a.scratch, device=a.device, dry_run=a.dry_run, tiny_pairs=a.tiny_pairs,
                             shape=a.shape, bench_pairs=a.bench_pairs,
                             batch_sizes=tuple(int(b) for b in a.batch_sizes.split(",")),
                             max_new_tokens=a.max_new_tokens, image_size=a.image_size, cap_gib=a.cap_gib or None,
                             skip_8b=a.skip_8b, timeout_s=a.timeout_s)
    result = run_acceptance(opts)
    print((a.out / "gpu-check.md").read_text("utf-8"))
    return 0 if result["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
