"""Reading the critic's answer: score, reasoning, and where the score digit sits.

The reference server takes the text from the first ``{`` to the last ``}`` and json-parses it
(score may be a list, take the first item, or a digit string; 1..5 accepted), else falls back to
regexes for ``"reasoning": "..."`` and ``"score": [n]``. We accept exactly that, but a failure is
a failure (``parse_ok=False``, ``score=None``), never a silent 0.

This module also owns :func:`answer_closed`, the stop rule of generation (the JSON object that
the answer opened is closed), so generation stops where parsing would look.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SCORE_DIGITS: tuple[str, ...] = ("1", "2", "3", "4", "5")

_SCORE_RE = re.compile(r'"score"\s*:\s*\[?\s*"?\s*(\d+)')
_REASONING_RE = re.compile(r'"reasoning"\s*:\s*"((?:[^"\\]|\\.)*)"', re.DOTALL)


@dataclass(frozen=True)
class ParsedAnswer:
    """What the answer says. ``score_offset`` is the character index of the score digit in the
    raw text (used to find the generation step whose distribution is the score's)."""

    score: int | None
    reasoning: str | None
    parse_ok: bool
    score_offset: int | None = None


def _coerce_score(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and 1 <= value <= 5:
        return value
    return None


def _score_offset(raw: str, start: int, end: int, score: int) -> int | None:
    """Offset of the digit of the last ``"score": [n]`` in raw[start:end] that equals score."""
    found = None
    for m in _SCORE_RE.finditer(raw, start, end):
        if m.group(1) == str(score):
            found = m.start(1)
    return found


def parse_answer(raw: str) -> ParsedAnswer:
    """Parse one answer the way the reference does, reporting failure as failure."""
    first, last = raw.find("{"), raw.rfind("}")
    if first != -1 and last > first:
        try:
            obj = json.loads(raw[first:last + 1])
        except (json.JSONDecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            score = _coerce_score(obj.get("score"))
            reasoning = obj.get("reasoning")
            if score is not None:
                return ParsedAnswer(
                    score=score,
                    reasoning=reasoning if isinstance(reasoning, str) else None,
                    parse_ok=True,
                    score_offset=_score_offset(raw, first, last + 1, score),
                )
    # Regex fallback, as the reference: tolerate truncated or slightly malformed JSON.
    matches = list(_SCORE_RE.finditer(raw))
    rmatch = _REASONING_RE.search(raw)
    reasoning = None
    if rmatch:
        try:
            reasoning = json.loads(f'"{rmatch.group(1)}"')
        except json.JSONDecodeError:
            reasoning = rmatch.group(1)
    if matches:
        m = matches[-1]
        value = int(m.group(1))
        if 1 <= value <= 5:
            return ParsedAnswer(score=value, reasoning=reasoning, parse_ok=True, score_offset=m.start(1))
    return ParsedAnswer(score=None, reasoning=reasoning, parse_ok=False, score_offset=None)


def answer_closed(text: str) -> bool:
    """True once the first JSON object in ``text`` is closed (strings and escapes respected)."""
    start = text.find("{")
    if start == -1:
        return False
    depth = 0
    in_string = False
    escaped = False
    for ch in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return True
    return False
