"""``onnx``: an exported ONNX folder run by ONNX Runtime (``--variant onnx:DIR`` or ``--variant DIR``).

For deployments that ship ONNX Runtime rather than PyTorch for the model itself. The loaded
"model" is :class:`firm_lite.onnx.generate.OrtGenerationModel`, whose ``generate`` mimics the part
of Hugging Face greedy search the scoring core uses, so prompts, stop rule, parsing and score
read-out are the same code as for every other variant. Execution providers follow the device
(CPU; CUDA with ``onnxruntime-gpu``; TensorRT only for a folder prepared with ``firm-lite export
tensorrt``), see :mod:`firm_lite.onnx.providers`; the providers each graph really runs on are
recorded in the critic's provenance. ``LoadRequest.options`` may set ``threads``, ``providers``,
``tensorrt`` (False: never) and ``io_binding`` explicitly.
"""

from __future__ import annotations

from typing import Any

from firm_lite.variants.registry import BACKEND_RECORD, LoadRequest, VariantSpec, register


def load_onnx(request: LoadRequest) -> tuple[Any, Any]:
    from firm_lite.errors import UserError, missing_extra

    if request.folder is None:
        raise UserError("the onnx variant loads an exported folder: --variant onnx:DIR "
                        "(make one with `firm-lite export onnx --out DIR`)")
    from firm_lite.artifact import check_exported_folder

    folder = request.folder
    manifest = check_exported_folder(folder, "onnx")  # backend named, graph files match their sha256
    onnx_meta = (manifest or {}).get("onnx") or {}
    if onnx_meta.get("layout_version") != 1:
        raise UserError(f"{folder}: not an ONNX export this firm-lite can run (graph layout "
                        f"{onnx_meta.get('layout_version')!r}, expected 1); re-export with `firm-lite export onnx`")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise missing_extra("onnx", "onnxruntime") from None
    from transformers import AutoProcessor

    from firm_lite.onnx.generate import OrtGenerationModel
    from firm_lite.onnx.layout import GraphLayout
    from firm_lite.onnx.runtime import OrtGraphs

    layout = GraphLayout.from_record(onnx_meta["layout"])
    device = str(request.device) if request.device is not None else "cpu"
    graphs = OrtGraphs(folder, layout, device=device, threads=request.options.get("threads"),
                       providers=request.options.get("providers"), tensorrt=request.options.get("tensorrt"),
                       io_binding=request.options.get("io_binding"))
    processor = AutoProcessor.from_pretrained(str(folder))
    model = OrtGenerationModel.from_folder(folder, graphs)
    setattr(model, BACKEND_RECORD, graphs.provenance)
    return model, processor


register(VariantSpec("onnx", "onnx", "exported ONNX graphs run by ONNX Runtime (CPU; CUDA with [gpu]; TensorRT "
                     "opt-in)",
                     load_onnx, weight_bits=32, accuracy_rank=3, extra="onnx", from_folder=True))
