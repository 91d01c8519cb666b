"""GPTQ variants: exported GPTQ checkpoints (4- or 8-bit), loaded the standard way.

A ``firm-lite export gptq`` folder is a plain GPTQ checkpoint (``quantization_config`` in
config.json), so it loads through transformers' own GPTQ path (optimum + gptqmodel kernels), the
same path any other user of the checkpoint takes; vLLM loads the folder too. This module adds what
firm-lite owes the user: the weights are verified against the provenance manifest first, a missing
extra is one line, and on CUDA the kernel is chosen, not left to chance.

gptqmodel's own choice on Ampere and later is Marlin, which it JIT-builds on the user's machine
(nvcc and CUDA headers needed; minutes on first use, cached after; a failed build raises with no
fallback), and on Turing Marlin refuses bf16. :func:`gptq_kernel_plan` orders the kernels from
what the machine reports (compute capability, nvcc, Triton, dtype), and the loader tries them in
that order, saying in one line why it moved on: Marlin when it can be built, then Triton (its own
compiler ships in the wheel: nothing to build on the user's side), then gptqmodel's plain torch
kernel. vLLM's precompiled Marlin is the vLLM backend's (``firm_lite.vllm_backend``): the record
says so when vLLM is installed.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from firm_lite.errors import UserError, missing_extra
from firm_lite.variants.registry import BACKEND_RECORD, LoadRequest, VariantSpec, register

log = logging.getLogger(__name__)

MARLIN, TRITON, TORCH = "gptq_marlin", "gptq_triton", "gptq_torch"
# What a kernel that cannot be built or used raises while the model loads (gptqmodel validation,
# torch.utils.cpp_extension builds, missing CUDA libraries): the loader moves to the next kernel.
KERNEL_ERRORS = (RuntimeError, ValueError, ImportError, NotImplementedError, OSError, subprocess.SubprocessError)


def gptq_kernel_plan(report: Any, device_index: int, dtype: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Kernels to try on CUDA device ``device_index``, best first, each with why it is there; and
    notes on what was left out. ``report`` is a :class:`firm_lite.device.MachineReport`."""
    cap = report.capability(device_index) or (0, 0)
    plan: list[tuple[str, str]] = []
    notes: list[str] = []
    marlin_fits = cap >= (8, 0) or (cap == (7, 5) and dtype == "fp16")
    if not marlin_fits:
        notes.append(f"{MARLIN} skipped: compute capability {cap[0]}.{cap[1]} with {dtype} "
                     "(Marlin needs 8.0+, or 7.5 in fp16)")
    elif not report.nvcc:
        notes.append(f"{MARLIN} skipped: no nvcc on this machine (gptqmodel builds Marlin at first use)")
    else:
        plan.append((MARLIN, "fastest; gptqmodel builds it with nvcc at first use (minutes), then caches it"))
    if report.triton and cap >= (7, 5):
        plan.append((TRITON, "Triton ships its own compiler: nothing to build on this machine"))
    elif not report.triton:
        notes.append(f"{TRITON} skipped: triton is not installed")
    plan.append((TORCH, "plain torch dequantize: always available, slowest"))
    if report.vllm:
        notes.append("vLLM is installed: its precompiled gptq_marlin kernels run GPTQ folders through the vLLM "
                     "backend (firm_lite.vllm_backend), with no build on this machine")
    return plan, notes


def load_first_working(plan: list[tuple[str, str]], load: Callable[[str], Any],
                       release: Callable[[], None] = lambda: None) -> tuple[Any, str, list[dict[str, str]]]:
    """``load(kernel)`` for each planned kernel until one works: (model, kernel, failures). Each
    failure is one log line naming the next kernel; all failing is one UserError."""
    failures: list[dict[str, str]] = []
    for k, (kernel, _why) in enumerate(plan):
        try:
            return load(kernel), kernel, failures
        except KERNEL_ERRORS as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            failures.append({"kernel": kernel, "error": f"{type(exc).__name__}: {reason}"})
            release()
            if k + 1 < len(plan):
                log.warning("GPTQ kernel %s unavailable (%s: %s); using %s instead", kernel, type(exc).__name__,
                            reason, plan[k + 1][0])
    raise UserError("no GPTQ kernel could load this folder: " + "; ".join(f"{f['kernel']}: {f['error']}"
                                                                         for f in failures))


def require_gptq() -> None:
    """One-line error when the gptq extra is missing (checked without importing it: slow)."""
    from importlib.util import find_spec

    for package in ("gptqmodel", "optimum"):
        if find_spec(package) is None:
            raise missing_extra("gptq", package)


def _from_pretrained(request: LoadRequest, kernel: str | None) -> Any:
    import json

    from transformers import GPTQConfig, Qwen3VLForConditionalGeneration

    kwargs: dict[str, Any] = {}
    if kernel is not None:  # a loading attribute: merged into the checkpoint's own quantization_config
        bits = json.loads((request.folder / "config.json").read_text("utf-8"))["quantization_config"]["bits"]
        kwargs["quantization_config"] = GPTQConfig(bits=bits, backend=kernel)
    # gptqmodel prints its banner and kernel choice on stdout, where `score --json` writes JSON.
    with contextlib.redirect_stdout(sys.stderr):
        return Qwen3VLForConditionalGeneration.from_pretrained(request.folder, dtype=request.dtype,
                                                               device_map={"": str(request.device)}, **kwargs)


def load_gptq_folder(request: LoadRequest) -> tuple[Any, Any]:
    """Verify, then ``from_pretrained`` with unquantized parts at ``request.dtype``; on CUDA with
    the kernels of :func:`gptq_kernel_plan` in order (``request.options["gptq_kernels"]``, a list
    of gptqmodel backend names, overrides the plan)."""
    from firm_lite.artifact import check_exported_folder

    check_exported_folder(request.folder, "gptq")
    require_gptq()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(request.folder)
    forced = request.options.get("gptq_kernels")
    record: dict[str, Any] = {"gptq_kernel": "auto"}
    if forced or request.device.type == "cuda":
        from firm_lite.device import dtype_name, machine_report, release_cached_memory

        if forced:
            plan, notes = [(k, "requested") for k in forced], []
        else:
            plan, notes = gptq_kernel_plan(machine_report(), request.device.index or 0, dtype_name(request.dtype))
        model, kernel, failures = load_first_working(plan, lambda k: _from_pretrained(request, k),
                                                     lambda: release_cached_memory(request.device))
        record = {"gptq_kernel": kernel, "failed_kernels": failures, "notes": notes}
    else:
        model = _from_pretrained(request, None)
    if request.device.type == "cpu":
        eager_dequantize(model)
    setattr(model, BACKEND_RECORD, record)
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
