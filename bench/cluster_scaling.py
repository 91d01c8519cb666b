"""Scaling of `firm-lite score --ray`: pairs/s and efficiency for 1..N Ray Data workers, one run.

The work is done by :func:`firm_lite.cluster.scaling.scaling_run` (a single-process baseline, then
the same manifest with each worker count, records compared with the baseline's). This script picks
the run, prints a table and writes the JSON (source of truth) and a markdown table to
bench/results/cluster_scaling.{json,md}.

    python bench/cluster_scaling.py                         # tiny critic, held-out set, 1..2 CPU workers
    python bench/cluster_scaling.py --workers 1,2,4,8 --gpus-per-worker 1 --model VisionXLab/FIRM-Edit-8B \
        --device auto --ray auto                            # a GPU node or cluster
    python bench/cluster_scaling.py --report bench/results/cluster_scaling.json   # table from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "cluster_scaling.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--manifest", default=str(ROOT / "calibration" / "editset-heldout.jsonl"))
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; 1 first for efficiency")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=None)
    parser.add_argument("--ray", default="auto")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", type=Path, help="only print/re-make the table of a saved JSON")
    args = parser.parse_args(argv)

    from firm_lite.cluster.scaling import format_table, scaling_run
    from firm_lite.settings import CriticSettings

    if args.report:
        result = json.loads(args.report.read_text("utf-8"))
    else:
        settings = CriticSettings(model=args.model, variant=args.variant, device=args.device)
        result = scaling_run(settings, args.manifest, workers=[int(w) for w in args.workers.split(",")],
                             batch_size=args.batch_size, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, ray=args.ray)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = format_table(result)
    print(table)
    if not args.report:
        args.out.with_suffix(".md").write_text(table, encoding="utf-8")
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
