"""What the tiny critic is made of: tokenizer, processor, chat template and config.

Everything here is shaped like Qwen3-VL-8B-Instruct's pieces, at a size that trains on a CPU:
a byte-level BPE with Qwen's pre-tokenizer regex (every digit its own token) and Qwen's added
tokens, Qwen3-VL's chat template and processor with a small pixel budget, and a
``Qwen3VLConfig`` from :class:`TinyCriticDims`. :mod:`firm_lite.dev.tiny_critic` builds and trains
the critic from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

# Qwen2/Qwen3's pre-tokenizer regex: ``\p{N}`` (not ``\p{N}+``) isolates every digit.
QWEN2_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                     r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen's added tokens in Qwen's order; their ids follow the BPE vocab as 151643.. do in Qwen3-VL.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_PLAIN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>")

# Qwen3-VL-*-Instruct's chat template (Apache-2.0) without the tools branches; for system, user
# and assistant turns it renders byte-identically (a critic never sends tools).
_SYSTEM = """{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}
{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}
{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}
{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}
"""
_USER = """{%- if message.role == "user" %}{{- '<|im_start|>' + message.role + '\\n' }}
{%- if message.content is string %}{{- message.content }}{%- else %}
{%- for content in message.content %}
{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
{%- set image_count.value = image_count.value + 1 %}
{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
<|vision_start|><|image_pad|><|vision_end|>
{%- elif content.type == 'video' or 'video' in content %}
{%- set video_count.value = video_count.value + 1 %}
{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
<|vision_start|><|video_pad|><|vision_end|>
{%- elif 'text' in content %}{{- content.text }}{%- endif %}
{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}
"""
_ASSISTANT = """{%- elif message.role == "assistant" %}{{- '<|im_start|>' + message.role + '\\n' }}
{%- if message.content is string %}{{- message.content }}{%- else %}
{%- for item in message.content %}{%- if 'text' in item %}{{- item.text }}{%- endif %}
{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}
"""
CHAT_TEMPLATE = (_SYSTEM + "{%- set image_count = namespace(value=0) %}\n"
                 "{%- set video_count = namespace(value=0) %}\n{%- for message in messages %}\n"
                 + _USER + _ASSISTANT + "{%- endfor %}\n"
                 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n")


@dataclass(frozen=True)
class TinyCriticDims:
    """Every size that shapes the tiny critic; recorded in the provenance file."""

    bpe_vocab_size: int = 1536
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    text_head_dim: int = 32  # 16 gave the width axis too few rotary frequencies to find a patch
    text_intermediate: int = 192
    mrope_section: tuple[int, int, int] = (8, 4, 4)
    # The 8B's 5e6 leaves a small head almost no frequency that tells nearby positions apart;
    # at 1e4 a 32-dim head with interleaved sections (8, 4, 4) turns 0.56 / 0.32 rad per patch on
    # the height / width axes: enough for the comparison heads (compare_heads.py) to pick out one
    # patch, while the slowest pairs still barely turn over a 400-token prompt.
    rope_theta: float = 10_000.0
    # Biases on the attention projections (Qwen2-VL's decoder has q/k/v biases; Qwen3-VL-8B has
    # none): the comparison heads' queries and keys are biases (compare_heads.py).
    attention_bias: bool = True
    vision_depth: int = 2
    vision_hidden: int = 48
    vision_heads: int = 2
    vision_intermediate: int = 128
    vision_position_embeddings: int = 64  # an 8x8 learned grid, interpolated like the 8B's 48x48
    deepstack_indexes: tuple[int, ...] = (0, 1)
    min_pixels: int = 64 * 64
    max_pixels: int = 160 * 160  # the edit set's 160x160 / 192x128 images pass unresized


def build_tokenizer(corpus: Iterable[str], bpe_vocab_size: int) -> Any:
    """Train a byte-level BPE on ``corpus``; wrap it as transformers' ``Qwen2Tokenizer``."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(corpus), trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    for token in QWEN_SPECIAL_TOKENS + QWEN_PLAIN_ADDED_TOKENS:
        vocab[token] = len(vocab)
    # Qwen2Tokenizer rebuilds the same normalizer/pre-tokenizer/decoder from vocab + merges.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", model_max_length=262144, errors="replace",
        split_special_tokens=False, extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]))
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False)
                          for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t in QWEN_PLAIN_ADDED_TOKENS])
    check_tokenizer(tokenizer)
    if len(tokenizer) != len(vocab):
        raise AssertionError(f"tokenizer has {len(tokenizer)} ids, expected {len(vocab)}")
    return tokenizer


def check_tokenizer(tokenizer: Any) -> None:
    """Assert what score parsing relies on: added tokens whole, each digit one token anywhere."""
    for token in QWEN_SPECIAL_TOKENS + QWEN_PLAIN_ADDED_TOKENS:
        if len(tokenizer.encode(token, add_special_tokens=False)) != 1:
            raise AssertionError(f"{token!r} is not a single token")
    for digit in "12345":
        alone = tokenizer.encode(digit, add_special_tokens=False)
        for text in (f"[{digit}]", f'"score" : [{digit}]\n}}', f" {digit}", f"{digit}{digit}x"):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(alone) != 1 or alone[0] not in ids:
                raise AssertionError(f"digit {digit} is not one token inside {text!r}: {ids}")


def build_processor(tokenizer: Any, dims: TinyCriticDims) -> Any:
    """Qwen3-VL's processor (Qwen2-VL image processor, patch 16, mean/std 0.5), tiny budget."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    common: dict[str, Any] = dict(patch_size=16, temporal_patch_size=2, merge_size=2,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    budget = {"shortest_edge": dims.min_pixels, "longest_edge": dims.max_pixels}
    video_budget = {"shortest_edge": dims.min_pixels, "longest_edge": 8 * dims.max_pixels}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=budget, **common), tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=video_budget, **common),
        chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: Any, dims: TinyCriticDims) -> Any:
    """A ``Qwen3VLConfig`` shaped like Qwen3-VL-8B-Instruct's (untied head, deepstack, mrope)."""
    from transformers import Qwen3VLConfig

    if sum(dims.mrope_section) * 2 != dims.text_head_dim:
        raise ValueError("mrope_section must sum to text_head_dim / 2")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=dims.text_hidden, hidden_act="silu",
        intermediate_size=dims.text_intermediate, num_hidden_layers=dims.text_layers,
        num_attention_heads=dims.text_heads, num_key_value_heads=dims.text_kv_heads,
        head_dim=dims.text_head_dim, max_position_embeddings=4096, rms_norm_eps=1e-6,
        attention_bias=dims.attention_bias,
        tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": dims.rope_theta,
                         "mrope_section": list(dims.mrope_section), "mrope_interleaved": True})
    vision = dict(
        depth=dims.vision_depth, hidden_size=dims.vision_hidden, num_heads=dims.vision_heads,
        intermediate_size=dims.vision_intermediate, hidden_act="gelu_pytorch_tanh",
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        out_hidden_size=dims.text_hidden, num_position_embeddings=dims.vision_position_embeddings,
        deepstack_visual_indexes=list(dims.deepstack_indexes))
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
