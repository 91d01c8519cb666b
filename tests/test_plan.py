"""Fit planner: the 8B numbers match hand arithmetic from the published config; auto picks the
most accurate variant that fits."""

from __future__ import annotations

import pytest

from firm_lite.errors import UserError
from firm_lite.plan import GIB, choose_variant, inventory, plan

# Qwen3-VL-8B, by hand (firm-edit-protocol.md): text 36 x (hidden 4096, 32 q / 8 kv heads of 128,
# FFN 12288), vocab 151936 untied; vision 27 x (width 1152, FFN 4304), patch 16, merge 2.
H, FFN, L, V, KV = 4096, 12288, 36, 151936, 8 * 128
PER_LAYER_LINEAR = 2 * H * H + 2 * H * KV + 3 * H * FFN  # q, o, k, v, gate, up, down
DECODER = L * PER_LAYER_LINEAR
TEXT = 2 * V * H + L * (PER_LAYER_LINEAR + 2 * 128 + 2 * H) + H
W, VF, MERGED = 1152, 4304, 1152 * 4
MERGER = MERGED * MERGED + MERGED + MERGED * H + H
VISION = (W * 3 * 2 * 16 * 16 + W + 2304 * W + 27 * (4 * W + 3 * W * W + 3 * W + W * W + W + 2 * W * VF + VF + W)
          + 2 * W + MERGER + 3 * (2 * MERGED + MERGER))
PARAMS = TEXT + VISION
REST = PARAMS - DECODER  # kept in bf16 by every default recipe
LINEARS = 7 * L


@pytest.fixture(scope="module")
def rows() -> dict[str, object]:
    return {r.variant: r for r in plan(vram_gib=12, image_size=(1024, 1024))}


def close(a: float, b: float, rel: float = 0.01) -> bool:
    return abs(a - b) <= rel * abs(b)


def test_parameter_count_matches_the_published_shape() -> None:
    inv = inventory()
    assert close(inv.parameters, PARAMS, 1e-6) and PARAMS == pytest.approx(8.767e9, rel=1e-3)


def test_weight_memory_matches_hand_arithmetic(rows) -> None:
    gptq_w4 = DECODER // 2 + DECODER // 64 + DECODER // 256 + L * (7 * H + 2 * H + FFN) * 4 + REST * 2
    gptq_w8 = DECODER + DECODER // 64 + DECODER // 128 + L * (7 * H + 2 * H + FFN) * 4 + REST * 2
    nf4 = DECODER // 2 + DECODER // 64 + DECODER // 4096 + LINEARS * (1024 + 64 + 4) + REST * 2
    int8 = DECODER + L * 4 * (2 * H + 2 * KV + 2 * FFN + H) + REST * 2
    expected = {"fp32": PARAMS * 4, "bf16": PARAMS * 2, "gptq-w4-g128": gptq_w4, "gptq-w8": gptq_w8,
                "nf4": nf4, "int8": int8}
    for name, value in expected.items():
        assert close(rows[name].weights, value), (name, rows[name].weights, value)
    # the headline numbers
    assert rows["bf16"].weights / GIB == pytest.approx(16.3, abs=0.05)
    assert rows["int8"].weights / GIB == pytest.approx(9.9, abs=0.1)
    assert rows["gptq-w4-g128"].weights / GIB == pytest.approx(6.8, abs=0.1)


def test_kv_cache_and_fit(rows) -> None:
    from firm_lite.plan import image_tokens, prompt_text_tokens

    inv = inventory()
    assert image_tokens(inv, 1024, 1024) == 1024  # ceil(1024/32)^2
    per_token = 2 * L * 8 * 128 * 2  # 144 KiB in bf16
    seq = prompt_text_tokens() + 2 * (1024 + 2) + 256
    assert close(rows["bf16"].kv_cache, 2 * seq * per_token)
    assert not rows["bf16"].fits and rows["nf4"].fits and rows["gptq-w4-g128"].fits
    assert all(r.total == r.weights + r.kv_cache + r.activations + r.reserve for r in rows.values())


def test_bigger_images_cost_more_and_sizes_are_validated() -> None:
    small = {r.variant: r for r in plan(image_size=(512, 512))}
    big = {r.variant: r for r in plan(image_size=(2048, 2048))}
    assert small["nf4"].kv_cache < big["nf4"].kv_cache and small["nf4"].activations < big["nf4"].activations
    assert small["nf4"].weights == big["nf4"].weights and small["nf4"].fits is None
    with pytest.raises(UserError):
        plan(image_size=(0, 10))


def test_auto_picks_the_most_accurate_variant_that_fits() -> None:
    import torch

    gpu = torch.device("cuda", 0)  # planning only: nothing is allocated
    bf16 = {"dtype": "bf16"}  # an Ampere-or-later card (the dtype is otherwise read from the device)
    assert choose_variant("VisionXLab/FIRM-Edit-8B", gpu, free_bytes=40 * GIB, **bf16)[0] == "bf16"  # no fp32 on GPU
    name, reason = choose_variant("VisionXLab/FIRM-Edit-8B", gpu, free_bytes=12 * GIB, **bf16)
    assert name == "nf4" and "12.0 GiB free" in reason
    assert choose_variant("VisionXLab/FIRM-Edit-8B", gpu, free_bytes=13 * GIB, **bf16)[0] == "int8"
    assert choose_variant("VisionXLab/FIRM-Edit-8B", torch.device("cpu"), free_bytes=64 * GIB)[0] == "fp32"
    with pytest.raises(UserError, match="nothing fits"):
        choose_variant("VisionXLab/FIRM-Edit-8B", gpu, free_bytes=4 * GIB, **bf16)


def test_plan_command_prints_the_8b_table_offline() -> None:
    from click.testing import CliRunner

    from firm_lite.cli import main

    result = CliRunner().invoke(main, ["plan", "--vram", "12"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Qwen3-VL-8B shape" in out and "gptq-w4-g128" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
    assert "16.33" in lines["bf16"] and " NO " in lines["bf16"] and " yes " in lines["nf4"]
