"""The tiny critic's comparison heads (firm_lite.dev.compare_heads): where they attend, what they
write, what training may not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from firm_lite.dev.compare_heads import image_token_pairs, wire_comparison_heads
from firm_lite.dev.editset.generator import generate
from firm_lite.dev.editset.photos import SHAPES
from firm_lite.dev.examples import EditExample, example_messages
from firm_lite.dev.tiny_architecture import TinyCriticDims, build_config, build_processor, build_tokenizer

pytestmark = pytest.mark.requires_extra("calib")  # every test renders edit-set photos (scikit-image)


@pytest.fixture(scope="module")
def parts():
    from transformers import Qwen3VLForConditionalGeneration

    from firm_lite.dev.editset.training import tokenizer_texts

    dims = TinyCriticDims()
    tokenizer = build_tokenizer(tokenizer_texts(), dims.bpe_vocab_size)
    processor = build_processor(tokenizer, dims)
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, dims)).float()
    model.set_attn_implementation("eager")
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return processor, model, image_token


def render(processor, pairs, prompt="Describe the edit."):
    examples = [EditExample("execution", "", s, e, 0, "", prompt=prompt) for s, e in pairs]
    texts = [processor.apply_chat_template(example_messages(x), tokenize=False, add_generation_prompt=True)
             for x in examples]
    return processor(text=texts, images=[[x.source, x.edited] for x in examples], padding=True,
                     padding_side="left", return_tensors="pt")


@pytest.fixture(scope="module")
def wired(parts):
    processor, model, image_token = parts
    fit = render(processor, [(i.source_image(), i.edited_image()) for i in generate("train", 12)])
    weights = wire_comparison_heads(model, fit, image_token, freeze=True)
    return processor, model, image_token, weights


def test_edit_set_images_share_their_long_side():
    # The heads find the other image's patch at a fixed M-RoPE offset: true only if every image is
    # 5 merged tokens (160 px) on its long side.
    assert {max(shape) for shape in SHAPES} == {160}
    shapes = {i.source_image().size for i in generate("heldout", 30)}
    assert shapes == {(w, h) for h, w in SHAPES}


def test_heads_attend_to_the_same_patch_of_the_other_image_and_to_themselves(wired):
    processor, model, image_token, weights = wired
    assert weights["other_patch"] > 0.95 and weights["self"] > 0.8
    batch = render(processor, [(i.source_image(), i.edited_image()) for i in generate("heldout", 12)],
                   prompt="Make the sky purple. Answer in JSON.")  # not the fitting pairs nor prompt
    assert len({tuple(g) for g in batch["image_grid_thw"].tolist()}) == 3  # all three shapes
    with torch.no_grad():
        attention = model(**batch, output_attentions=True).attentions[0]
    pairs = image_token_pairs(batch, image_token)
    other = torch.stack([attention[r, 0, q, k] for r, row in enumerate(pairs) for q, k in row])
    itself = torch.stack([attention[r, 1, q, q] for r, row in enumerate(pairs) for q, _ in row])
    assert other.min() > 0.9 and itself.mean() > 0.8
    # the other heads were left alone: not pinned to one key
    assert attention[:, 2:].amax(-1).mean() < 0.9


def layer0_difference(model, batch):
    """What heads 1 and 0 carry into layer 0's output projection, own minus other patch."""
    dim, seen = model.config.text_config.head_dim, {}
    hook = model.model.language_model.layers[0].self_attn.o_proj.register_forward_pre_hook(
        lambda module, args: seen.setdefault("in", args[0].detach()))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    return seen["in"][..., dim:2 * dim] - seen["in"][..., :dim]


def test_they_write_the_patch_difference(wired):
    processor, model, image_token, _ = wired
    source = generate("heldout", 1)[0].source_image().convert("RGB").resize((160, 160))
    edited = np.asarray(source).copy()
    edited[:64, :64] = (250, 20, 20)  # the top-left 2x2 merged tokens
    batch = render(processor, [(source, source), (source, Image.fromarray(edited))])
    difference = layer0_difference(model, batch).norm(dim=-1)
    pairs = image_token_pairs(batch, image_token)
    same = torch.stack([difference[0, q] for q, _ in pairs[0]])
    changed = torch.stack([difference[1, q] for q, _ in pairs[1]]).view(5, 5)
    assert same.max() < 0.1 * changed[:2, :2].min()  # identical images: (almost) nothing written
    inside, outside = changed[:2, :2].mean(), torch.cat([changed[2:].flatten(), changed[:2, 2:].flatten()]).mean()
    assert inside > 3 * outside


def test_training_cannot_move_the_positional_parts(wired):
    processor, model, _, _ = wired
    dim = model.config.text_config.head_dim
    attention = model.model.language_model.layers[0].self_attn
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = render(processor, [(i.source_image(), i.edited_image()) for i in generate("train", 2)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)  # no decay, as train_critic
    model.train()
    loss = model(**batch).logits.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    model.eval()
    after = dict(model.named_parameters())
    prefix = "model.language_model.layers.0.self_attn."
    q, k = prefix + "q_proj.weight", prefix + "k_proj.weight"
    assert torch.equal(after[q][:2 * dim], before[q][:2 * dim]) and not torch.equal(after[q], before[q])
    assert torch.equal(after[k][:dim], before[k][:dim]) and not torch.equal(after[k], before[k])
    for bias, rows in ((prefix + "q_proj.bias", 2 * dim), (prefix + "k_proj.bias", dim)):
        assert torch.equal(after[bias][:rows], before[bias][:rows]) and not torch.equal(after[bias], before[bias])
    assert not after[q][:2 * dim].any() and not after[k][:dim].any()  # zero rows: nothing for a quantizer to bend
    assert torch.equal(attention.q_norm.weight, before[prefix + "q_norm.weight"])
    assert not torch.equal(after["model.language_model.embed_tokens.weight"],
                           before["model.language_model.embed_tokens.weight"])


def test_refuses_a_shape_without_room_for_them(parts):
    from transformers import Qwen3VLForConditionalGeneration

    from firm_lite.dev.editset.training import tokenizer_texts

    dims = TinyCriticDims(text_heads=2, text_kv_heads=2, text_head_dim=16, mrope_section=(4, 2, 2))
    tokenizer = build_tokenizer(tokenizer_texts(), dims.bpe_vocab_size)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, dims))
    with pytest.raises(ValueError, match="two query heads per key/value group"):
        wire_comparison_heads(model, {}, 0)
