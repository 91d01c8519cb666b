"""Wire two attention heads of the tiny critic so it can compare the two images patch by patch.

A critic has to tell what changed between the source and the edited image. Qwen3-VL's vision
tower encodes each image alone, so the comparison has to happen in the decoder: an edited-image
token must find the source token of the same patch. Trained from random weights, the tiny critic
never found that attention pattern on a CPU budget (README, *Edit set and tiny critic*): it
learnt to compare whole-image averages, saw global edits and missed every local one.

M-RoPE makes the pattern a fixed one. Image tokens sit at ``(t, h, w) = start + (0, row, col)``,
and the next text position after an image is ``start + longest side + 1``, so when both images of
a pair have the same longest side in merged tokens (the edit set's do: 5), the source token of
the same patch is at relative position ``(delta, delta, delta)`` from every edited token, with
``delta`` the same for every pair. A head whose query and key do not depend on the token (a
bias, with a zero weight row) attends by relative position alone, and its rotary frequencies can
be chosen to peak at exactly that offset.

:func:`wire_comparison_heads` sets layer 0's first key/value group that way:

- head 0 attends to the same patch of the other image, head 1 (same keys and values) to itself;
  their query/key directions are fitted (Adam, a fixed number of steps, on pairs rendered by the
  real processor) to put the most attention on those targets, at a query/key-norm gain ``gain``;
- both heads' values read the merged image content, which the merger writes to the upper half of
  the stream only, and their outputs write ``scale * (own - other)`` into the lower half: after
  layer 0, an edited-image token carries the normalised difference from its source patch (zero
  where nothing changed), which the rest of the network can pool.

The queries and keys are biases (the config's ``attention_bias``) behind zero weight rows, not
weights reading a constant channel: quantizers keep biases in full precision and a zero row at
zero, whereas GPTQ's error compensation re-spread a constant channel's weight over the content
channels (the queries then followed the content: garbage answers even at 8 bits), and the q/k
RMS norms' epsilon shrank a query read from a small channel on loud tokens. With ``freeze`` the
positional parts (those rows and biases, the q/k norms) get zero gradients so training cannot wash
the pattern out; everything else trains as usual.
"""

from __future__ import annotations

import math
from typing import Any


def _positions(model: Any, batch: dict[str, Any]) -> Any:
    positions, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                              batch["image_grid_thw"], None, attention_mask=batch["attention_mask"])
    return positions


def image_token_pairs(batch: dict[str, Any], image_token_id: int) -> list[list[tuple[int, int]]]:
    """Per row: (index of each edited-image token, index of the source token of the same patch)."""
    out = []
    for ids in batch["input_ids"]:
        where = (ids == image_token_id).nonzero().flatten().tolist()
        half = len(where) // 2
        out.append(list(zip(where[half:], where[:half], strict=True)))
    return out


def positional_attention(model: Any, batch: dict[str, Any], positions: Any, query: Any, key: Any) -> Any:
    """Log attention weights (rows, queries, keys) of a head with the same query and key at every token."""
    import torch
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

    rows, length = batch["input_ids"].shape
    cos, sin = model.model.language_model.rotary_emb(torch.zeros(rows, length, 1), positions)
    q, k = apply_rotary_pos_emb(query.expand(rows, 1, length, -1), key.expand(rows, 1, length, -1), cos, sin)
    scores = (q @ k.transpose(-1, -2))[:, 0] / math.sqrt(query.shape[-1])
    allowed = torch.ones(length, length).tril().bool()[None] & batch["attention_mask"].bool()[:, None, :]
    return scores.masked_fill(~allowed, -1e9).log_softmax(-1)


