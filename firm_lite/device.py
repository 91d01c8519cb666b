"""The one module that talks to the accelerator API (``torch.cuda.*``).

It owns two kinds of code. *Readings*: what the machine reports (:func:`machine_report`: CUDA
devices and their compute capability, nvcc, Triton, ONNX Runtime's providers, TensorRT's
libraries, vLLM), free memory, peak memory. *Decisions*: pure functions of those readings
(:func:`default_dtype_name`, :func:`usable_bytes`, :func:`summarize_peak`), so every choice a GPU
run makes can be unit-tested on a CPU box with the readings faked. Other modules decide a device,
dtype, provider or kernel only through a decision function fed by a reading from here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from firm_lite.errors import UserError

log = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "bf16", "fp16", "fp32")
BF16_NATIVE = (8, 0)  # Ampere: bf16 tensor cores; Turing (7.5) and older emulate bf16


# ---- what the machine reports ---------------------------------------------------------------

@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int


@dataclass(frozen=True)
class MachineReport:
    """What this machine offers, as plain data: the only input of the accelerator decisions."""

    cuda: tuple[CudaDevice, ...] = ()
    torch_cuda: str | None = None  # torch.version.cuda: the CUDA torch was built for
    nvcc: str | None = None  # path of a CUDA compiler (JIT-built kernels need one)
    triton: bool = False  # Triton ships its own compiler: its kernels need no nvcc
    ort_providers: tuple[str, ...] = ()  # onnxruntime.get_available_providers(), if installed
    tensorrt_libs: bool = False  # libnvinfer findable (ONNX Runtime's TensorRT provider dlopens it)
    vllm: bool = False  # vLLM importable (its GPTQ Marlin kernels ship precompiled)
    nvml: bool = False  # pynvml importable: device-level memory without a CUDA context

    def capability(self, index: int = 0) -> tuple[int, int] | None:
        for dev in self.cuda:
            if dev.index == index:
                return dev.capability
        return None

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def _nvcc_path() -> str | None:
    import os
    import shutil

    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def tensorrt_libraries_present() -> bool:
    """Whether libnvinfer can be found (the system's loader cache, LD_LIBRARY_PATH, or the
    ``tensorrt_libs`` wheel NVIDIA's ``pip install tensorrt`` brings), without loading it."""
    import ctypes.util
    from importlib.util import find_spec
    from pathlib import Path

    if ctypes.util.find_library("nvinfer"):
        return True
    spec = find_spec("tensorrt_libs")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if any(Path(root).glob("libnvinfer.so*")):
            return True
    return False


def _ort_providers() -> tuple[str, ...]:
    from importlib.util import find_spec

    if find_spec("onnxruntime") is None:
        return ()
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def machine_report() -> MachineReport:
    """Read what this machine offers (CUDA devices are read only when torch sees CUDA)."""
    from importlib.util import find_spec

    import torch

    devices: list[CudaDevice] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(CudaDevice(i, props.name, (props.major, props.minor), int(props.total_memory)))
    return MachineReport(cuda=tuple(devices), torch_cuda=torch.version.cuda, nvcc=_nvcc_path(),
                         triton=find_spec("triton") is not None, ort_providers=_ort_providers(),
                         tensorrt_libs=tensorrt_libraries_present(), vllm=find_spec("vllm") is not None,
                         nvml=find_spec("pynvml") is not None)


# ---- device and dtype -------------------------------------------------------------------------

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


def default_dtype_name(device_type: str, capability: tuple[int, int] | None = None) -> str:
    """What ``--dtype auto`` means: fp32 on CPU; bf16 on GPUs with native bf16 (compute
    capability 8.0+, Ampere on); fp16 on older GPUs (Turing T4/RTX 20xx, Volta), where bf16 is
    emulated, flash attention is unavailable and GPTQ Marlin refuses bf16."""
    if device_type != "cuda":
        return "fp32"
    return "bf16" if capability is not None and tuple(capability) >= BF16_NATIVE else "fp16"


def device_capability(device: Any) -> tuple[int, int] | None:
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(device))


def resolve_dtype(name: str, device: Any, capability: tuple[int, int] | None = None) -> Any:
    """Dtype name -> torch dtype; ``auto`` is :func:`default_dtype_name` for ``device``
    (``capability`` read from the device unless given)."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if device.type == "cuda" and capability is None:
            capability = device_capability(device)
        name = default_dtype_name(device.type, capability)
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise UserError(f"--dtype {name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return table[name]


def dtype_name(dtype: Any) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


# ---- memory: free, capped, peak ---------------------------------------------------------------

def usable_bytes(free: int, total: int, reserved: int = 0, fraction: float = 1.0,
                 cap_bytes: int | None = None) -> int:
    """Memory a new model may still take: the device's free memory, but no more than this
    process's allowance (``fraction`` of ``total`` set by ``set_per_process_memory_fraction``,
    or ``cap_bytes``) minus what its allocator already ``reserved``."""
    limit = int(fraction * total)
    if cap_bytes is not None:
        limit = min(limit, int(cap_bytes))
    return max(0, min(int(free), limit - int(reserved)))


def free_memory_bytes(device: Any, cap_gib: float | None = None) -> int:
    """Memory a model could still use on ``device``: CUDA free memory within this process's cap
    (:func:`cap_memory`, or ``cap_gib``), or available RAM."""
    cap = None if cap_gib is None else int(cap_gib * 2**30)
    if device.type == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        return usable_bytes(free, total, torch.cuda.memory_reserved(device),
                            torch.cuda.get_per_process_memory_fraction(device), cap)
    import psutil

    available = int(psutil.virtual_memory().available)
    return available if cap is None else min(available, cap)


def total_memory_bytes(device: Any) -> int | None:
    """The card's memory (None on CPU)."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return int(torch.cuda.get_device_properties(device).total_memory)


