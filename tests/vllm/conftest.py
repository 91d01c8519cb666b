"""Fixtures of the vLLM backend's tests: one vLLM engine on the tiny critic for the whole session.

These tests run only in the vLLM environment (``scripts/vllm_cpu_env.sh``); elsewhere every test
here is skipped at collection.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HELDOUT = Path(__file__).resolve().parents[2] / "calibration" / "editset-heldout.jsonl"


def engine_options():
    from firm_lite.settings import VllmOptions

    # a small KV cache (CI machines are small and shared); vLLM's own thread binding: binding the
    # worker to both cores of a 2-core machine measured slower here while other jobs ran
    return VllmOptions(kv_cache_gib=1)


def vllm_settings(**changes):
    """The settings of the session's vLLM critic (`firm-lite score --backend vllm --model tiny
    --device cpu --kv-cache-gib 1`): the same settings load the same cached critic."""
    from firm_lite.settings import CriticSettings

    return CriticSettings(model="tiny", device="cpu", backend="vllm", vllm=engine_options()).replace(**changes)


@pytest.fixture(scope="session")
def vllm_critic():
    """The tiny critic on vLLM, loaded as users load it (load_critic); one engine per session."""
    pytest.importorskip("vllm")
    from firm_lite.critic import load_critic, release_critic

    critic = load_critic(vllm_settings())
    yield critic
    release_critic(critic)


@pytest.fixture(scope="session")
def vllm_engine(vllm_critic):
    return vllm_critic.backend


@pytest.fixture(scope="session")
def heldout_items(tiny_critic):
    """The 80 held-out pairs, checked and decoded by the critic (as a scoring run does)."""
    from firm_lite.manifest import read_manifest

    rows = list(read_manifest(HELDOUT))
    assert len(rows) == 80 and all(r.pair for r in rows)
    return [(r.pair, *tiny_critic.prepare(r.pair)) for r in rows]


@pytest.fixture(scope="session")
def vllm_answers(vllm_engine, heldout_items):
    """The session engine's answers on the held-out pairs per protocol, computed once (the full
    protocol first, while the prefix cache is cold, so the images really go through vLLM)."""
    answers = {}
    for protocol in ("full", "fast"):
        out = vllm_engine.score_modes(heldout_items, protocol=protocol)
        answers[protocol] = [{m: out[m][k] for m in out} for k in range(len(heldout_items))]
    return answers
