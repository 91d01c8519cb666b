"""A small manifest for the cluster tests: held-out edit-set pairs (the tiny critic is fitted to
them) mixed with every kind of bad row a single run turns into an error record."""

from __future__ import annotations

import json
from pathlib import Path

EDITSET = Path(__file__).resolve().parents[1] / "calibration" / "editset-heldout.jsonl"


def edit_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in EDITSET.read_text("utf-8").splitlines()
            if line.strip() and not line.startswith("#")][:n]
    for row in rows:
        row["source"] = str(EDITSET.parent / row["source"])
        row["edited"] = str(EDITSET.parent / row["edited"])
    return rows


def write_manifest(folder: Path, pairs: int = 6) -> Path:
    """``pairs`` good rows plus: a missing image, a line that is not JSON, a corrupt image, an
    integer id, an empty instruction and a duplicate id (after its original)."""
    rows = edit_rows(pairs)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    lines = ["# firm_lite.editset {\"a header line\": true}"] + [json.dumps(r) for r in rows]
    lines.insert(3, json.dumps({"id": "missing-image", "source": "nope.jpg", "edited": "nope2.jpg",
                                "instruction": "add a hat"}))
    lines.insert(5, "{not json")
    lines.insert(7, json.dumps({"id": "corrupt", "source": rows[0]["source"], "edited": str(broken),
                                "instruction": "make it brighter"}))
    lines.append(json.dumps({"id": 7, "source": rows[2]["source"], "edited": rows[2]["edited"],
                             "instruction": rows[2]["instruction"]}))
    lines.append(json.dumps({"id": "empty-instruction", "source": rows[0]["source"], "edited": rows[0]["edited"],
                             "instruction": " "}))
    lines.append(json.dumps({"id": rows[1]["id"], "source": "x.jpg", "edited": "y.jpg", "instruction": "again"}))
    manifest = folder / "pairs.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
