"""firm-lite's vLLM model class for Qwen3-VL critics: vLLM's own Qwen3-VL, loading every tensor.

Imported only by vLLM (through the model registry entry that :mod:`firm_lite.vllm_backend.plugin`
adds), in every vLLM process, so it may import vLLM at the top. Two differences from vLLM's
``Qwen3VLForConditionalGeneration``, both about loading the checkpoint that was asked for:

1. When the text config sets ``attention_bias``, each text attention's ``o_proj`` gets a bias, as
   in transformers' Qwen3 (``o_proj = Linear(..., bias=config.attention_bias)``). vLLM's Qwen3
   attention builds ``o_proj`` without one and its loader silently skips ``o_proj.bias``; the
   bundled tiny critic has a non-zero one (its comparison heads), FIRM-Edit-8B has none, so for
   the 8B this class is vLLM's model unchanged.
2. ``load_weights`` runs under a :class:`~firm_lite.vllm_backend.weights.WeightAudit`, and a load
   that leaves a non-zero checkpoint tensor unused fails right there, before vLLM profiles,
   compiles or allocates anything (``vllm serve`` of such a checkpoint does not start). The audit
   is also written where :data:`~firm_lite.vllm_backend.plugin.AUDIT_FILE_ENV` says, for
   firm-lite's engine to record it, or to turn the refusal into one line in its own process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models.qwen3 import Qwen3Attention
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

from firm_lite.vllm_backend.plugin import AUDIT_FILE_ENV
from firm_lite.vllm_backend.weights import WeightAudit


class FirmLiteQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with the ``o_proj`` bias the config asks for and audited weight loading."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.o_proj_biases = 0
        if getattr(vllm_config.model_config.hf_config.get_text_config(), "attention_bias", False):
            self.o_proj_biases = _add_o_proj_bias(self)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        audit = WeightAudit()
        with audit.watching(self):
            loaded = super().load_weights(audit.feed(weights))
        target = os.environ.get(AUDIT_FILE_ENV)
        if target:
            _write_json(Path(target), {**audit.as_record(), "o_proj_biases_added": self.o_proj_biases})
        audit.check()
        return loaded


def _add_o_proj_bias(model: torch.nn.Module) -> int:
    """Rebuild every text attention's ``o_proj`` with a bias (same shape, dtype, quantization).

    Runs inside the model's constructor, so vLLM's default dtype and device contexts apply and
    the weights are loaded (and the model compiled) afterwards as for any other layer."""
    count = 0
    for module in model.modules():
        if isinstance(module, Qwen3Attention) and not module.o_proj.has_bias:
            old = module.o_proj
            module.o_proj = RowParallelLinear(old.input_size, old.output_size, bias=True,
                                              params_dtype=old.params_dtype, quant_config=old.quant_config,
                                              prefix=old.prefix)
            count += 1
    return count


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record), "utf-8")
    os.replace(tmp, path)
