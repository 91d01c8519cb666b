"""vLLM engine planner: the 8B numbers match hand arithmetic from the published config, the layout
advice (one engine per card vs tensor parallel) follows the card size, and the planner's
max_model_len is the one firm-lite's vLLM engine asks for."""

from __future__ import annotations

import json
import math

import pytest

from firm_lite.errors import UserError
from firm_lite.plan import GIB, inventory, prompt_text_tokens
from firm_lite.plan.vllm import BLOCK_SIZE, plan_vllm, vllm_max_model_len

# Qwen3-VL-8B, by hand (firm-edit-protocol.md): text 36 layers, hidden 4096, 8 KV heads of 128,
# FFN 12288, vocab 151936; vision width 1152, FFN 4304, patch 16, merge 2, 3 deepstack taps.
L, H, FFN, V = 36, 4096, 12288, 151936
W, VF = 1152, 4304
KV_PER_TOKEN = 2 * L * 8 * 128 * 2  # K and V, 36 layers, 8 heads x 128, bf16
# parameters vLLM replicates on every tensor-parallel rank: norms, vision patch conv and position table
REPLICATED = (L * (2 * H + 2 * 128) + H  # input/post-attention norms, q/k norms, final norm
              + W * 3 * 2 * 16 * 16 + W + 2304 * W  # patch conv (+bias), position embedding
              + 27 * 2 * 2 * W + 2 * W + 3 * 2 * 4 * W)  # block LayerNorms, merger and deepstack norms


@pytest.fixture(scope="module")
def on24():
    return plan_vllm(vram_gib=24)


def rows(p):
    return {r.variant: r for r in p.rows}


def test_kv_bytes_per_token_and_max_model_len_by_hand(on24) -> None:
    assert KV_PER_TOKEN == 147_456 and on24.kv_bytes_per_token == KV_PER_TOKEN
    # 1024x1024: 32 x 32 = 1024 tokens per image, + start/end, two images, prompt room, answer
    assert on24.image_tokens == 1024
    assert on24.max_model_len == 2 * (1024 + 2) + 4096 + 256 == 6404
    # the processor's own budget (max 16777216 px = 16384 tokens per image), what the engine asks without --max-pixels
    assert on24.max_model_len_default_budget == 2 * (16384 + 2) + 4096 + 256 == 37124
    assert vllm_max_model_len(1000 * 750) == 2 * (732 + 2) + 4096 + 256  # 750000 // 1024 = 732
    assert vllm_max_model_len(16777216, max_positions=8192) == 8192


def test_a_pair_shares_its_image_prefix(on24) -> None:
    prefix = 3 + 2 * (1024 + 2)  # "<|im_start|>user\n", then both images with their markers
    suffix = prompt_text_tokens() + 256
    assert (on24.prefix_tokens, on24.suffix_tokens) == (prefix, suffix)
    full, rest = divmod(prefix, 16)
    assert on24.pair_blocks == full + 2 * math.ceil((rest + suffix) / 16) == 128 + 2 * 81
    unshared = 2 * math.ceil((prefix + suffix) / 16)
    assert on24.pair_blocks < unshared  # prefix caching stores the 2048 image tokens once


def test_bf16_on_a_24_gib_card_by_hand(on24) -> None:
    bf16 = rows(on24)["bf16"]
    inv = inventory()
    assert bf16.weights == inv.parameters * 2 and bf16.tensor_parallel_size == 1 and bf16.data_parallel_size == 1
    fit = bf16.fit
    assert fit.max_num_batched_tokens == 16384
    items = 16384 // 1024  # vLLM profiles its encoder on as many largest images as 16384 tokens hold
    vision = items * 4096 * (6 * W + 2 * VF + 3 * 2 * 16 * 16) * 2
    merged = items * 1024 * 4096 * 4 * 2  # merged features + 3 deepstack copies, bf16
    lm_step = 16384 * (4 * H + 3 * FFN) * 2
    logits = 2 * 128 * V * 4
    assert fit.profile_peak == merged + max(vision, lm_step) + logits
    kv = int(0.9 * 24 * GIB) - inv.parameters * 2 - fit.profile_peak - GIB // 2
    assert fit.kv_cache == kv and fit.kv_blocks == kv // (16 * KV_PER_TOKEN) == 929
    assert fit.pairs_in_flight == 929 // 290 == 3 and fit.starts


