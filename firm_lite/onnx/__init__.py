"""ONNX export of the critic and its ONNX Runtime / TensorRT backends.

No existing exporter handles Qwen3-VL (optimum does not know the architecture; transformers'
experimental exporter drops the vision encoder), so firm-lite cuts the critic into three graphs
(``embed``, ``vision``, ``decoder``) that ``torch.onnx.export(dynamo=True)`` exports with dynamic
batch, sequence, past and image sizes, and runs them with a greedy loop that stands in for
``generate`` so scoring goes through the same core as every other variant.

Modules: :mod:`.patches` (export-time vision attention rewrite), :mod:`.graphs` (wrappers and
export), :mod:`.layout` (graph contract), :mod:`.host` (host-side tensors), :mod:`.runtime` (ORT
sessions), :mod:`.generate` (the generate stand-in), :mod:`.quantize` (int8/int4 weights),
:mod:`.export` (the ``export onnx`` function), :mod:`.tensorrt` (engine builder). Nothing heavy
is imported here.
"""

from __future__ import annotations

from typing import Any


def export_onnx(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from firm_lite.onnx.export import export_onnx as run

    return run(*args, **kwargs)


def build_tensorrt(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from firm_lite.onnx.tensorrt import build_tensorrt as run

    return run(*args, **kwargs)
