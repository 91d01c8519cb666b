"""GPTQ variants: exported GPTQ checkpoints (4- or 8-bit), loaded the standard way.

A ``firm-lite export gptq`` folder is a plain GPTQ checkpoint (``quantization_config`` in
config.json), so it loads through transformers' own GPTQ path (optimum + gptqmodel kernels:
Marlin/ExLlama on GPUs, torch kernels on CPU), the same path any other user of the checkpoint
takes; vLLM loads the folder too. This module adds only what firm-lite owes the user: the
weights are verified against the provenance manifest first, and a missing extra is one line.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from firm_lite.errors import missing_extra
from firm_lite.variants.registry import LoadRequest, VariantSpec, register


def require_gptq() -> None:
    """One-line error when the gptq extra is missing (checked without importing it: slow)."""
    from importlib.util import find_spec

    for package in ("gptqmodel", "optimum"):
        if find_spec(package) is None:
            raise missing_extra("gptq", package)


def load_gptq_folder(request: LoadRequest) -> tuple[Any, Any]:
    """Verify, then ``from_pretrained`` with unquantized parts at ``request.dtype``."""
    from firm_lite.artifact import check_exported_folder

    check_exported_folder(request.folder, "gptq")
    require_gptq()
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(request.folder)
    # gptqmodel prints its banner and kernel choice on stdout, where `score --json` writes JSON.
    with contextlib.redirect_stdout(sys.stderr):
        model = Qwen3VLForConditionalGeneration.from_pretrained(request.folder, dtype=request.dtype,
                                                                device_map={"": str(request.device)})
    if request.device.type == "cpu":
        eager_dequantize(model)
    return model.eval(), processor


def eager_dequantize(model: Any) -> int:
    """Undo the ``torch.compile`` gptqmodel wraps its CPU dequantize in. On CPU that compile runs
    TorchInductor's C++ build at the first forward (tens of seconds to minutes, cached under
    /tmp), for a speed-up a CPU critic does not need; eager gives the same numbers. Returns how
    many layers were switched back."""
    switched = 0
    for module in model.modules():
        compiled = vars(module).get("dequantize_weight")
        if compiled is not None and hasattr(compiled, "_torchdynamo_orig_callable"):
            del vars(module)["dequantize_weight"]  # the class's own (eager) method takes over
            switched += 1
    return switched


register(VariantSpec("gptq", "gptq", "exported GPTQ folder, 4- or 8-bit (firm-lite export gptq)",
                     load_gptq_folder, weight_bits=4, accuracy_rank=20, extra="gptq", from_folder=True))
