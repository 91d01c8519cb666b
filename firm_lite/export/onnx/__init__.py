"""ONNX export of the critic (a builder): three graphs plus a firm-lite variant manifest.

No existing exporter handles Qwen3-VL (optimum does not know the architecture; transformers'
experimental exporter drops the vision encoder), so firm-lite cuts the critic into three graphs
(``embed``, ``vision``, ``decoder``) that ``torch.onnx.export(dynamo=True)`` exports with dynamic
batch, sequence, past and image sizes; :mod:`firm_lite.onnx` runs them.

Modules: :mod:`.patches` (export-time vision attention rewrite), :mod:`.graphs` (wrappers and
export), :mod:`.quantize` (int8/int4 weights), :mod:`.export` (the ``export onnx`` function),
:mod:`.tensorrt` (TensorRT profiles and engine cache for ONNX Runtime's TensorRT provider).
Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import Any


def export_onnx(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from firm_lite.export.onnx.export import export_onnx as run

    return run(*args, **kwargs)


def prepare_tensorrt(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from firm_lite.export.onnx.tensorrt import prepare_tensorrt as run

    return run(*args, **kwargs)
