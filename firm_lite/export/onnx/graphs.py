"""The three exportable pieces of a Qwen3-VL critic, and their ``torch.onnx`` export.

Qwen3-VL does not export as one graph: the vision encoder's grid bookkeeping (interpolated
position embeddings, rotary positions, ``cu_seqlens``) is data-dependent Python, placeholder
tokens are replaced by image features with a boolean scatter, and generation needs a KV cache.
So the critic is cut into three graphs whose inputs are plain dense tensors:

* ``embed``: token ids -> embeddings.
* ``vision``: flattened patches plus the host-computed grid tensors -> image features and the
  deepstack features (one per deepstack layer), stacked. Attention runs as one block-diagonal
  SDPA (:mod:`firm_lite.export.onnx.patches`), so any number of images of any sizes go in one call.
* ``decoder``: embeddings (image features already in place), 3-D M-RoPE position ids, the 2-D
  attention mask over past + new tokens, deepstack features as a dense tensor (zeros off image
  tokens, so adding it is exactly the model's masked add) and the past KV cache -> logits of the
  last position and the present KV cache.

The wrappers call the model's own submodules (decoder layers, rotary embedding, vision forward
with precomputed grid tensors), so the math is transformers' own; only the glue lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from firm_lite.onnx.layout import EMBED_INPUTS, EMBED_OUTPUTS, VISION_INPUTS, VISION_OUTPUTS, GraphLayout


def _modules() -> Any:
    import torch

    class EmbedGraph(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.embed_tokens = model.model.language_model.embed_tokens

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.embed_tokens(input_ids)

    class VisionGraph(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.visual = model.model.visual

        def forward(self, pixel_values: torch.Tensor, interp_indices: torch.Tensor, interp_weights: torch.Tensor,
                    rotary_position_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # grid_thw is not needed: every tensor derived from it is passed precomputed.
            out = self.visual(pixel_values, grid_thw=None, interp_indices=interp_indices,
                              interp_weights=interp_weights, position_ids=rotary_position_ids,
                              cu_seqlens=cu_seqlens, return_dict=True)
            return out.pooler_output, torch.stack(list(out.deepstack_features), dim=0)

    class GraphKV:
        """The slice of transformers' Cache API the decoder layers call: concat past with new."""

        def __init__(self, past: tuple[torch.Tensor, ...]) -> None:
            self.past = past
            self.present: list[torch.Tensor] = [past[0]] * len(past)

        def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            key = torch.cat([self.past[2 * layer_idx], key], dim=2)
            value = torch.cat([self.past[2 * layer_idx + 1], value], dim=2)
            self.present[2 * layer_idx], self.present[2 * layer_idx + 1] = key, value
            return key, value

    class DecoderGraph(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.text = model.model.language_model
            self.lm_head = model.lm_head

        def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                    deepstack_embeds: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            new, total = inputs_embeds.shape[1], attention_mask.shape[1]
            query_pos = torch.arange(new, device=inputs_embeds.device) + (total - new)
            key_pos = torch.arange(total, device=inputs_embeds.device)
            causal = key_pos[None, :] <= query_pos[:, None]
            # A query always sees itself, so left-padding rows are never fully masked (no NaN that
            # would reach real tokens through the value vectors); real tokens never see padding.
            itself = key_pos[None, :] == query_pos[:, None]
            allowed = (causal[None] & attention_mask[:, None, :].bool()) | itself[None]
            mask = allowed[:, None]  # [batch, 1, new, total], True = attend
            position_embeddings = self.text.rotary_emb(inputs_embeds, position_ids)
            cache = GraphKV(past)
            hidden = inputs_embeds
            for i, layer in enumerate(self.text.layers):
                hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, cache=cache)
                if i < deepstack_embeds.shape[0]:
                    hidden = hidden + deepstack_embeds[i]
            # last position kept 3-D so lm_head exports as a MatMul (quantizable like the others)
            logits = self.lm_head(self.text.norm(hidden[:, -1:]))[:, 0]
            return (logits, *cache.present)

    return EmbedGraph, VisionGraph, DecoderGraph


