"""Fixtures of the vLLM backend's tests: one vLLM engine on the tiny critic for the whole session.

These tests run only in the vLLM environment (``scripts/vllm_cpu_env.sh``); elsewhere every test
here is skipped at collection.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HELDOUT = Path(__file__).resolve().parents[2] / "calibration" / "editset-heldout.jsonl"


def engine_options():
    from firm_lite.vllm_backend import VllmOptions

    # a small KV cache (CI machines are small and shared); vLLM's own thread binding: binding the
    # worker to both cores of a 2-core machine measured slower here while other jobs ran
    return VllmOptions(kv_cache_gib=1)


@pytest.fixture(scope="session")
def vllm_engine(tiny_critic):
    pytest.importorskip("vllm")
    from firm_lite.sources import tiny_critic_dir
    from firm_lite.vllm_backend import VllmEngine

    engine = VllmEngine(tiny_critic_dir(), tiny_critic.processor, tiny_critic.render, tiny_critic.budget,
                        tiny_critic.decoding, dtype="fp32", options=engine_options())
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def heldout_items(tiny_critic):
    """The 80 held-out pairs, checked and decoded by the critic (as a scoring run does)."""
    from firm_lite.manifest import read_manifest

    rows = list(read_manifest(HELDOUT))
    assert len(rows) == 80 and all(r.pair for r in rows)
    return [(r.pair, *tiny_critic.prepare(r.pair)) for r in rows]
