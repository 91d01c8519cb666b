"""Score files, manifests and images for the report tests, built offline in a temp folder.

Records are made by :func:`firm_lite.records.build_record`, so they have exactly the shape
``firm-lite score`` writes. :func:`comparison_inputs` is the two-model set the build and browser
tests share: model "good" beats model "poor" on most pairs, one instruction is a script
injection, one answer does not parse and one image is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from firm_lite.cme import CMEWeights
from firm_lite.records import ModeScore, build_record

BUDGET = {"min_pixels": 4096, "max_pixels": 25600, "patch_size": 16, "merge_size": 2}
MALICIOUS = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "quotes"'
CATEGORIES = ("remove", "style", "colour")


def mode(score: int | None, reasoning: str = "Requested: x. Seen: x.") -> ModeScore:
    if score is None:
        return ModeScore(None, None, None, None, False, "I cannot tell <b>what</b> changed")
    probs = [0.02] * 5
    probs[score - 1] = 0.92
    return ModeScore(score, sum((k + 1) * p for k, p in enumerate(probs)), probs, reasoning, True,
                     f'{{"reasoning": "{reasoning}", "score": [{score}]}}')


def record(pair_id: str, execution: int | None, consistency: int | None, *, model: str = "tiny",
           variant: str = "fp32", error: str | None = None,
           reasoning: str = "Requested: x. Seen: x.") -> dict[str, Any]:
    context = {"model": model, "variant": variant, "image_budget": BUDGET}
    if error is not None:
        return build_record(pair_id, context, None, None, CMEWeights(), error=error)
    return build_record(pair_id, context, mode(execution, reasoning), mode(consistency), CMEWeights())


def write_jsonl(path: Path, records: list[dict[str, Any]], raw_lines: tuple[bytes, ...] = ()) -> Path:
    with path.open("wb") as fh:
        for rec in records:
            fh.write(json.dumps(rec).encode("utf-8") + b"\n")
        for line in raw_lines:
            fh.write(line)
    return path


def make_images(folder: Path, count: int, size: tuple[int, int] = (120, 90)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        pixels = np.kron(rng.integers(0, 255, (size[1] // 10, size[0] // 10, 3)), np.ones((10, 10, 1)))
        path = folder / f"img{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@dataclass
class ComparisonInputs:
    good: Path
    poor: Path
    manifest: Path
    n: int
    malicious_id: str
    parse_fail_id: str
    missing_id: str
    highest_poor_id: str  # first with "CME highest first" for the poor model
    most_disputed_id: str  # first with "disagreement"


def comparison_inputs(folder: Path, n: int = 60) -> ComparisonInputs:
    """Two score files over ``n`` shared pairs and their manifest (see the module docstring)."""
    images = make_images(folder / "images", 6)
    rows, good, poor = [], [], []
    for i in range(n):
        pid = f"pair-{i:03d}"
        src, edited = images[i % 3], images[3 + i % 3]
        if i == 5:
            edited = folder / "images" / "gone.png"  # missing image
        rows.append({"id": pid, "source": str(src), "edited": str(edited), "category": CATEGORIES[i % 3],
                     "instruction": MALICIOUS if i == 7 else f"edit number {i}"})
        good.append(record(pid, 5 if i % 4 else 4, 5))
        if i == 3:
            poor.append(record(pid, None, 5, model="other"))  # the answer did not parse
        else:
            poor.append(record(pid, 1 if i % 3 == 0 else 5, 4 if i % 2 else 5, model="other",
                               reasoning=f"poor reasoning {i}"))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return ComparisonInputs(write_jsonl(folder / "good.jsonl", good), write_jsonl(folder / "poor.jsonl", poor),
                            manifest, n, "pair-007", "pair-003", "pair-005", "pair-002", "pair-006")
