"""The FIRM-Edit prompts and the one chat turn they are sent in.

FIRM-Edit-8B was trained on these exact templates (whitespace included), so they are package
data copied verbatim from the reference server (VisionXLab/FIRM-Reward,
``editing/reward_server/prompt_template.py``, Apache-2.0; see ``firm_lite/data/NOTICE``).
This module owns the message order: one user turn holding the ORIGINAL image, then the EDITED
image, then the mode's text, and the one renderer of that turn into the model's text
(:func:`render_text`, :func:`chat_text`). Every caller (CLI, server, calibration, GPTQ
calibration samples, benchmark, the vLLM backend) renders through it, so a score means the same
thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

MODES: tuple[str, ...] = ("execution", "consistency")
# Wire names used by the reference server's routes (/mode/score_execution, ...).
TEMPLATE_KEYS: dict[str, str] = {"execution": "score_execution", "consistency": "score_consistency"}


@lru_cache(maxsize=1)
def templates() -> dict[str, str]:
    """Mode name -> raw ``str.format`` template, exactly as shipped."""
    raw = resources.files("firm_lite.data").joinpath("firm_edit_prompts.json").read_text("utf-8")
    data = json.loads(raw)
    return {mode: data[key] for mode, key in TEMPLATE_KEYS.items()}


def render_prompt(mode: str, instruction: str, requirement: str = "") -> str:
    """The mode's prompt text with the instruction filled in (``str.format``, as the reference)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    return templates()[mode].format(prompt=instruction, requirement=requirement)


def build_messages(mode: str, instruction: str, source: Any, edited: Any,
                   requirement: str = "") -> list[dict[str, Any]]:
    """One user turn: original image, edited image, then the mode's prompt."""
    return [{
        "role": "user",
        "content": [
            {"type": "image", "image": source},
            {"type": "image", "image": edited},
            {"type": "text", "text": render_prompt(mode, instruction, requirement)},
        ],
    }]


def chat_text(processor: Any, messages: list[dict[str, Any]]) -> str:
    """The chat template applied to ``messages`` with the generation prompt, untokenized (images
    as placeholders): the one place firm-lite turns a turn into text."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_text(processor: Any, mode: str, instruction: str, requirement: str = "") -> str:
    """The exact text (with image placeholders) sent for one mode of one pair."""
    return chat_text(processor, build_messages(mode, instruction, None, None, requirement))


def prompt_hash() -> str:
    """sha256 over both templates: part of every cache key that depends on the prompts."""
    blob = json.dumps(templates(), sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
