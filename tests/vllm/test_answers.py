"""A vLLM completion becomes the ModeScore the transformers engine would make (no vLLM needed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from firm_lite.vllm_backend.answers import answer_length, mode_score, stop_token_ids


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from firm_lite.sources import tiny_critic_dir

    return AutoTokenizer.from_pretrained(tiny_critic_dir())


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_cut_where_the_answer_closes_not_at_a_brace_in_the_reasoning(tokenizer) -> None:
    answer = '{\n"reasoning" : "a {nested} brace",\n"score" : [3]\n}'
    ids = _ids(tokenizer, answer + " and then more text }")
    n, steps = answer_length(tokenizer, ids, set())
    assert tokenizer.decode(ids[:n]) == answer and steps == n


def test_stop_token_ends_the_answer_and_is_not_part_of_it(tokenizer) -> None:
    stops = set(stop_token_ids(tokenizer))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in stops
    ids = _ids(tokenizer, '{"reasoning" : "unfinished') + [end] + _ids(tokenizer, "junk")
    n, steps = answer_length(tokenizer, ids, stops)
    assert ids[n] == end and steps == n + 1  # the step that produced the stop token was computed


def test_digit_distribution_read_at_the_step_that_wrote_the_score(tokenizer) -> None:
    digits = [tokenizer.convert_tokens_to_ids(d) for d in "12345"]
    ids = _ids(tokenizer, '{"reasoning" : "ok",\n"score" : [4]\n}')
    at = ids.index(digits[3])
    steps = []
    for k in range(len(ids)):
        logprobs = [math.log(0.2)] * 5 if k != at else [math.log(p) for p in (0.05, 0.05, 0.1, 0.7, 0.1)]
        steps.append({d: SimpleNamespace(logprob=lp - 3.0) for d, lp in zip(digits, logprobs, strict=True)})
    score, wasted = mode_score(tokenizer, ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")], steps + [{}],
                               digits, set(stop_token_ids(tokenizer)))
    assert (score.score, score.parse_ok, wasted) == (4, True, 1)  # one step ran past the closed answer
    assert score.probs == pytest.approx([0.05, 0.05, 0.1, 0.7, 0.1])
    assert score.expected == pytest.approx(1 * 0.05 + 2 * 0.05 + 3 * 0.1 + 4 * 0.7 + 5 * 0.1)


def test_an_unparsable_answer_is_a_failure_not_a_zero(tokenizer) -> None:
    digits = [tokenizer.convert_tokens_to_ids(d) for d in "12345"]
    ids = _ids(tokenizer, "I cannot tell.")
    steps = [{d: SimpleNamespace(logprob=-1.0) for d in digits} for _ in ids]
    score, _ = mode_score(tokenizer, ids, steps, digits, set())
    assert (score.score, score.parse_ok, score.probs, score.expected) == (None, False, None, None)