def test_tensor_parallel_splits_weights_and_kv_heads() -> None:
    p = plan_vllm(vram_gib=12, gpus=2)
    r = rows(p)
    bf16, nf4 = r["bf16"], r["nf4"]
    assert (bf16.tensor_parallel_size, bf16.data_parallel_size) == (2, 1)  # 16.3 GiB of weights: two cards
    assert bf16.fit.weights == REPLICATED * 2 + math.ceil((bf16.weights - REPLICATED * 2) / 2)
    assert bf16.fit.kv_bytes_per_token == KV_PER_TOKEN // 2  # 4 of the 8 KV heads per card
    assert (nf4.tensor_parallel_size, nf4.data_parallel_size) == (1, 2)  # fits one card: one engine per GPU
    assert nf4.total_pairs_in_flight == 2 * nf4.fit.pairs_in_flight > 0
    cmd = p.command(bf16)
    assert "--backend vllm --variant bf16" in cmd and "--tensor-parallel-size 2 --data-parallel-size 1" in cmd
    assert "--max-pixels 1048576" in cmd
    assert "--tensor-parallel-size 1 --data-parallel-size 2" in p.command(nf4)


def test_what_does_not_fit_or_run_says_why() -> None:
    r = rows(plan_vllm(vram_gib=12))
    assert r["bf16"].fit is None and "--gpus 2" in r["bf16"].note
    assert r["gptq-w4-g128"].fit.starts and r["gptq-w4-g128"].quantization == "gptq_marlin"
    assert r["nf4"].quantization == "bitsandbytes"
    for name in ("int8", "onnx", "noisy", "bnb"):
        assert r[name].why_not and r[name].fit is None
    assert "4-bit only" in r["int8"].why_not
    fp32 = rows(plan_vllm(vram_gib=80, dtype="fp32"))
    assert "fp16/bf16" in fp32["gptq-w4-g128"].why_not
    with pytest.raises(UserError, match="--vram"):
        plan_vllm()


def test_bigger_images_leave_fewer_pairs_in_flight() -> None:
    small = rows(plan_vllm(vram_gib=24, image_size=(512, 512)))["nf4"].fit
    big = rows(plan_vllm(vram_gib=24, image_size=(2048, 2048)))["nf4"].fit
    assert small.pairs_in_flight > big.pairs_in_flight >= 1


def test_the_engine_asks_vllm_for_the_planned_max_model_len() -> None:
    """The engine sizes vLLM with the planner's arithmetic (it imports it; this guards the wiring)."""
    from firm_lite.generation import DecodingConfig
    from firm_lite.images import ImageBudget
    from firm_lite.sources import tiny_critic_dir
    from firm_lite.vllm_backend import engine

    budget = ImageBudget(65536, 1024 * 1024)
    config = json.loads((tiny_critic_dir() / "config.json").read_text("utf-8"))
    positions = config.get("text_config", config).get("max_position_embeddings")
    assert engine._max_model_len(tiny_critic_dir(), budget, DecodingConfig()) == vllm_max_model_len(
        budget.max_pixels, max_positions=positions)


def test_plan_command_vllm_table_and_json() -> None:
    from click.testing import CliRunner

    from firm_lite.cli import main

    out = CliRunner().invoke(main, ["plan", "--backend", "vllm", "--vram", "24"])
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines() if line[:1].isalpha()}
    assert lines["bf16"].split()[1:8] == ["none", "16.33", "16.33", "2.04", "929", "3", "1"]
    assert "not on vLLM:" in out.output and "147,456 B/token" in out.output
    data = json.loads(CliRunner().invoke(main, ["plan", "--backend", "vllm", "--vram", "12", "--gpus", "2",
                                                "--json"]).output)
    bf16 = next(r for r in data["rows"] if r["variant"] == "bf16")
    assert data["block_size"] == BLOCK_SIZE and bf16["tensor_parallel_size"] == 2 and "--tensor-parallel-size 2" in \
        bf16["command"]
    bad = CliRunner().invoke(main, ["plan", "--backend", "vllm", "--vram", "24", "--batch-size", "4"])
    assert bad.exit_code == 2 and "batches continuously" in bad.output
    assert CliRunner().invoke(main, ["plan", "--gpus", "2"]).exit_code == 2
    hf = CliRunner().invoke(main, ["plan", "--vram", "12"]).output
    assert hf == CliRunner().invoke(main, ["plan", "--backend", "hf", "--vram", "12"]).output