def example_inputs(model: Any, layout: GraphLayout) -> dict[str, tuple[Any, ...]]:
    """Small tracing inputs, with every dynamic dimension >= 2 and distinct (export specialises 0/1)."""
    import torch

    from firm_lite.onnx.host import vision_inputs

    dtype = next(model.parameters()).dtype
    merge = layout.spatial_merge_size
    grid = torch.tensor([[1, 2 * merge, 3 * merge], [1, 2 * merge, 2 * merge]])
    vis = vision_inputs(grid.numpy(), layout)
    patches = vis["interp_indices"].shape[0]
    batch, new, past = 2, 5, 3
    embeds = torch.randn(batch, new, layout.hidden_size, dtype=dtype)
    past_kv = [torch.randn(batch, layout.num_kv_heads, past, layout.head_dim, dtype=dtype)
               for _ in range(2 * layout.num_layers)]
    return {
        "embed": (torch.randint(0, layout.vocab_size, (batch, new)),),
        "vision": (torch.randn(patches, layout.patch_dim, dtype=dtype), torch.from_numpy(vis["interp_indices"]),
                   torch.from_numpy(vis["interp_weights"]).to(dtype), torch.from_numpy(vis["rotary_position_ids"]),
                   torch.from_numpy(vis["cu_seqlens"])),
        "decoder": (embeds, torch.arange(new).view(1, 1, -1).expand(3, batch, -1) + past,
                    torch.ones(batch, past + new, dtype=torch.int64),
                    torch.zeros(layout.num_deepstack, batch, new, layout.hidden_size, dtype=dtype), *past_kv),
    }


def dynamic_shapes(layout: GraphLayout) -> dict[str, Any]:
    from torch.export import Dim

    batch, new, past = Dim("batch", min=1, max=1024), Dim("sequence", min=1, max=262144), Dim("past", max=262144)
    tokens = Dim("image_tokens", min=1, max=1 << 20)
    patches = tokens * layout.merge_unit  # the merger folds merge_unit patches into one token
    images = Dim("images_plus_one", min=2, max=4097)
    kv = {2: past, 0: batch}
    return {
        "embed": ({0: batch, 1: new},),
        "vision": ({0: patches}, {0: patches}, {0: patches}, {0: patches}, {0: images}),
        "decoder": ({0: batch, 1: new}, {1: batch, 2: new}, {0: batch, 1: Dim.AUTO}, {1: batch, 2: new},
                    tuple([kv] * (2 * layout.num_layers))),
    }


def io_names(layout: GraphLayout) -> dict[str, tuple[list[str], list[str]]]:
    return {"embed": (list(EMBED_INPUTS), list(EMBED_OUTPUTS)),
            "vision": (list(VISION_INPUTS), list(VISION_OUTPUTS)),
            "decoder": (layout.decoder_inputs(), layout.decoder_outputs())}


# Graph I/O dims torch.export leaves unnamed (sNN), named for people reading the graphs.
_DIM_NAMES = {("decoder", "attention_mask", 1): "past_plus_sequence",
              ("vision", "image_embeds", 0): "image_tokens", ("vision", "deepstack_embeds", 1): "image_tokens"}


def _name_dims(program: Any, graph: str) -> None:
    import re

    import onnx_ir as ir

    for value in [*program.model.graph.inputs, *program.model.graph.outputs]:
        if value.shape is None:
            continue
        dims = list(value.shape.dims)
        for axis, dim in enumerate(dims):
            name = _DIM_NAMES.get((graph, value.name, axis))
            if name and isinstance(dim, ir.SymbolicDim) and re.fullmatch(r"s\d+", str(dim.value or "")):
                dims[axis] = ir.SymbolicDim(name)
        value.shape = ir.Shape(dims)


def export_graphs(model: Any, layout: GraphLayout, out_dir: Path, opset: int = 18,
                  on_graph: Any = None) -> dict[str, Path]:
    """Export embed, vision and decoder of ``model`` into ``out_dir``; returns name -> path."""
    import warnings

    import torch

    from firm_lite.export.onnx.patches import export_patches
    from firm_lite.onnx.layout import GRAPH_FILES

    embed_cls, vision_cls, decoder_cls = _modules()
    wrappers = {"embed": embed_cls(model), "vision": vision_cls(model), "decoder": decoder_cls(model)}
    examples, dyn, names = example_inputs(model, layout), dynamic_shapes(layout), io_names(layout)
    paths: dict[str, Path] = {}
    with export_patches(model), torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # torch.onnx warns once per axis that shares a constraint with another (expected here)
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
        for name, wrapper in wrappers.items():
            if on_graph:
                on_graph(name)
            inputs, outputs = names[name]
            program = torch.onnx.export(wrapper.eval(), examples[name], None, input_names=inputs,
                                        output_names=outputs, opset_version=opset, dynamo=True,
                                        dynamic_shapes=dyn[name], optimize=True, verbose=False)
            _name_dims(program, name)
            path = Path(out_dir) / GRAPH_FILES[name]
            program.save(str(path), external_data=None)  # external data only past 2 GB
            paths[name] = path
    return paths
