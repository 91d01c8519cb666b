"""The contract between the exported graphs and everything that runs them.

Graph file names, input/output names and the model geometry the host side needs (layer count,
KV-cache shape, deepstack depth, vision interpolation settings, special token ids) are defined
once here and recorded in the variant manifest, so the export, the ONNX Runtime backend and the
TensorRT builder agree without importing torch or loading the PyTorch model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

GRAPH_FILES: dict[str, str] = {"embed": "embed.onnx", "vision": "vision.onnx", "decoder": "decoder.onnx"}
VISION_INPUTS = ("pixel_values", "interp_indices", "interp_weights", "rotary_position_ids", "cu_seqlens")
VISION_OUTPUTS = ("image_embeds", "deepstack_embeds")
EMBED_INPUTS = ("input_ids",)
EMBED_OUTPUTS = ("inputs_embeds",)
DECODER_FIXED_INPUTS = ("inputs_embeds", "position_ids", "attention_mask", "deepstack_embeds")


@dataclass(frozen=True)
class GraphLayout:
    """Geometry of one exported critic; ``as_record``/``from_record`` round-trip through JSON."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_deepstack: int
    patch_dim: int  # flattened pixel_values row: channels * temporal_patch * patch * patch
    spatial_merge_size: int
    num_grid_per_side: int
    interpolation_mode: str
    interpolation_align_corners: bool
    image_token_id: int
    video_token_id: int
    dtype: str = "fp32"  # float dtype of graph inputs/outputs: fp32 or fp16

    @classmethod
    def from_model(cls, model: Any, dtype: str = "fp32") -> GraphLayout:
        cfg = model.config
        text, vision, visual = cfg.text_config, cfg.vision_config, model.model.visual
        return cls(
            num_layers=text.num_hidden_layers, num_kv_heads=text.num_key_value_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            hidden_size=text.hidden_size, vocab_size=text.vocab_size,
            num_deepstack=len(vision.deepstack_visual_indexes),
            patch_dim=vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2,
            spatial_merge_size=vision.spatial_merge_size, num_grid_per_side=visual.num_grid_per_side,
            interpolation_mode=visual.interpolation_mode,
            interpolation_align_corners=bool(visual.interpolation_align_corners),
            image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id, dtype=dtype)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GraphLayout:
        known = {f.name for f in fields(cls)}
        unknown = set(record) - known
        if unknown:
            raise ValueError(f"unknown graph layout keys {sorted(unknown)} (exported by a newer firm-lite?)")
        return cls(**record)

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @property
    def interpolation_taps(self) -> int:
        """Taps per patch of the position-grid interpolation (2x2 bilinear, 4x4 bicubic)."""
        return {"bilinear": 4, "bicubic": 16}[self.interpolation_mode]

    def past_names(self) -> list[str]:
        return [f"past_{kv}.{i}" for i in range(self.num_layers) for kv in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present_{kv}.{i}" for i in range(self.num_layers) for kv in ("key", "value")]

    def decoder_inputs(self) -> list[str]:
        return [*DECODER_FIXED_INPUTS, *self.past_names()]

    def decoder_outputs(self) -> list[str]:
        return ["logits", *self.present_names()]
