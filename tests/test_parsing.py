"""Parsing accepts what the reference accepts and reports failure as failure, never as 0."""

from __future__ import annotations

import pytest

from firm_lite.parsing import answer_closed, parse_answer


@pytest.mark.parametrize("raw, score, reasoning", [
    ('{"reasoning": "done", "score": [4]}', 4, "done"),
    ('{\n"reasoning" : "ok",\n"score" : [5]\n}', 5, "ok"),
    ('Sure! Here it is:\n{"reasoning": "x", "score": [2]}\nHope that helps.', 2, "x"),
    ('{"reasoning": "braces {inside} and }{", "score": [3]}', 3, "braces {inside} and }{"),
    ('{"reasoning": "n", "score": "4"}', 4, "n"),
    ('{"reasoning": "n", "score": 1}', 1, "n"),
    ('{"reasoning": "n", "score": [2, 5]}', 2, "n"),
    ('{"reasoning": "nested", "meta": {"a": {"b": 1}}, "score": [3]}', 3, "nested"),
    ('```json\n{"reasoning": "fenced", "score": [5]}\n```', 5, "fenced"),
])
def test_accepts_reference_forms(raw: str, score: int, reasoning: str) -> None:
    p = parse_answer(raw)
    assert p.parse_ok and p.score == score and p.reasoning == reasoning
    assert raw[p.score_offset] == str(score)


@pytest.mark.parametrize("raw", [
    "", "no json here", '{"reasoning": "x", "score": [7]}', '{"reasoning": "x", "score": [0]}',
    '{"reasoning": "x", "score": []}', '{"reasoning": "x", "score": true}', '{"reasoning": "x"}',
    '{"reasoning": "x", "score": "five"}', '{"reasoning": "truncated', "[3]",
])
def test_failures_are_failures_not_zero(raw: str) -> None:
    p = parse_answer(raw)
    assert not p.parse_ok
    assert p.score is None


def test_truncated_json_falls_back_to_regex_like_reference() -> None:
    p = parse_answer('{"reasoning": "the hat is there", "score": [4')
    assert p.parse_ok and p.score == 4 and p.reasoning == "the hat is there"


def test_offset_points_at_the_score_not_a_digit_in_reasoning() -> None:
    raw = '{"reasoning": "score 5 would be too high; \\"score\\": [5]", "score": [3]}'
    p = parse_answer(raw)
    assert p.score == 3 and raw[p.score_offset] == "3" and p.score_offset > raw.index('"score": [3')


def test_answer_closed_respects_strings() -> None:
    assert not answer_closed('{"reasoning": "a } b"')
    assert answer_closed('{"reasoning": "a } b", "score": [2]}')
    assert not answer_closed('prefix only')
    assert answer_closed('text {"a": {"b": 1}} more')
    assert not answer_closed('{"a": "esc \\" }"')
