"""ONNX Runtime sessions for an exported critic, and the forward passes the generate loop uses.

:class:`OrtGraphs` owns the three ``InferenceSession`` objects, the execution-provider choice
(TensorRT, then CUDA, then CPU, by what this onnxruntime build offers and the device asked for)
and explicit thread settings, and exposes the two forward passes of generation: ``prefill``
(vision + embeddings + decoder over the prompt) and ``decode`` (one new token per row against the
KV cache). Everything is numpy in, numpy out; torch is not imported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firm_lite.errors import UserError, missing_extra
from firm_lite.onnx.host import float_dtype, mrope_positions, place_image_features, vision_inputs
from firm_lite.onnx.layout import GRAPH_FILES, VISION_INPUTS, GraphLayout

# Preferred order; a provider is used only when the installed onnxruntime offers it.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may run on (not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device`` ("cpu" or "cuda[:N]") from those ``available``."""
    if device.startswith("cuda"):
        gpu = [p for p in GPU_PROVIDERS if p in available]
        if "CUDAExecutionProvider" not in gpu:
            raise missing_extra("gpu", "onnxruntime-gpu (CUDA execution provider)")
        return [*gpu, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def provider_options(provider: str, device: str) -> dict[str, str]:
    """Per-provider options: the GPU index of ``cuda:N`` for the GPU providers."""
    if provider in GPU_PROVIDERS:
        _, _, index = device.partition(":")
        return {"device_id": index or "0"}
    return {}


@dataclass
class KVState:
    """What one decode step needs from the previous one."""

    attention_mask: np.ndarray  # [batch, past]
    next_position: np.ndarray  # [batch] position of the next token on all three M-RoPE axes
    past: list[np.ndarray]  # present_key.0, present_value.0, ...


class OrtGraphs:
    """The exported graphs of one folder, loaded into ONNX Runtime sessions."""

    def __init__(self, folder: Path, layout: GraphLayout, device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnx", "onnxruntime") from None
        self.layout = layout
        self.dtype = float_dtype(layout)
        self.threads = threads or default_threads()
        self.providers = providers or choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.sessions: dict[str, Any] = {}
        for name, file in GRAPH_FILES.items():
            path = Path(folder) / file
            if not path.exists():
                raise UserError(f"{folder}: missing {file}; re-export with `firm-lite export onnx`")
            self.sessions[name] = ort.InferenceSession(str(path), sess_options=options, providers=self.providers,
                                                       provider_options=[provider_options(p, device)
                                                                         for p in self.providers])

    @property
    def provenance(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers": self.providers, "intra_op_threads": self.threads}

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed"].run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    def vision(self, pixel_values: np.ndarray, image_grid_thw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image features and stacked deepstack features of every image, one call per image (the
        graph takes any number; one at a time keeps attention memory at the largest image's)."""
        feats, deep, start = [], [], 0
        for grid in np.asarray(image_grid_thw, dtype=np.int64):
            patches = int(np.prod(grid))
            inputs = vision_inputs(grid[None], self.layout)
            inputs["pixel_values"] = pixel_values[start:start + patches].astype(self.dtype)
            start += patches
            f, d = self.sessions["vision"].run(None, {k: inputs[k] for k in VISION_INPUTS})
            feats.append(f)
            deep.append(d)
        if not feats:
            lay = self.layout
            return (np.zeros((0, lay.hidden_size), self.dtype), np.zeros((lay.num_deepstack, 0, lay.hidden_size),
                                                                          self.dtype))
        return np.concatenate(feats, axis=0), np.concatenate(deep, axis=1)

    def decoder(self, inputs_embeds: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                deepstack: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"inputs_embeds": inputs_embeds.astype(self.dtype), "position_ids": position_ids.astype(np.int64),
                "attention_mask": attention_mask.astype(np.int64), "deepstack_embeds": deepstack.astype(self.dtype)}
        feed.update(zip(self.layout.past_names(), past, strict=True))
        logits, *present = self.sessions["decoder"].run(None, feed)
        return logits, present

    def empty_past(self, batch: int) -> list[np.ndarray]:
        lay = self.layout
        return [np.zeros((batch, lay.num_kv_heads, 0, lay.head_dim), self.dtype)] * (2 * lay.num_layers)

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray | None = None,
                image_grid_thw: np.ndarray | None = None, mm_token_type_ids: np.ndarray | None = None
                ) -> tuple[np.ndarray, KVState]:
        """Logits of the last prompt position ``[batch, vocab]`` and the state to decode from."""
        embeds = self.embed(input_ids)
        if pixel_values is not None and image_grid_thw is not None and len(image_grid_thw):
            feats, deep = self.vision(pixel_values, image_grid_thw)
        else:
            feats = np.zeros((0, self.layout.hidden_size), self.dtype)
            deep = np.zeros((self.layout.num_deepstack, 0, self.layout.hidden_size), self.dtype)
        embeds, dense_deep = place_image_features(embeds, input_ids, feats, deep, self.layout)
        positions, next_position = mrope_positions(input_ids, attention_mask, image_grid_thw, self.layout,
                                                   mm_token_type_ids)
        logits, present = self.decoder(embeds, positions, attention_mask, dense_deep,
                                       self.empty_past(input_ids.shape[0]))
        return logits, KVState(attention_mask.astype(np.int64), next_position, present)

    def decode(self, tokens: np.ndarray, state: KVState) -> tuple[np.ndarray, KVState]:
        """Feed one token per row (``tokens``: [batch]); logits ``[batch, vocab]`` and new state."""
        batch = tokens.shape[0]
        mask = np.concatenate([state.attention_mask, np.ones((batch, 1), np.int64)], axis=1)
        positions = np.broadcast_to(state.next_position[None, :, None], (3, batch, 1))
        deep = np.zeros((self.layout.num_deepstack, batch, 1, self.layout.hidden_size), self.dtype)
        logits, present = self.decoder(self.embed(tokens[:, None]), positions, mask, deep, state.past)
        return logits, KVState(mask, state.next_position + 1, present)
