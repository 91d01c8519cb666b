"""The export-time vision attention rewrite, M-RoPE host positions and the generate stand-in's
refusals: everything of the ONNX path that needs no exported graph."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from firm_lite.errors import UserError


@pytest.fixture(scope="module")
def tiny_torch():
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from firm_lite.sources import resolve_model

    path = resolve_model("tiny").path
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32,
                                                            attn_implementation="sdpa").eval()
    return model, AutoProcessor.from_pretrained(path)


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _pixel_inputs(processor, sizes):
    return processor.image_processor(images=_images(sizes), return_tensors="pt")


def test_block_diagonal_attention_equals_per_image_attention(tiny_torch):
    import torch

    from firm_lite.export.onnx.patches import export_patches

    model, processor = tiny_torch
    inputs = _pixel_inputs(processor, [(100, 70), (64, 128), (90, 90)])
    assert len({tuple(g) for g in inputs["image_grid_thw"].tolist()}) == 3  # three different grids
    with torch.no_grad():
        ref = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        with export_patches(model):
            got = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    diff = (ref.pooler_output - got.pooler_output).abs().max().item()
    deep = max((a - b).abs().max().item() for a, b in zip(ref.deepstack_features, got.deepstack_features, strict=True))
    assert diff <= 1e-5 and deep <= 1e-5, f"image features differ by {diff:.2e}, deepstack by {deep:.2e}"


def test_export_patches_leave_the_model_unpatched(tiny_torch):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention

    from firm_lite.export.onnx.patches import export_patches, is_patched

    model, _ = tiny_torch
    attention = [m for m in model.modules() if isinstance(m, Qwen3VLVisionAttention)]
    class_forward = Qwen3VLVisionAttention.forward
    with export_patches(model):
        assert is_patched(model)
        assert all("forward" in m.__dict__ for m in attention)
        with pytest.raises(RuntimeError, match="re-entrant"):
            with export_patches(model):
                pass
        assert is_patched(model)  # the refused inner use did not undo the outer one
    assert not is_patched(model)
    assert all("forward" not in m.__dict__ and m.forward.__func__ is class_forward for m in attention)
    assert Qwen3VLVisionAttention.forward is class_forward

    with pytest.raises(ZeroDivisionError):
        with export_patches(model):
            raise ZeroDivisionError
    assert not is_patched(model)


def test_mrope_positions_match_transformers(tiny_torch):
    from firm_lite.onnx.host import mrope_positions
    from firm_lite.onnx.layout import GraphLayout

    model, processor = tiny_torch
    layout = GraphLayout.from_model(model)
    content = [{"type": "image"}, {"type": "image"}]
    texts = [processor.apply_chat_template([{"role": "user", "content": content + [{"type": "text", "text": t}]}],
                                          tokenize=False, add_generation_prompt=True)
             for t in ("short", "a much longer instruction so that the first row is left-padded")]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=_images([(100, 70), (64, 128), (128, 64), (90, 90)]),
                       return_tensors="pt", padding=True)
    assert (inputs["attention_mask"] == 0).any()
    ref, delta = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                            inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    got, next_position = mrope_positions(inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(),
                                         inputs["image_grid_thw"].numpy(), layout)
    np.testing.assert_array_equal(got, ref.numpy())
    np.testing.assert_array_equal(next_position, (delta[:, 0] + inputs["attention_mask"].sum(1)).numpy())


class _NoGraphs:
    pass


def test_generate_stand_in_refuses_what_it_does_not_reproduce():
    from firm_lite.onnx.generate import OrtGenerationModel, check_generation_config

    model = OrtGenerationModel(_NoGraphs(), {"eos_token_id": [1, 2], "pad_token_id": 0})
    with pytest.raises(ValueError, match="greedily"):
        model.generate(input_ids=np.zeros((1, 3), np.int64), do_sample=True)
    with pytest.raises(TypeError, match="num_beams"):
        model.generate(input_ids=np.zeros((1, 3), np.int64), num_beams=2)
    check_generation_config({"repetition_penalty": 1.0, "do_sample": True, "top_k": 20}, "cfg")  # neutral
    with pytest.raises(UserError, match="repetition_penalty"):
        check_generation_config({"repetition_penalty": 1.05}, "cfg")
