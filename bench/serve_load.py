"""Load test of `firm-lite serve`: requests/s, items/s and p95 latency, micro-batching off vs on.

The work is done by :func:`firm_lite.server.loadtest` (real uvicorn on a loopback port, clients
that talk like RL trainers: requests + pickled JPEG batches). This script picks the load, prints a
table and writes the JSON record (with provenance) to bench/results/serve_load.json.

    python bench/serve_load.py                      # tiny critic on CPU, bounded (~1 minute)
    python bench/serve_load.py --model VisionXLab/FIRM-Edit-8B --device cuda --clients 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serve_load.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--items-per-request", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    from firm_lite.server import loadtest

    result = loadtest(model=args.model, variant=args.variant, device=args.device, clients=args.clients,
                      requests_per_client=args.requests_per_client, items_per_request=args.items_per_request,
                      max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    load = result["load"]
    print(f"{load['clients']} clients x {load['requests_per_client']} requests x {load['items_per_request']} items, "
          f"model {args.model} on {args.device}")
    header = f"{'run':<14} {'req/s':>8} {'items/s':>8} {'p50 s':>8} {'p95 s':>8} {'mean batch':>11} {'ok':>4}"
    print(header)
    print("-" * len(header))
    for name, run in result["runs"].items():
        mean_batch = run["server_batches"]["mean_size"] or 0.0
        print(f"{name:<14} {run['requests_per_s']:>8.2f} {run['items_per_s']:>8.2f} {run['latency_p50_s']:>8.3f} "
              f"{run['latency_p95_s']:>8.3f} {mean_batch:>11.2f} {run['requests_ok']:>4}")
    print(f"items/s speed-up with batching: x{result['speedup_items_per_s']}; "
          f"same scores on and off: {result['same_scores_on_and_off']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
