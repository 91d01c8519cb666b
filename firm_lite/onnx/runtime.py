"""ONNX Runtime sessions for an exported critic, and the forward passes the generate loop uses.

:class:`OrtGraphs` owns the three ``InferenceSession`` objects (providers chosen and checked by
:mod:`firm_lite.onnx.providers`), explicit thread settings, and the two forward passes of
generation: ``prefill`` (vision + embeddings + decoder over the prompt) and ``decode`` (one new
token per row against the KV cache). Inputs are numpy; torch is not imported here.

On CUDA the KV cache never leaves the device: the decoder runs with IO binding, its ``present``
outputs are bound to device memory and fed back as the next step's ``past`` inputs (ONNX Runtime
``OrtValue`` objects), and only the logits come back to the host. Without it, every decode step
would copy the whole cache to the host and back (about 1.8 GiB each way per token for four 8B rows
at 1024x1024 in fp16). The same binding path runs on CPU when asked (``io_binding=True``), which
is how it is tested without a GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firm_lite.errors import UserError, missing_extra
from firm_lite.onnx.host import float_dtype, mrope_positions, place_image_features, vision_inputs
from firm_lite.onnx.layout import GRAPH_FILES, VISION_INPUTS, GraphLayout
from firm_lite.onnx.providers import (
    CUDA,
    TENSORRT,
    ProviderPlan,
    choose_providers,
    device_index,
    folder_tensorrt_options,
    installed_onnxruntimes,
    open_session,
)

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may run on (not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class KVState:
    """What one decode step needs from the previous one."""

    attention_mask: np.ndarray  # [batch, past]
    next_position: np.ndarray  # [batch] position of the next token on all three M-RoPE axes
    past: list[Any]  # present_key.0, present_value.0, ...: numpy arrays, or OrtValues on the KV device


@dataclass
class SessionReport:
    """What each graph's session really runs on, and why anything asked for is not used."""

    requested: list[str]
    actual: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class OrtGraphs:
    """The exported graphs of one folder, loaded into ONNX Runtime sessions.

    ``providers``: an explicit provider list (no checks); ``tensorrt``: None uses TensorRT when
    the folder was prepared with ``firm-lite export tensorrt``, False never; ``io_binding``: None
    binds the KV cache to the device when the decoder runs on CUDA."""

    def __init__(self, folder: Path, layout: GraphLayout, device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, tensorrt: bool | None = None, io_binding: bool | None = None,
                 session_factory: Any = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnx", "onnxruntime") from None
        self.layout = layout
        self.dtype = float_dtype(layout)
        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        trt = None if tensorrt is False or not device.startswith("cuda") else folder_tensorrt_options(Path(folder))
        self.sessions: dict[str, Any] = {}
        self.report = SessionReport(requested=[])
        factory = session_factory or ort.InferenceSession
        for name, file in GRAPH_FILES.items():
            path = Path(folder) / file
            if not path.exists():
                raise UserError(f"{folder}: missing {file}; re-export with `firm-lite export onnx`")
            if providers:
                plan = ProviderPlan(tuple(providers), tuple({} for _ in providers))
            else:
                from firm_lite.device import tensorrt_libraries_present

                wants = trt.get(name) if trt else None
                plan = choose_providers(device, ort.get_available_providers(), wants,
                                        tensorrt_libraries_present() if wants else True,
                                        installed_onnxruntimes() if device.startswith("cuda") else ())
            self.report.requested = list(plan.providers)
            for note in plan.notes:
                if note not in self.report.notes:
                    log.warning("%s", note)
                    self.report.notes.append(note)
            session, actual, notes = open_session(path, options, plan, factory)
            self.sessions[name], self.report.actual[name] = session, actual
            self.report.notes += notes
        on_cuda = CUDA in self.report.actual["decoder"] or TENSORRT in self.report.actual["decoder"]
        self.kv_device = ("cuda", int(device_index(device))) if on_cuda else ("cpu", 0)
        self.io_binding = on_cuda if io_binding is None else io_binding

    @property
    def provenance(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers_requested": self.report.requested,
                "providers": self.report.actual, "provider_notes": self.report.notes,
                "kv_cache": f"{self.kv_device[0]}:{self.kv_device[1]}" if self.io_binding else "host (numpy)",
                "intra_op_threads": self.threads}

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
                deepstack: np.ndarray, past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        feed = {"inputs_embeds": inputs_embeds.astype(self.dtype), "position_ids": position_ids.astype(np.int64),
                "attention_mask": attention_mask.astype(np.int64), "deepstack_embeds": deepstack.astype(self.dtype)}
        if self.io_binding:
            return self._bound_decoder(feed, past)
        feed.update(zip(self.layout.past_names(), past, strict=True))
        logits, *present = self.sessions["decoder"].run(None, feed)
        return logits, present

    def _bound_decoder(self, feed: dict[str, np.ndarray], past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One decoder call with the KV cache bound to the KV device: ``past`` (OrtValues there,
        or empty host arrays at prefill) in, ``present`` OrtValues there out, logits to the host."""
        session = self.sessions["decoder"]
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.layout.past_names(), past, strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        kind, index = self.kv_device
        for name in self.layout.present_names():
            binding.bind_output(name, kind, index)
        session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

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
