"""One vLLM completion -> one :class:`~firm_lite.records.ModeScore`, as the transformers engine
would have made it.

vLLM generates greedily up to the 256-token cap or a stop token; firm-lite's stop rule (the
answer's JSON object is closed, :func:`firm_lite.parsing.answer_closed`) is applied here to the
token ids, exactly where the transformers engine applies it while decoding: after the first token
whose text holds a ``}`` that closes the answer. Greedy decoding makes the tokens before that
point the same whether or not generation went on, so cutting afterwards gives the same answer.
The text is decoded from the kept ids with firm-lite's tokenizer, parsed by
:func:`~firm_lite.parsing.parse_answer` (a failure stays a failure), and the score's digit
distribution is read at the step that wrote the digit (:func:`~firm_lite.generation.readout`)
from the log-probabilities vLLM returns for the five digit ids at every step
(``logprob_token_ids``); softmax over five log-probabilities equals softmax over their logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firm_lite.generation import answer_length, readout, stop_token_ids
from firm_lite.parsing import parse_answer
from firm_lite.records import ModeScore

__all__ = ["answer_length", "mode_score", "step_digit_logprobs", "stop_token_ids"]


def step_digit_logprobs(step_logprobs: Sequence[dict[int, Any]], digit_ids: list[int]) -> list[Any]:
    """Per generation step, the five digit log-probabilities as a tensor (for ``readout``)."""
    import torch

    rows = []
    for k, step in enumerate(step_logprobs):
        missing = [d for d in digit_ids if d not in step]
        if missing:
            raise RuntimeError(f"vLLM returned no log-probability for digit id(s) {missing} at step {k}: "
                               "logprob_token_ids was not honoured")
        rows.append(torch.tensor([step[d].logprob for d in digit_ids], dtype=torch.float64))
    return rows


def mode_score(tokenizer: Any, token_ids: Sequence[int], step_logprobs: Sequence[dict[int, Any]] | None,
               digit_ids: list[int], stop_ids: set[int]) -> tuple[ModeScore, int]:
    """The record of one completion, and how many decoding steps vLLM ran past the point where
    firm-lite's rule ends the answer (work the transformers engine does not do)."""
    ids = list(token_ids)
    n, steps = answer_length(tokenizer, ids, stop_ids)
    kept = ids[:n]
    raw = tokenizer.decode(kept, skip_special_tokens=True)
    parsed = parse_answer(raw)
    if step_logprobs is None or len(step_logprobs) < n:
        raise RuntimeError("vLLM returned no log-probabilities for some generated steps: logprob_token_ids "
                           "was not honoured")
    digits = step_digit_logprobs(step_logprobs[:n], digit_ids)
    probs, expected = readout(tokenizer, kept, digits, parsed.score_offset, digit_ids, parsed.score)
    return ModeScore(score=parsed.score, expected=expected, probs=probs, reasoning=parsed.reasoning,
                     parse_ok=parsed.parse_ok, raw=raw), len(ids) - steps
