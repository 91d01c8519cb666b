"""The shapes that flow through firm-lite: an edit pair in, one record per pair out.

Record shape (names fixed; the CLI, server, calibration harness and benchmark all read it)::

    {"id", "model", "variant", "image_budget",
     "execution": {"score", "expected", "probs", "reasoning", "parse_ok", "raw"},
     "consistency": {...same...}, "cme", "cme_expected", "error"}

``probs`` are the probabilities of the digits 1..5 at the step where the answer writes its score,
renormalised over those five digits; ``expected`` is their probability-weighted mean (1..5).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from firm_lite.cme import CMEWeights, cme
from firm_lite.errors import PairError


def check_text(value: object, what: str) -> str:
    """``value`` if it is text the tokenizer and the JSON writers can take, else a PairError.

    A ``str`` can hold lone surrogates (``"\\ud800"``: from JSON escapes, pickles, ``errors=
    "surrogateescape"``) that no UTF-8 encoder accepts; letting one through fails deep inside a
    tokenizer or a result writer, far from the input that caused it (and, in a shared batch, for
    other people's items too). So every text that comes in is checked here, at the edge.
    """
    if not isinstance(value, str):
        raise PairError(f"{what} must be a string (got {type(value).__name__})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise PairError(f"{what} is not valid Unicode text: lone surrogate U+{ord(bad):04X} at character "
                        f"{exc.start}") from None
    return value


@dataclass
class EditPair:
    """One edit to judge: original image, edited image and the instruction that was asked."""

    id: str
    source: Any  # path, bytes or PIL image of the ORIGINAL
    edited: Any  # path, bytes or PIL image of the EDITED result
    instruction: str
    requirement: str = ""


@dataclass
class ModeScore:
    """The critic's answer for one mode of one pair."""

    score: int | None
    expected: float | None
    probs: list[float] | None
    reasoning: str | None
    parse_ok: bool
    raw: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def build_record(pair_id: str, context: dict[str, Any], execution: ModeScore | None,
                 consistency: ModeScore | None, weights: CMEWeights,
                 error: str | None = None) -> dict[str, Any]:
    """Assemble the fixed record. ``context`` holds model, variant and image_budget."""
    ex = execution.as_record() if execution else None
    co = consistency.as_record() if consistency else None
    return {
        "id": pair_id,
        "model": context.get("model"),
        "variant": context.get("variant"),
        "image_budget": context.get("image_budget"),
        "execution": ex,
        "consistency": co,
        "cme": cme(execution.score if execution else None, consistency.score if consistency else None, weights),
        "cme_expected": cme(execution.expected if execution else None,
                            consistency.expected if consistency else None, weights),
        "error": error,
    }


def record_line(record: dict[str, Any]) -> str:
    """A record as one line of a result file; every writer uses this, so equal records are equal bytes."""
    return json.dumps(record, ensure_ascii=False) + "\n"
