"""What the tiny critic is trained and checked on: one example (a pair, a mode, the answer the
critic should give), the chat turn scoring sends for it, and a greedy answer to it. Shared by the
builder (:mod:`firm_lite.dev.tiny_critic`) and the edit-set training stream
(:mod:`firm_lite.dev.editset.training`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from firm_lite.prompts import build_messages

ANSWER_FORMAT = '{{\n"reasoning" : "{reasoning}",\n"score" : [{score}]\n}}'


@dataclass(frozen=True)
class EditExample:
    """One training/eval item: what scoring sends, plus the answer the critic should give."""

    mode: str
    instruction: str
    source: Image.Image
    edited: Image.Image
    score: int
    answer: str
    prompt: str | None = None  # a training-only rendering of the mode's text (None: the real one)


def example_messages(example: EditExample) -> list[dict[str, Any]]:
    """The chat turn scoring sends for this example (with its training-only prompt, if any)."""
    messages = build_messages(example.mode, example.instruction, example.source, example.edited)
    if example.prompt is not None:
        messages[0]["content"][2]["text"] = example.prompt
    return messages


def generate_answer(model: Any, processor: Any, example: EditExample,
                    max_new_tokens: int = 256) -> str:
    """Greedy answer for one pair, special tokens stripped."""
    import torch

    inputs = processor.apply_chat_template(example_messages(example), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
