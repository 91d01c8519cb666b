"""The prompts are the model's trained interface: they must reach it byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm_lite.prompts import MODES, build_messages, prompt_hash, render_prompt, templates

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "firm_edit_prompts.json"
# sha256 of the two templates as published (json.dumps(sort_keys=True) of {mode: template}).
PINNED_PROMPT_SHA256 = "08c461f48963744cdf2a18a8501f737ed8a3ed583bf5fd058231d8b33dc59732"


def test_templates_match_pinned_hash() -> None:
    assert prompt_hash() == PINNED_PROMPT_SHA256


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/reference not beside the checkout")
def test_shipped_templates_equal_reference_file() -> None:
    ref = json.loads(REFERENCE.read_text("utf-8"))
    assert templates() == {"execution": ref["score_execution"], "consistency": ref["score_consistency"]}


@pytest.mark.parametrize("mode", MODES)
def test_rendered_prompt_is_byte_identical_to_str_format(mode: str) -> None:
    instruction = 'Replace the {dog} with a "cat" \\ and keep {{braces}}'
    text = render_prompt(mode, instruction)
    key = {"execution": "score_execution", "consistency": "score_consistency"}[mode]
    raw = json.loads((Path(__file__).resolve().parents[1] / "firm_lite/data/firm_edit_prompts.json").read_text())[key]
    assert text == raw.format(prompt=instruction)
    assert text.encode("utf-8") == raw.replace("{{", "{").replace("}}", "}").replace("{prompt}", instruction).encode()
    assert text.startswith("\nYou are a highly skilled image evaluator.")
    assert text.endswith('{\n"reasoning" : "<YOUR_REASONING>",\n"score" : [1/2/3/4/5]\n}\n')
    assert f"Instruction: {instruction}\n" in text


def test_message_order_original_then_edited_then_text() -> None:
    msgs = build_messages("execution", "add a hat", "SRC", "EDT")
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    content = msgs[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert content[0]["image"] == "SRC" and content[1]["image"] == "EDT"
    assert content[2]["text"] == render_prompt("execution", "add a hat")


def test_unknown_mode_refused() -> None:
    with pytest.raises(ValueError):
        render_prompt("aesthetics", "x")
