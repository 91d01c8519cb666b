"""GPTQ calibration samples: the critic's own conversations, rendered exactly as scoring does.

GPTQ fits each layer to the activations it sees during calibration, so the samples must be what
the critic will see when it scores: for every edit pair in ``--calib``, both modes' prompts with
the ORIGINAL and EDITED images, through :func:`firm_lite.prompts.build_messages`, the model's chat
template with the generation prompt, and the processor at the same image budget
(:class:`~firm_lite.images.ImageBudget`) as :mod:`firm_lite.generation`. Image + text, never
text-only: the decoder's image-token activations are most of every sequence.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.images import ImageBudget, load_image
from firm_lite.prompts import MODES, render_text
from firm_lite.records import EditPair

log = logging.getLogger(__name__)

DEMO = "demo"


@dataclass
class CalibrationSet:
    """The pairs taken from a manifest, and what the provenance manifest records about them."""

    pairs: list[EditPair]
    manifest: str
    sha256: str
    rows: int
    skipped: list[str] = field(default_factory=list)

    def as_record(self, samples: int, tokens: int, image_tokens: int) -> dict[str, Any]:
        return {"manifest": self.manifest, "sha256": self.sha256, "rows": self.rows, "pairs": len(self.pairs),
                "skipped": len(self.skipped), "samples": samples, "modes": list(MODES), "tokens": tokens,
                "image_tokens": image_tokens}


def read_calibration_set(calib: str | Path | None, max_pairs: int | None = None) -> CalibrationSet:
    """``--calib MANIFEST`` (JSONL of edit pairs) or ``demo`` (the bundled pair: smoke tests only)."""
    from firm_lite.manifest import read_manifest

    if calib is None:
        raise UserError("--calib MANIFEST is required: GPTQ calibrates on edit pairs (JSONL with id, source, "
                        "edited, instruction); `--calib demo` uses the bundled pair, for smoke tests only")
    if str(calib) == DEMO:
        from firm_lite.data import demo_pair

        pair = demo_pair()
        digest = hashlib.sha256(Path(pair.source).read_bytes() + Path(pair.edited).read_bytes()
                                + pair.instruction.encode()).hexdigest()
        return CalibrationSet([pair], DEMO, digest, 1)
    path = Path(calib).expanduser()
    rows = list(read_manifest(path))
    pairs = [r.pair for r in rows if r.pair is not None]
    skipped = [r.error or r.id for r in rows if r.pair is None]
    for why in skipped[:5]:
        log.warning("calibration row skipped: %s", why)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not pairs:
        raise UserError(f"--calib {path}: no usable edit pairs (rows: {len(rows)}, skipped: {len(skipped)})")
    return CalibrationSet(pairs, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), len(rows), skipped)


def render_samples(processor: Any, calib: CalibrationSet, budget: ImageBudget,
                   progress: bool = True) -> tuple[list[Any], dict[str, int]]:
    """One processor batch (input_ids, attention_mask, pixel_values, image_grid_thw) per pair and
    mode. Pairs whose images cannot be decoded are skipped with a warning."""
    from firm_lite.errors import PairError

    samples: list[Any] = []
    tokens = image_tokens = 0
    image_pad = getattr(processor, "image_token", "<|image_pad|>")
    pad_id = processor.tokenizer.convert_tokens_to_ids(image_pad)
    iterator: Any = calib.pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(calib.pairs, desc="calibration samples", unit="pair", file=sys.stderr)
    for pair in iterator:
        try:
            images = [load_image(pair.source), load_image(pair.edited)]
        except PairError as exc:
            log.warning("calibration pair skipped: %s", exc)
            continue
        for mode in MODES:
            text = render_text(processor, mode, pair.instruction, pair.requirement)
            batch = processor(text=[text], images=images, return_tensors="pt", **budget.processor_kwargs())
            ids = batch["input_ids"]
            tokens += int(ids.numel())
            image_tokens += int((ids == pad_id).sum())
            samples.append(batch)
    if not samples:
        raise UserError(f"--calib {calib.manifest}: none of the pairs' images could be read")
    return samples, {"samples": len(samples), "tokens": tokens, "image_tokens": image_tokens}
