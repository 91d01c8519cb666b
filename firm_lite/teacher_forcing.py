"""Teacher forcing: read a model's score distribution at the score digit of a *given* answer.

Drift between a reference critic and a quantized variant has two causes that free generation
mixes up: numbers that moved (the variant puts different mass on "1".."5") and reasoning that
wandered off (the variant wrote other words, so its score step sees another context). Feeding
prompt + the reference's answer tokens to a model in ONE forward pass and reading the five-digit
distribution at the position that predicts the reference's score digit isolates the first
cause: both models see the same tokens up to that position.

The read-out is :func:`firm_lite.generation.digit_distribution` (raw logits, renormalised over
the five digits), the same as generation's, so a forced distribution and a generated one mean
the same thing. Only the logits of
that one position are projected onto the vocabulary (``logits_to_keep``), which keeps the 8B's
151k-wide head cheap. One item per forward: no padding, so positions (mrope) are exactly the
ones generation saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from firm_lite.generation import _token_index_at, digit_distribution, digit_token_ids
from firm_lite.parsing import parse_answer

# processor outputs with one entry per token, which must cover the appended answer too
_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class ForcedReadout:
    """The model's distribution over "1".."5" at the score digit of a given answer."""

    score: int  # the digit the given answer wrote
    probs: list[float]  # P("1".."5") at that position, renormalised over the five digits
    expected: float  # sum k * P(k)
    token_index: int  # index of the digit among the answer's tokens

    def as_record(self) -> dict[str, Any]:
        return {"score": self.score, "probs": self.probs, "expected": self.expected,
                "token_index": self.token_index}


def forced_target(tokenizer: Any, answer: str) -> tuple[list[int], int, int] | None:
    """``(answer token ids, index of the score digit among them, score)``, or ``None`` when the
    answer has no parseable score or its digit is not a token of its own after re-tokenisation
    (the read-out would not be at a digit). Every backend's teacher forcing starts here."""
    parsed = parse_answer(answer)
    if parsed.score is None or parsed.score_offset is None:
        return None
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    index = _token_index_at(tokenizer, answer_ids, parsed.score_offset)
    if index is None or answer_ids[index] != digit_token_ids(tokenizer)[parsed.score - 1]:
        return None
    return answer_ids, index, parsed.score


def forced_readout(model: Any, processor: Any, text: str, images: list[Any], answer: str,
                   budget: Any) -> ForcedReadout | None:
    """Teacher-force ``answer`` after the rendered prompt ``text`` (with its ``images``).

    Returns ``None`` when the answer has no parseable score, or when its score digit is not a
    token of its own after re-tokenisation (the read-out would not be at a digit).
    """
    import torch

    target = forced_target(processor.tokenizer, answer)
    if target is None:
        return None
    answer_ids, index, score = target
    inputs = processor(text=[text], images=images, return_tensors="pt", **budget.processor_kwargs())
    prompt_len = int(inputs["input_ids"].shape[1])
    tail = torch.tensor([answer_ids], dtype=inputs["input_ids"].dtype)
    forward: dict[str, Any] = {}
    for name, value in inputs.items():
        # per-token tensors grow with the answer: ids get the answer, the mask ones, and token
        # type ids (text = 0) zeros; image tensors pass through unchanged
        if name in _PER_TOKEN:
            fill = {"input_ids": tail, "attention_mask": torch.ones_like(tail)}.get(name, torch.zeros_like(tail))
            value = torch.cat([value, fill.to(value.dtype)], dim=1)
        forward[name] = value.to(model.device) if isinstance(value, torch.Tensor) else value
    # logits at position p predict token p + 1: the digit at prompt_len + index is predicted at - 1
    keep = torch.tensor([prompt_len + index - 1], device=model.device)
    with torch.inference_mode():
        logits = model(**forward, logits_to_keep=keep, use_cache=False).logits[0, 0]
    probs, expected = digit_distribution(logits[digit_token_ids(processor.tokenizer)])
    return ForcedReadout(score=score, probs=probs, expected=expected, token_index=index)


def critic_forced_readout(critic: Any, mode: str, pair: Any, images: list[Any], answer: str
                          ) -> ForcedReadout | None:
    """:func:`forced_readout` with a loaded :class:`~firm_lite.critic.Critic`'s prompt and budget.

    ``images`` are the pair's decoded (original, edited) images.
    """
    if critic.backend is not None:  # vLLM reads it with one generation step after the answer's prefix
        return critic.backend.forced_readout(mode, pair, images, answer)
    text = critic.render(mode, pair.instruction, pair.requirement)
    with critic._lock:
        return forced_readout(critic.model, critic.processor, text, images, answer, critic.budget)