def cap_memory(device: Any, gib: float) -> None:
    """Limit this process's CUDA allocations to ``gib`` (stand in for a smaller card)."""
    if device.type != "cuda":
        return
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)


def release_cached_memory(device: Any) -> None:
    """Return what torch's caching allocator holds to the driver (after a failed load)."""
    import gc

    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()


def synchronize(device: Any) -> None:
    if getattr(device, "type", None) == "cuda":  # a remote critic's device is the string "remote"
        import torch

        torch.cuda.synchronize(device)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def summarize_peak(samples: list[int], baseline: int | None, torch_reserved: int | None = None,
                   torch_allocated: int | None = None, method: str = "") -> dict[str, Any]:
    """One run's peak memory from its readings. ``samples``: device-level used bytes sampled
    during the run; ``baseline``: device-level used bytes before it. The headline
    ``peak_bytes`` is the larger of the device-level rise (sees the CUDA context, cuBLAS
    workspaces and memory ONNX Runtime or vLLM allocate, which torch's counters never see) and
    torch's reserved peak (the caching allocator's real footprint, not only live tensors)."""
    device_peak = max(samples) if samples else None
    rise = None if device_peak is None or baseline is None else max(0, device_peak - baseline)
    candidates = [v for v in (rise, torch_reserved) if v is not None]
    return {"peak_bytes": max(candidates) if candidates else None, "method": method,
            "device_used_peak": device_peak, "device_used_baseline": baseline, "device_used_rise": rise,
            "torch_reserved_peak": torch_reserved, "torch_allocated_peak": torch_allocated,
            "samples": len(samples)}


def device_used_reader(device: Any) -> tuple[Callable[[], int], str]:
    """A function returning device-level used bytes, and how it measures: NVML when pynvml is
    installed (no CUDA context needed, so the baseline is read before this process makes one),
    else ``total - free`` from ``cudaMemGetInfo`` (makes the context first: the baseline then
    includes it)."""
    from importlib.util import find_spec

    import torch

    if find_spec("pynvml") is not None:
        return (lambda: int(torch.cuda.device_memory_used(device))), "nvml device used"

    def from_mem_get_info() -> int:
        free, total = torch.cuda.mem_get_info(device)
        return int(total - free)

    return from_mem_get_info, "cudaMemGetInfo device used (baseline includes this process's CUDA context)"


@dataclass
class PeakMemory:
    """Peak memory of the code run inside ``with PeakMemory(device) as peak:``.

    On CUDA a thread samples device-level used memory every ``interval_s`` while torch's own
    peak counters are reset at entry; :meth:`report` combines them (:func:`summarize_peak`).
    On CPU it is the process's peak RSS, or, when the process has children (vLLM's engine
    processes hold the weights and KV cache), the sampled peak of the RSS summed over the
    process and its descendants, whichever is larger. ``reader`` replaces the device reading
    (tests)."""

    device: Any
    interval_s: float = 0.05
    reader: Callable[[], int] | None = None
    method: str = ""
    _samples: list[int] = field(default_factory=list)
    _baseline: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _result: dict[str, Any] | None = None

    @property
    def on_cuda(self) -> bool:
        return getattr(self.device, "type", None) == "cuda"

    def __enter__(self) -> PeakMemory:
        if self.reader is None and self.on_cuda:
            self.reader, self.method = device_used_reader(self.device)
        if self.reader is None and not self.on_cuda:
            self._tree_samples: list[int] = []
            self._tree_thread = threading.Thread(target=self._sample_tree, name="firm-lite-peak-rss", daemon=True)
            self._tree_thread.start()
        if self.reader is not None:
            self._baseline = self.reader()
            self._thread = threading.Thread(target=self._sample, name="firm-lite-peak-memory", daemon=True)
            self._thread.start()
        if self.on_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def _sample_tree(self) -> None:
        while not self._stop.is_set():
            self._tree_samples.append(process_tree_rss())
            self._stop.wait(self.interval_s * 4)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._samples.append(self.reader())
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._samples.append(self.reader())
        reserved = allocated = None
        if self.on_cuda:
            import torch

            reserved = int(torch.cuda.max_memory_reserved(self.device))
            allocated = int(torch.cuda.max_memory_allocated(self.device))
        elif self.reader is None:  # CPU: the process's peak resident set
            import resource

            self._tree_thread.join()
            rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
            tree = max(self._tree_samples, default=0)
            if tree > rss:
                self._result = {"peak_bytes": tree, "method": "peak RSS of the process and its children (sampled)",
                                "samples": len(self._tree_samples), "own_peak_rss": rss}
            else:
                self._result = {"peak_bytes": rss, "method": "peak RSS (ru_maxrss)", "samples": 0}
            return
        self._result = summarize_peak(self._samples, self._baseline, reserved, allocated, self.method)

    def report(self) -> dict[str, Any]:
        if self._result is None:
            raise RuntimeError("PeakMemory.report() before the measured block ended")
        return self._result


def process_tree_rss() -> int:
    """Resident bytes of this process and all its descendants, now."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def peak_memory_bytes(device: Any) -> int:
    """Peak so far in this process: CUDA max reserved by torch's allocator (what it holds, not
    only live tensors); peak RSS on CPU. :class:`PeakMemory` also sees non-torch allocations."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_reserved(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_memory(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