def fit_positional_heads(model: Any, batch: dict[str, Any], targets: list[list[list[tuple[int, int]]]],
                         gain: float, steps: int = 400, seed: int = 0) -> tuple[list[Any], Any, list[float]]:
    """One query direction per target set and a key direction they share (heads of one key/value
    group), each head putting the most attention on its targets (row -> (query index, key
    index)); returns the queries, the key and each head's mean attention on its targets. The
    vectors are ``gain`` * unit-RMS directions: what the q/k RMS norms (weight ``gain``) make of
    a constant input. Adam from a seeded start, a fixed number of steps: deterministic."""
    import torch

    positions = _positions(model, batch)
    dim = model.config.text_config.head_dim
    generator = torch.Generator().manual_seed(seed)
    queries = [torch.randn(dim, generator=generator).requires_grad_() for _ in targets]
    key = torch.randn(dim, generator=generator).requires_grad_()
    optimizer = torch.optim.Adam([*queries, key], lr=0.05)
    index = [([r for r, row in enumerate(t) for _ in row], [q for row in t for q, _ in row],
              [k for row in t for _, k in row]) for t in targets]

    def unit(v: Any) -> Any:
        return gain * v / v.pow(2).mean().sqrt()

    for step in range(steps + 1):
        logps = [positional_attention(model, batch, positions, unit(q), unit(key))[rows, qi, ki]
                 for q, (rows, qi, ki) in zip(queries, index, strict=True)]
        if step == steps:
            break
        optimizer.zero_grad()
        (-sum(lp.mean() for lp in logps)).backward()
        optimizer.step()
    return ([q.detach() for q in queries], key.detach(), [float(lp.detach().exp().mean()) for lp in logps])


def wire_comparison_heads(model: Any, batch: dict[str, Any], image_token_id: int, *, gain: float = 6.0,
                          scale: float = 2.0, freeze: bool = True) -> dict[str, float]:
    """Set layer 0's first key/value group to compare each edited-image token with its source
    patch (module docstring). ``batch``: processor output for sample pairs (both images, the
    pair's prompt). Returns the mean attention each head puts on its target in ``batch``."""
    import torch

    text = model.config.text_config
    hidden, dim = text.hidden_size, text.head_dim
    if text.num_attention_heads // text.num_key_value_heads < 2 or 2 * dim > hidden or not text.attention_bias:
        raise ValueError("comparison heads need attention biases, two query heads per key/value group "
                         "and head_dim <= hidden/2")
    language, visual = model.model.language_model, model.model.visual
    attention = language.layers[0].self_attn
    targets = image_token_pairs(batch, image_token_id)
    (other_q, self_q), key, (other_weight, self_weight) = fit_positional_heads(
        model, batch, [targets, [[(q, q) for q, _ in row] for row in targets]], gain)
    with torch.no_grad():
        images = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        merged = torch.cat(list(getattr(images, "pooler_output", images)), 0)
        level = float(merged.pow(2).mean().sqrt())  # the merged tokens' RMS at initialisation
        merger = visual.merger.linear_fc2
        merger.weight[:dim] = 0
        merger.bias[:dim] = 0  # image content lives in the upper half of the stream
        attention.q_proj.weight[:2 * dim] = 0
        attention.q_proj.bias[:2 * dim] = torch.cat([other_q, self_q])
        attention.k_proj.weight[:dim] = 0
        attention.k_proj.bias[:dim] = key
        attention.q_norm.weight.fill_(gain)
        attention.k_norm.weight.fill_(gain)
        attention.v_proj.weight[:dim] = 0
        attention.v_proj.weight[:dim, hidden - dim:] = torch.eye(dim)
        attention.o_proj.weight[:, :2 * dim] = 0
        attention.o_proj.weight[:dim, :dim] = -scale * level * torch.eye(dim)
        attention.o_proj.weight[:dim, dim:2 * dim] = scale * level * torch.eye(dim)
    if freeze:
        def keep_rows(rows: int) -> Any:
            return lambda grad: torch.cat([torch.zeros_like(grad[:rows]), grad[rows:]])

        for projection, rows in ((attention.q_proj, 2 * dim), (attention.k_proj, dim)):
            projection.weight.register_hook(keep_rows(rows))
            projection.bias.register_hook(keep_rows(rows))
        attention.q_norm.weight.requires_grad_(False)
        attention.k_norm.weight.requires_grad_(False)
    return {"other_patch": other_weight, "self": self_weight}
