"""What the GPU acceptance check is asked to do, and what the machine has installed: shared by
the check's two stages (:mod:`.acceptance`, :mod:`.acceptance_8b`) without either importing the
other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AcceptanceOptions:
    out: Path = Path("bench/results/gpu-check")
    scratch: Path = Path("/tmp/firm-lite-gpu-check")
    device: str = "cuda"
    dry_run: bool = False
    tiny_pairs: int = 6
    shape: str = "8b"  # "8b": the real Qwen3-VL-8B shape; "tiny": the tiny critic's (CPU smoke run)
    bench_pairs: int = 2
    batch_sizes: tuple[int, ...] = (1, 2)
    max_new_tokens: int = 32
    image_size: int = 1024
    cap_gib: float | None = 24.0
    skip_8b: bool = False
    timeout_s: int = 420


def extra_installed(extra: str | None) -> bool:
    from importlib.util import find_spec

    modules = {None: (), "bnb": ("bitsandbytes",), "gptq": ("gptqmodel", "optimum"),
               "onnx": ("onnx", "onnxruntime", "onnxscript"), "vllm": ("vllm",)}[extra]
    return all(find_spec(m) is not None for m in modules)


def vllm_backend_importable() -> bool:
    try:
        import firm_lite.vllm_backend  # noqa: F401
    except ImportError:
        return False
    return True
