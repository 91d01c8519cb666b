"""firm-lite: run the FIRM-Edit image-editing critic on hardware people own.

Public API (imports are lazy: ``import firm_lite`` does not import torch)::

    from firm_lite import CriticSettings, EditPair, load_critic, score
    critic = load_critic(CriticSettings(model="tiny"))      # or load_critic("tiny")
    records = critic.score([EditPair("a", "src.png", "edit.png", "make the sky pink")])
    run = score(CriticSettings(model="tiny"), manifest="pairs.jsonl", out="scores.jsonl")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_critic": ("firm_lite.critic", "load_critic"),
    "Critic": ("firm_lite.critic", "Critic"),
    "CriticSettings": ("firm_lite.settings", "CriticSettings"),
    "score": ("firm_lite.scoring", "score"),
    "EditPair": ("firm_lite.records", "EditPair"),
    "ModeScore": ("firm_lite.records", "ModeScore"),
    "cme": ("firm_lite.cme", "cme"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'firm_lite' has no attribute {name!r}")
