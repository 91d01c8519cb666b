"""Export-time rewrite of the Qwen3-VL vision attention: one SDPA with a block-diagonal mask.

Qwen3-VL's vision encoder packs every image's patches into one sequence and, unless flash
attention is in use, attends image by image: it splits q/k/v at ``cu_seqlens.tolist()``, which
is data-dependent Python, so ``torch.export`` freezes the image count and sizes of the example it
traced. For export we replace that with a single ``scaled_dot_product_attention`` over the whole
packed sequence and a mask that only lets a patch see patches of its own image; the mask is built
*inside* the graph from ``cu_seqlens`` (a graph input), so one graph serves any number of images of
any sizes. Numerically it is the same attention (masked-out keys get exactly zero weight).

The patch is applied to the model's own attention modules (instance attributes, never the class)
and only inside :func:`export_patches`; on exit every module is as it was, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_PATCHED_FLAG = "_firm_lite_export_patch"


def block_diagonal_vision_attention(module: Any, hidden_states: Any, cu_seqlens: Any,
                                    position_embeddings: tuple[Any, Any] | None = None, **_: Any) -> Any:
    """``Qwen3VLVisionAttention.forward`` as one SDPA with a per-image (block-diagonal) mask."""
    import torch
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    seq_length = hidden_states.shape[0]
    query, key, value = (module.qkv(hidden_states).reshape(seq_length, 3, module.num_heads, -1)
                         .permute(1, 0, 2, 3).unbind(0))
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    query, key, value = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
    # Image index of every patch: how many image ends (cu_seqlens[1:]) lie at or before it.
    patch = torch.arange(seq_length, device=hidden_states.device, dtype=cu_seqlens.dtype)
    image = (patch[:, None] >= cu_seqlens[None, 1:]).sum(-1)
    same_image = (image[:, None] == image[None, :])[None, None]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=same_image,
                                                           scale=module.scaling)
    return module.proj(out.transpose(1, 2).reshape(seq_length, -1))


def _vision_attention_modules(model: Any) -> list[Any]:
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention

    return [m for m in model.modules() if isinstance(m, Qwen3VLVisionAttention)]


def is_patched(model: Any) -> bool:
    """True while any vision attention of ``model`` carries the export rewrite."""
    return any(hasattr(m, _PATCHED_FLAG) for m in _vision_attention_modules(model))


@contextmanager
def export_patches(model: Any) -> Iterator[Any]:
    """Within the block, ``model``'s vision attention runs as one block-diagonal SDPA."""
    import types

    modules = _vision_attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no Qwen3-VL vision attention to patch")
    if any(hasattr(m, _PATCHED_FLAG) for m in modules):
        raise RuntimeError("export_patches is not re-entrant")
    try:
        for m in modules:
            m.forward = types.MethodType(block_diagonal_vision_attention, m)
            setattr(m, _PATCHED_FLAG, True)
        yield model
    finally:
        for m in modules:
            if m.__dict__.pop(_PATCHED_FLAG, None):
                m.__dict__.pop("forward", None)
