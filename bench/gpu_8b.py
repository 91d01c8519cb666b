"""Full-size speed check on a GPU: random-weight Qwen3-VL-8B shape, synthetic 1024x1024 pairs.

    python bench/gpu_8b.py --scratch /tmp/firm-8b --variants bf16,int8,nf4 --batch-sizes 1,4 --cap-gib 24

Writes bench/results/gpu-8b-random.{json,md,png} in the same format as `firm-lite bench`.
Not yet run on hardware from this repository's CI (no GPU there); see README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from firm_lite.bench.synthetic import run_gpu_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/firm-lite-8b"))
    ap.add_argument("--variants", default="bf16,int8,nf4")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--cap-gib", type=float, default=24.0, help="0 = no cap")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    res = run_gpu_bench(a.scratch, a.variants.split(","), [int(b) for b in a.batch_sizes.split(",")], a.pairs,
                        a.image_size, a.cap_gib or None, a.max_new_tokens, a.out)
    print(open(res["paths"]["markdown"], encoding="utf-8").read())


if __name__ == "__main__":
    main()
