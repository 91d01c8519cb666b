"""The one module that talks to the accelerator API (``torch.cuda.*``).

Device choice (``auto`` prefers CUDA), the default dtype per device (bf16 on GPU, fp32 on CPU),
free memory for the fit planner, and peak-memory readings for the benchmark all live here, so no
other module decides a device or dtype on its own.
"""

from __future__ import annotations

import re
from typing import Any

from firm_lite.errors import UserError

DTYPE_NAMES = ("auto", "bf16", "fp16", "fp32")


def resolve_device(spec: str = "auto") -> Any:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device, with a clear error if absent."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: no CUDA device is visible (torch {torch.__version__}); use --device cpu")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(f"cuda:{index}")


def resolve_dtype(name: str, device: Any) -> Any:
    """Dtype name -> torch dtype; ``auto`` is bf16 on CUDA and fp32 on CPU."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise UserError(f"--dtype {name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return table[name]


def dtype_name(dtype: Any) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def free_memory_bytes(device: Any) -> int:
    """Memory a model could still use on ``device``: CUDA free memory, or available RAM."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def reset_peak_memory(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: Any) -> int:
    """CUDA max allocated on GPU; peak RSS of this process on CPU."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def synchronize(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cap_memory(device: Any, gib: float) -> None:
    """Limit this process's CUDA allocations to ``gib`` (stand in for a smaller card)."""
    if device.type != "cuda":
        return
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
