"""A stand-in for ``Qwen3VLForConditionalGeneration`` (``generate`` and a teacher-forcing
forward) over ONNX Runtime sessions.

:func:`firm_lite.generation.generate_answers` is the one scoring core: prompt batch in, greedy
answers with a per-row JSON-closed stop and the raw-logit score read-out out. It calls
``model.generate(**processor_inputs, ...)`` and reads ``out.sequences`` and ``out.logits``. This
module implements exactly that subset of Hugging Face greedy search, step for step (raw float32
logits recorded per step, argmax, finished rows continued with the pad token when an EOS is
configured, stopping criteria called on the full sequences), so the ONNX variant reuses the core
unchanged. Anything else (sampling, logits processors) is refused rather than silently ignored.

Calibration's teacher forcing (:mod:`firm_lite.teacher_forcing`) calls the model itself on prompt
+ answer with ``logits_to_keep=[position]``; :meth:`OrtGenerationModel.__call__` answers that with
a prefill cut after the kept position (causal attention: later tokens cannot change it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firm_lite.errors import UserError
from firm_lite.onnx.runtime import OrtGraphs

# Generation-config settings that would add a logits processor to HF's greedy search.
_PROCESSOR_KEYS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                   "min_new_tokens": 0, "min_length": 0, "bad_words_ids": None, "suppress_tokens": None,
                   "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                   "sequence_bias": None, "exponential_decay_length_penalty": None}
_ACCEPTED = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids",
             "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "stopping_criteria",
             "output_logits", "return_dict_in_generate", "pad_token_id", "eos_token_id"}


def check_generation_config(config: dict[str, Any], where: str) -> None:
    """Refuse a generation config whose greedy search HF would alter with a logits processor."""
    active = [k for k, neutral in _PROCESSOR_KEYS.items() if config.get(k, neutral) not in (neutral, None, [])]
    if active:
        raise UserError(f"{where}: generation_config.json sets {', '.join(active)}; the ONNX critic "
                        "reproduces plain greedy decoding only (remove them from the exported folder)")


@dataclass
class GenerateOutput:
    """The two fields of HF's ``GenerateDecoderOnlyOutput`` that scoring reads."""

    sequences: Any  # torch.LongTensor [batch, prompt + generated]
    logits: tuple[Any, ...]  # one float32 [batch, vocab] tensor per generated step


def _as_numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


class OrtGenerationModel:
    """The ``model`` a critic holds when its variant is an exported ONNX folder."""

    device = "cpu"  # where processor outputs go: the host side is numpy on CPU whatever the provider

    def __init__(self, graphs: OrtGraphs, generation_config: dict[str, Any]) -> None:
        self.graphs = graphs
        self.generation_config = generation_config
        eos = generation_config.get("eos_token_id")
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])

    @classmethod
    def from_folder(cls, folder: Path, graphs: OrtGraphs) -> OrtGenerationModel:
        path = Path(folder) / "generation_config.json"
        config = json.loads(path.read_text("utf-8")) if path.exists() else {}
        check_generation_config(config, str(path))
        return cls(graphs, config)

    def eval(self) -> OrtGenerationModel:
        return self

    def __call__(self, input_ids: Any, attention_mask: Any = None, pixel_values: Any = None,
                 image_grid_thw: Any = None, mm_token_type_ids: Any = None, logits_to_keep: Any = 1,
                 use_cache: bool = False, token_type_ids: Any = None) -> Any:
        """Logits ``[batch, n, vocab]`` at the positions ``logits_to_keep`` names (a tensor of
        positions, or ``1`` for the last one), as the transformers forward returns them."""
        import types

        import torch

        ids = _as_numpy(input_ids).astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask).astype(np.int64)
        types_ = _as_numpy(mm_token_type_ids)
        if isinstance(logits_to_keep, int):
            if logits_to_keep != 1:
                raise ValueError("the ONNX critic keeps the last position only (logits_to_keep=1) or given positions")
            positions = [ids.shape[1] - 1]
        else:
            positions = [int(p) for p in _as_numpy(logits_to_keep).reshape(-1)]
        kept = []
        for p in positions:
            cut = p + 1
            logits, _ = self.graphs.prefill(ids[:, :cut], mask[:, :cut], _as_numpy(pixel_values),
                                            _as_numpy(image_grid_thw), None if types_ is None else types_[:, :cut])
            kept.append(np.asarray(logits, dtype=np.float32))
        return types.SimpleNamespace(logits=torch.from_numpy(np.stack(kept, axis=1)))

    def generate(self, **kwargs: Any) -> GenerateOutput:
        """Greedy search as HF runs it for ``firm_lite.generation`` (see module docstring)."""
        import torch

        unknown = set(kwargs) - _ACCEPTED
        if unknown:
            raise TypeError(f"OrtGenerationModel.generate does not support {sorted(unknown)}")
        if kwargs.get("do_sample"):
            raise ValueError("the ONNX critic decodes greedily only (do_sample=False)")
        input_ids = _as_numpy(kwargs["input_ids"]).astype(np.int64)
        attention_mask = _as_numpy(kwargs.get("attention_mask"))
        attention_mask = np.ones_like(input_ids) if attention_mask is None else attention_mask.astype(np.int64)
        max_new_tokens = int(kwargs.get("max_new_tokens") or self.generation_config.get("max_new_tokens") or 20)
        pad = kwargs.get("pad_token_id", self.generation_config.get("pad_token_id"))
        eos = kwargs.get("eos_token_id")
        eos_ids = ([eos] if isinstance(eos, int) else list(eos)) if eos is not None else self.eos_token_ids
        if eos_ids and pad is None:
            raise ValueError("pad_token_id is needed to continue finished rows")
        stoppers = list(kwargs.get("stopping_criteria") or [])

        logits, state = self.graphs.prefill(input_ids, attention_mask, _as_numpy(kwargs.get("pixel_values")),
                                            _as_numpy(kwargs.get("image_grid_thw")),
                                            _as_numpy(kwargs.get("mm_token_type_ids")))
        sequences = torch.from_numpy(input_ids)
        unfinished = np.ones(input_ids.shape[0], dtype=bool)
        raw_logits: list[Any] = []
        for step in range(max_new_tokens):
            if step:
                logits, state = self.graphs.decode(sequences[:, -1].numpy(), state)
            step_logits = torch.from_numpy(np.asarray(logits, dtype=np.float32).copy())
            raw_logits.append(step_logits)
            tokens = step_logits.argmax(dim=-1).numpy()
            if eos_ids:
                tokens = np.where(unfinished, tokens, pad)
            sequences = torch.cat([sequences, torch.from_numpy(tokens)[:, None]], dim=-1)
            done = np.isin(tokens, eos_ids) if eos_ids else np.zeros_like(unfinished)
            for stopper in stoppers:
                done |= np.asarray(_as_numpy(stopper(sequences, step_logits)), dtype=bool)
            unfinished &= ~done
            if not unfinished.any():
                break
        return GenerateOutput(sequences=sequences, logits=tuple(raw_logits))
