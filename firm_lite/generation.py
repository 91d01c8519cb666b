"""Greedy generation of the critic's answers and the score-digit read-out.

One call renders a batch of (pair, mode) conversations, generates greedily with a per-row stop
once the answer's JSON object is closed (or EOS, or ``max_new_tokens``), parses each answer, and
reads the five score-digit probabilities from the logits of the very step that wrote the score
(no extra forward pass). Raw logits are used (before any logits processor), so the probabilities
are the model's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from firm_lite.parsing import SCORE_DIGITS, answer_closed, parse_answer
from firm_lite.records import ModeScore


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding settings; part of every cache key and output provenance."""

    max_new_tokens: int = 256
    stop_on_close: bool = True
    greedy: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 8192:
            raise ValueError(f"max_new_tokens must be in 1..8192 (got {self.max_new_tokens})")

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def digit_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of "1".."5"; each must be a single token for the read-out to be exact."""
    ids = []
    for d in SCORE_DIGITS:
        enc = tokenizer.encode(d, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"score digit {d!r} is not a single token ({enc}): read-out impossible")
        ids.append(enc[0])
    return ids


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The ids that end an answer (not part of it): EOS, padding, ``<|im_end|>`` and the
    generation config's EOS list. Every engine stops on these."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def closes_answer(tokenizer: Any, ids: list[int]) -> bool:
    """firm-lite's stop rule, checked after each generated token: the last token holds a ``}``
    and the answer's JSON object is now closed (:func:`~firm_lite.parsing.answer_closed`)."""
    return "}" in tokenizer.decode(ids[-1:]) and answer_closed(tokenizer.decode(ids, skip_special_tokens=True))


def answer_length(tokenizer: Any, ids: list[int], stop_ids: set[int]) -> tuple[int, int]:
    """The stop rule applied after the fact to tokens an engine generated past it (vLLM, a
    remote server): how many of ``ids`` are the answer, and how many decoding steps firm-lite's
    engine would have run for them (one more when a stop token ended the answer: that step was
    computed to produce it). Greedy decoding makes the kept tokens the same either way."""
    for k, t in enumerate(ids):
        if t in stop_ids:
            return k, k + 1
        if closes_answer(tokenizer, ids[:k + 1]):
            return k + 1, k + 1
    return len(ids), len(ids)


def _make_stopper(tokenizer: Any, prompt_len: int) -> Any:
    import torch
    from transformers import StoppingCriteria

    class JsonAnswerClosed(StoppingCriteria):
        """Per-row stop once the generated text's first JSON object is closed."""

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([answer_closed(t) for t in texts], device=input_ids.device)

    return JsonAnswerClosed()


def _token_index_at(tokenizer: Any, ids: list[int], offset: int) -> int | None:
    """Index of the generated token whose decoded text covers character ``offset``."""
    lo, hi = 0, len(ids)
    # smallest k such that len(decode(ids[:k])) > offset; binary search (prefix length grows with k)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid + 1], skip_special_tokens=True)) > offset:
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(ids) else None


def digit_distribution(digit_logits: Any) -> tuple[list[float], float]:
    """Five digit logits -> (probabilities renormalised over the digits, expected score 1..5).

    Softmax over the five logits equals the full-vocabulary softmax renormalised over them."""
    import torch

    p = torch.softmax(digit_logits.double(), dim=-1)
    probs = [float(x) for x in p]
    return probs, float(sum((k + 1) * q for k, q in enumerate(probs)))


def readout(tokenizer: Any, ids: list[int], step_digit_logits: list[Any], offset: int | None,
            digit_ids: list[int], score: int | None) -> tuple[list[float] | None, float | None]:
    """Digit distribution at the step that wrote the score. ``step_digit_logits[k]`` holds the
    five digit logits of generation step k."""
    if offset is None or score is None:
        return None, None
    index = _token_index_at(tokenizer, ids, offset)
    if index is None or index >= len(step_digit_logits) or ids[index] != digit_ids[score - 1]:
        return None, None
    return digit_distribution(step_digit_logits[index])


def generate_answers(model: Any, processor: Any, texts: list[str], images: list[Any],
                     budget: Any, decoding: DecodingConfig) -> list[ModeScore]:
    """Generate and read out answers for a batch of rendered conversations.

    ``images`` is the flat list of PIL images in the order their placeholders appear in ``texts``.
    """
    import torch

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True,
                       **budget.processor_kwargs())
    inputs = inputs.to(model.device)
    prompt_len = inputs["input_ids"].shape[1]
    stoppers = [_make_stopper(tokenizer, prompt_len)] if decoding.stop_on_close else []
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=decoding.max_new_tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None,
            stopping_criteria=stoppers,
            output_logits=True, return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    digit_ids = digit_token_ids(tokenizer)
    special = set(tokenizer.all_special_ids)
    results = []
    for row in range(len(texts)):
        gen = out.sequences[row, prompt_len:].tolist()
        # cut at the first special token (EOS / padding after this row stopped)
        n = next((i for i, t in enumerate(gen) if t in special), len(gen))
        gen = gen[:n]
        raw = tokenizer.decode(gen, skip_special_tokens=True)
        parsed = parse_answer(raw)
        probs, expected = readout(tokenizer, gen, [lg[row, digit_ids] for lg in out.logits],
                                  parsed.score_offset, digit_ids, parsed.score)
        results.append(ModeScore(score=parsed.score, expected=expected, probs=probs,
                                 reasoning=parsed.reasoning, parse_ok=parsed.parse_ok, raw=raw))
    return results
