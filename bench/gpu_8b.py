"""Full-size speed check on a GPU: random-weight Qwen3-VL-8B shape, synthetic 1024x1024 pairs.

    python bench/gpu_8b.py --scratch /tmp/firm-8b --variants bf16,int8,nf4,gptq --batch-sizes 1,4 --cap-gib 24

`gptq` is a random GPTQ w4 checkpoint written next to the random bf16 one. The random model is
built in a child process (its GPU memory is back with the driver before the first variant loads)
and reused only when complete. Writes bench/results/gpu-8b-random.{json,md,png} in the format of
`firm-lite bench`, peak memory per variant as the larger of torch's reserved peak and the
device-level rise. bench/gpu_check.py runs this with the GPU acceptance check; see docs/benchmark.md
for what has run on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from firm_lite.bench.synthetic import run_gpu_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/firm-lite-8b"))
    ap.add_argument("--variants", default="bf16,int8,nf4,gptq")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--cap-gib", type=float, default=24.0, help="0 = no cap")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    res = run_gpu_bench(a.scratch, a.variants.split(","), [int(b) for b in a.batch_sizes.split(",")], a.pairs,
                        a.image_size, a.cap_gib or None, a.max_new_tokens, a.out, device=a.device)
    print(open(res["paths"]["markdown"], encoding="utf-8").read())


if __name__ == "__main__":
    main()
