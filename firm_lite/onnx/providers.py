"""Which ONNX Runtime execution providers run the graphs, with which options, and what actually ran.

The choice is a pure function (:func:`choose_providers`) of the device asked for, the providers
this onnxruntime build offers, whether TensorRT's libraries can be found, and whether the folder
opted in to TensorRT. CPU asks for the CPU provider only; ``cuda:N`` asks for CUDA on device N.
TensorRT is opt-in: only a folder prepared with ``firm-lite export tensorrt`` (explicit
optimization profiles sized to a batch and image size, and an engine cache beside the graphs)
asks for it, because without explicit profiles ONNX Runtime's TensorRT provider rebuilds an
engine whenever an input grows past the shapes it has seen: every decoded token.

:func:`open_session` guards what ONNX Runtime does when a provider fails to start: its Python
wrapper prints an "EP Error" banner on **stdout** (where ``score --json`` writes) and retries with
its fallback providers *without their options* (``device_id`` is lost: ``cuda:1`` would run on GPU
0). Here stdout is redirected to stderr while a session opens, the providers the session really
has are read back, a lost TensorRT is replaced by an explicit CUDA session on the asked device,
and a lost CUDA provider is an error, never a silent CPU run. What ran is what is recorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError, missing_extra

log = logging.getLogger(__name__)

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
TENSORRT_CONFIG = Path("tensorrt") / "firm_lite_tensorrt.json"  # written by `firm-lite export tensorrt`
TENSORRT_CACHE = Path("tensorrt") / "cache"  # ONNX Runtime's engine + timing cache for this folder


@dataclass(frozen=True)
class ProviderPlan:
    """Providers to ask for, in order, with one options dict each, and why anything was dropped."""

    providers: tuple[str, ...]
    options: tuple[dict[str, str], ...]
    notes: tuple[str, ...] = ()

    def without_first(self) -> ProviderPlan:
        return ProviderPlan(self.providers[1:], self.options[1:], self.notes)


def device_index(device: str) -> str:
    return device.partition(":")[2] or "0"


ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_onnxruntimes() -> tuple[str, ...]:
    """Which ONNX Runtime distributions are installed (package metadata; nothing is imported)."""
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(found)


def choose_providers(device: str, available: Sequence[str], tensorrt: dict[str, str] | None = None,
                     tensorrt_libs: bool = True, installed: Sequence[str] = ()) -> ProviderPlan:
    """The providers for ``device`` ("cpu" or "cuda[:N]") from those ``available``.

    ``tensorrt``: the TensorRT provider options of a folder that opted in (None: not asked);
    ``tensorrt_libs``: whether libnvinfer can be found (see
    :func:`firm_lite.device.tensorrt_libraries_present`); ``installed``: the ONNX Runtime
    distributions present (:func:`installed_onnxruntimes`), to name the fix when both are."""
    if not device.startswith("cuda"):
        return ProviderPlan((CPU,), ({},))
    if CUDA not in available:
        if set(ORT_DISTRIBUTIONS) <= set(installed):
            raise UserError("onnxruntime and onnxruntime-gpu are both installed and overwrite each other (the CPU "
                            "build won): pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                            "\"firm-lite[gpu]\" (the [gpu] extra replaces [onnx], never beside it)")
        raise missing_extra("gpu", "onnxruntime-gpu (CUDA execution provider)")
    index = device_index(device)
    plan = ProviderPlan((CUDA, CPU), ({"device_id": index}, {}))
    if tensorrt is None:
        return plan
    if TENSORRT not in available:
        note = "TensorRT asked for, but this onnxruntime build has no TensorRT provider: running on CUDA"
    elif not tensorrt_libs:
        note = ("TensorRT asked for, but its libraries (libnvinfer) are not installed (pip install tensorrt): "
                "running on CUDA")
    else:
        return ProviderPlan((TENSORRT, *plan.providers), ({"device_id": index, **tensorrt}, *plan.options))
    return ProviderPlan(plan.providers, plan.options, (note,))


def shape_list(shapes: dict[str, Sequence[int]]) -> str:
    """``{"input_ids": (1, 7)}`` -> ``"input_ids:1x7"``: the TensorRT provider's profile syntax."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in shapes.items())


def tensorrt_options(profile: dict[str, Sequence[Sequence[int]]], cache_dir: Path, fp16: bool,
                     workspace_bytes: int) -> dict[str, str]:
    """ONNX Runtime TensorRT-provider options for one graph: its explicit profile (input ->
    (min, opt, max) shape), the engine and timing cache in ``cache_dir``, fp16 kernels allowed or
    not. ONNX Runtime runs profile 0 of an engine only, so each graph has one profile."""
    return {
        "trt_profile_min_shapes": shape_list({k: v[0] for k, v in profile.items()}),
        "trt_profile_opt_shapes": shape_list({k: v[1] for k, v in profile.items()}),
        "trt_profile_max_shapes": shape_list({k: v[2] for k, v in profile.items()}),
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": "True" if fp16 else "False", "trt_max_workspace_size": str(int(workspace_bytes)),
    }


def folder_tensorrt_options(folder: Path) -> dict[str, dict[str, str]] | None:
    """Per graph, the TensorRT options of a folder prepared by ``firm-lite export tensorrt``; None
    when the folder did not opt in."""
    path = Path(folder) / TENSORRT_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text("utf-8"))
        graphs = config["graphs"]
        return {name: tensorrt_options(entry["profile"], Path(folder) / TENSORRT_CACHE, bool(config["fp16"]),
                                       int(config["workspace_bytes"])) for name, entry in graphs.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable TensorRT settings ({exc}); "
                        "run `firm-lite export tensorrt` again") from None


def open_session(path: Path, options: Any, plan: ProviderPlan, factory: Callable[..., Any]
                 ) -> tuple[Any, list[str], list[str]]:
    """Open ``path`` with ``plan``; returns (session, providers it really has, notes). See the
    module docstring for what is guarded."""
    notes: list[str] = []

    def create(p: ProviderPlan) -> Any:
        with contextlib.redirect_stdout(sys.stderr):  # onnxruntime's "EP Error" banner is print()ed
            return factory(str(path), sess_options=options, providers=list(p.providers),
                           provider_options=[dict(o) for o in p.options])

    session = create(plan)
    actual = list(session.get_providers())
    if plan.providers[0] == TENSORRT and TENSORRT not in actual:
        device = plan.options[1].get("device_id", "0")
        notes.append(f"{Path(path).name}: the TensorRT provider did not start; running on CUDA device {device}")
        log.warning("%s", notes[-1])
        session = create(plan.without_first())  # explicitly: onnxruntime's own fallback drops device_id
        actual = list(session.get_providers())
    if CUDA in plan.providers and CUDA not in actual:
        raise UserError(f"{Path(path).name}: ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries "
                        "missing or not the ones this onnxruntime-gpu was built for); check `nvidia-smi` and "
                        "onnxruntime-gpu's CUDA requirements, or use --device cpu")
    return session, actual, notes
