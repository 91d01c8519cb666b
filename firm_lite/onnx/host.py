"""Host-side tensors the exported graphs take as inputs (numpy in, numpy out).

What Qwen3-VL computes with data-dependent Python is done here, outside the graphs, once per
request: the vision grid tensors (interpolation taps of the learned position grid, rotary
positions, ``cu_seqlens``; computed by transformers' own ``vision_utils`` helpers, the very code
the PyTorch model runs), the 3-D M-RoPE position ids of a prompt (a numpy port of
``Qwen3VLModel.get_rope_index`` for image prompts, checked against it in the tests), and the
placement of image and deepstack features at the image-placeholder tokens.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

import numpy as np

from firm_lite.onnx.layout import GraphLayout

_FLOAT = {"fp32": np.float32, "fp16": np.float16}


def float_dtype(layout: GraphLayout) -> Any:
    return _FLOAT[layout.dtype]


def vision_inputs(grid_thw: np.ndarray, layout: GraphLayout) -> dict[str, np.ndarray]:
    """Grid tensors of the ``vision`` graph for images with (t, h, w) patch grids ``grid_thw``."""
    import torch
    from transformers.vision_utils import (
        get_vision_cu_seqlens,
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    grid = torch.as_tensor(np.asarray(grid_thw, dtype=np.int64))
    indices, weights = get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=layout.num_grid_per_side, mode=layout.interpolation_mode,
        align_corners=layout.interpolation_align_corners, spatial_merge_size=layout.spatial_merge_size)
    return {
        "interp_indices": indices.numpy().astype(np.int64),
        "interp_weights": weights.numpy().astype(float_dtype(layout)),
        "rotary_position_ids": get_vision_position_ids(grid, layout.spatial_merge_size).numpy().astype(np.int64),
        "cu_seqlens": get_vision_cu_seqlens(grid).numpy().astype(np.int32),
    }


def mrope_positions(input_ids: np.ndarray, attention_mask: np.ndarray, image_grid_thw: np.ndarray | None,
                    layout: GraphLayout, mm_token_type_ids: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """3-D position ids ``[3, batch, seq]`` of a (left-padded) prompt batch and, per row, the
    next free position (where the first generated token goes); padding positions stay 0."""
    if mm_token_type_ids is None:
        mm_token_type_ids = (input_ids == layout.image_token_id).astype(np.int64)
    batch, seq = input_ids.shape
    positions = np.zeros((3, batch, seq), dtype=np.int64)
    next_position = np.zeros(batch, dtype=np.int64)
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    merge = layout.spatial_merge_size
    for row in range(batch):
        keep = attention_mask[row].astype(bool)
        kinds = mm_token_type_ids[row][keep].tolist()
        pieces, current = [], 0
        for kind, run in groupby(kinds):
            length = len(list(run))
            if kind == 0:
                pieces.append(np.broadcast_to(np.arange(length) + current, (3, length)))
                current += length
                continue
            if kind != 1:
                raise ValueError("video placeholders are not supported by the ONNX critic")
            t, h, w = next(grids)
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij")
            piece = np.stack([tt, hh, ww]).reshape(3, -1) + current
            if piece.shape[1] != length:
                raise ValueError(f"image grid {t}x{h}x{w} does not match {length} placeholder tokens")
            pieces.append(piece)
            current += max(h, w) // merge
        row_positions = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), dtype=np.int64)
        positions[:, row, keep] = row_positions
        next_position[row] = row_positions.max() + 1 if row_positions.size else 0
    return positions, next_position


def place_image_features(inputs_embeds: np.ndarray, input_ids: np.ndarray, image_embeds: np.ndarray,
                         deepstack: np.ndarray, layout: GraphLayout) -> tuple[np.ndarray, np.ndarray]:
    """Put image features at the placeholder tokens (row-major order, as the model's
    ``masked_scatter``) and return the embeddings and the dense ``[n_deepstack, batch, seq,
    hidden]`` deepstack input (zeros elsewhere)."""
    mask = input_ids == layout.image_token_id
    batch, seq = input_ids.shape
    dense = np.zeros((layout.num_deepstack, batch, seq, layout.hidden_size), dtype=inputs_embeds.dtype)
    if int(mask.sum()) != image_embeds.shape[0]:
        raise ValueError(f"{int(mask.sum())} image placeholder tokens but {image_embeds.shape[0]} image features")
    if image_embeds.shape[0]:
        inputs_embeds = inputs_embeds.copy()
        inputs_embeds[mask] = image_embeds.astype(inputs_embeds.dtype)
        dense[:, mask] = deepstack.astype(inputs_embeds.dtype)
    return inputs_embeds, dense
