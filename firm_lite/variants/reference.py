"""Reference-precision variants: the checkpoint as published, in bf16, fp16 or fp32.

``bf16`` is what the reference vLLM server runs; ``fp32`` is the exact reference on CPU and the
baseline that drift is measured against when no GPU is at hand.
"""

from __future__ import annotations

from typing import Any

from firm_lite.variants.registry import LoadRequest, VariantSpec, register


def load_reference(request: LoadRequest, dtype: Any = None) -> tuple[Any, Any]:
    """Plain transformers load of the checkpoint at ``dtype`` on ``request.device``."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    path = request.folder or request.source.path
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=dtype or request.dtype)
    model.to(request.device).eval()
    return model, processor


def _fixed(dtype_name: str):
    def load(request: LoadRequest) -> tuple[Any, Any]:
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        return load_reference(request, dtype)
    return load


register(VariantSpec("fp32", "reference", "checkpoint in float32 (exact reference on CPU)",
                     _fixed("fp32"), weight_bits=32, accuracy_rank=0))
register(VariantSpec("bf16", "reference", "checkpoint in bfloat16 (what the reference server runs)",
                     _fixed("bf16"), weight_bits=16, accuracy_rank=1))
register(VariantSpec("fp16", "reference", "checkpoint in float16 (GPUs without bf16)",
                     _fixed("fp16"), weight_bits=16, accuracy_rank=2))
register(VariantSpec("default", "reference", "checkpoint at --dtype (bf16 on GPU, fp32 on CPU)",
                     load_reference, weight_bits=16, accuracy_rank=1))
