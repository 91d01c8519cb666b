"""``firm_lite.onnx.export_onnx``: what ``firm-lite export onnx`` does, as a function.

Loads the critic in PyTorch once, exports its three graphs (:mod:`firm_lite.export.onnx.graphs`),
optionally quantizes their weights (:mod:`firm_lite.export.onnx.quantize`, also on its own as
:func:`quantize_folder` from a float export), copies the processor, config and generation config
beside them, and writes ``firm_lite_variant.json`` with the shared provenance tools of
:mod:`firm_lite.export.provenance` (atomic staged folder, source, recipe, versions, sha256 of
every graph and external-data file), plus the graph layout the runtime needs.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError, missing_extra
from firm_lite.onnx.layout import GRAPH_FILES, GraphLayout

BACKEND = "onnx"
LAYOUT_VERSION = 1  # bump when graph inputs/outputs change; the loader refuses other versions
DTYPES = ("fp32", "fp16")
QUANTIZE = ("none", "int8", "int4")
MIN_OPSET, MAX_OPSET = 18, 23
GRAPH_SUFFIXES = (".onnx", ".onnx.data", ".data")
FP32_GPU_WARNING_BYTES = 12 * 2**30  # above this an fp32 export is for CPU only: say so
log = logging.getLogger(__name__)


def graph_weights(folder: Path) -> dict[str, dict[str, Any]]:
    """Every graph and external-data file in ``folder`` -> {sha256, bytes}."""
    from firm_lite.artifact import sha256_file

    return {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name.endswith(GRAPH_SUFFIXES)}


def library_versions() -> dict[str, str | None]:
    from firm_lite.artifact import library_versions as shared

    versions = shared()
    for name in ("onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _check_options(opset: int, dtype: str, quantize: str, block_size: int = 128) -> None:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: ONNX export supports {', '.join(DTYPES)} (onnxruntime has no bf16 "
                        "CPU kernels)")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZE)}")
    if quantize != "none" and dtype != "fp32":
        raise UserError("--quantize needs --dtype fp32 (the quantizers take float32 weights)")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset}: expected {MIN_OPSET}..{MAX_OPSET}")
    if block_size < 16 or block_size & (block_size - 1):
        raise UserError(f"--block-size {block_size}: must be a power of two >= 16 (MatMulNBits)")


def _groups(quantize: str, keep_lm_head: bool) -> tuple[list[str], list[str]]:
    """(quantized, kept) module groups, named as the export recipes name them."""
    if quantize == "none":
        return [], ["decoder", "vision", "embeddings", "lm_head"]
    quantized = ["decoder", "vision"] + ([] if keep_lm_head else ["lm_head"])
    return quantized, ["embeddings"] + (["lm_head"] if keep_lm_head else [])


def _write(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from firm_lite.artifact import write_manifest

    manifest["weights"] = graph_weights(stage)
    write_manifest(stage, manifest)
    return manifest


def quantize_folder(src: str | Path, out: str | Path, scheme: str, *, keep_lm_head: bool = True,
                    block_size: int = 128, overwrite: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a weight-quantized copy of the float ONNX variant folder ``src`` into ``out``."""
    from firm_lite.artifact import CALIBRATION_KEY, VARIANT_MANIFEST, now_iso, read_variant_manifest
    from firm_lite.export.onnx.quantize import QUANTIZED_GRAPHS, SCHEMES, quantize_graph
    from firm_lite.export.provenance import check_out_folder, staged_folder

    src = Path(src).expanduser()
    base = read_variant_manifest(src)
    recipe = dict(base.get("recipe", {}))
    if base.get("backend") != BACKEND or recipe.get("quantize", "none") != "none" or recipe.get("dtype") != "fp32":
        raise UserError(f"{src}: quantization starts from an unquantized fp32 ONNX export")
    if scheme not in SCHEMES:
        raise UserError(f"--quantize {scheme}: expected one of {', '.join(SCHEMES)}")
    _check_options(recipe.get("opset", MIN_OPSET), "fp32", scheme, block_size)
    out = check_out_folder(Path(out), overwrite, source=src)
    say = progress or (lambda _msg: None)
    with staged_folder(out) as stage:
        for item in src.iterdir():
            if item.is_file() and item.name != VARIANT_MANIFEST and not item.name.startswith(
                    tuple(GRAPH_FILES.values())):
                shutil.copy2(item, stage / item.name)
        reports: dict[str, Any] = {}
        for name, file in GRAPH_FILES.items():
            if name in QUANTIZED_GRAPHS:
                say(f"quantizing {name} graph ({scheme})")
                reports[name] = quantize_graph(src / file, stage / file, scheme, keep_lm_head, block_size).as_record()
            else:
                for part in src.glob(file + "*"):
                    shutil.copy2(part, stage / part.name)
        quantized, kept = _groups(scheme, keep_lm_head)
        recipe.update(quantize=scheme, keep_lm_head=keep_lm_head, block_size=block_size if scheme == "int4" else None,
                      quantized_graphs=reports)
        manifest = {**base, "variant": f"onnx-{scheme}", "created": now_iso(), "recipe": recipe,
                    "bits": SCHEMES[scheme][1], "quantized": quantized, "kept": kept,
                    "quantized_from": {"folder": str(src), "weights": base.get("weights")},
                    "versions": library_versions(), CALIBRATION_KEY: None}
        return _write(stage, manifest)


def export_onnx(model: str, out: str | Path, *, opset: int = 18, dtype: str = "fp32", quantize: str = "none",
                keep_lm_head: bool = True, block_size: int = 128, revision: str | None = None,
                overwrite: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export ``model`` (hub id, folder or ``tiny``) to an ONNX variant folder ``out``; returns
    its manifest. With ``quantize`` the float graphs are exported first, then quantized."""
    from firm_lite.artifact import CALIBRATION_KEY, now_iso, sha256_file
    from firm_lite.export.provenance import check_out_folder, staged_folder
    from firm_lite.sources import resolve_model

    _check_options(opset, dtype, quantize, block_size)
    source = resolve_model(model, revision=revision)
    out = check_out_folder(Path(out), overwrite, source=source.path)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise missing_extra("onnx", exc.name or "onnx") from None
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from firm_lite.export.onnx.graphs import export_graphs
    from firm_lite.images import ImageBudget
    say = progress or (lambda _msg: None)
    say(f"loading {source.model_id} ({dtype})")
    critic = Qwen3VLForConditionalGeneration.from_pretrained(
        source.path, dtype={"fp32": torch.float32, "fp16": torch.float16}[dtype], attn_implementation="sdpa").eval()
    processor = AutoProcessor.from_pretrained(source.path)
    graph_bytes = sum(p.numel() for p in critic.parameters()) * (4 if dtype == "fp32" else 2)
    if dtype == "fp32" and graph_bytes > FP32_GPU_WARNING_BYTES:
        log.warning("fp32 graphs of %s take %.1f GiB: no consumer GPU holds them (fp32 is for ONNX Runtime on "
                    "CPU); for CUDA or TensorRT export with --dtype fp16 (%.1f GiB)", source.model_id,
                    graph_bytes / 2**30, graph_bytes / 2**31)
    layout = GraphLayout.from_model(critic, dtype)
    float_out = out if quantize == "none" else out.parent / f".{out.name}.float"
    config = Path(source.path) / "config.json"
    with staged_folder(float_out) as stage:
        export_graphs(critic, layout, stage, opset=opset, on_graph=lambda name: say(f"exporting {name} graph"))
        processor.save_pretrained(str(stage))
        critic.config.save_pretrained(str(stage))
        generation = Path(source.path) / "generation_config.json"
        if generation.exists():
            shutil.copy2(generation, stage / generation.name)
        manifest = _write(stage, {
            "format": 1, "backend": BACKEND, "variant": f"onnx-{dtype}", "created": now_iso(),
            "source": {"model_id": source.model_id, "revision": source.revision,
                       "config_sha256": sha256_file(config) if config.is_file() else None},
            "recipe": {"opset": opset, "dtype": dtype, "quantize": "none", "keep_lm_head": True, "block_size": None,
                       "quantized_graphs": {}},
            "bits": {"fp32": 32, "fp16": 16}[dtype], "quantized": [], "kept": _groups("none", True)[1],
            "image_budget": ImageBudget.from_processor(processor).as_record(),
            "versions": library_versions(), "python": sys.version.split()[0], CALIBRATION_KEY: None,
            "onnx": {"layout_version": LAYOUT_VERSION, "graphs": GRAPH_FILES, "layout": layout.as_record()}})
    del critic
    if quantize == "none":
        return manifest
    try:
        return quantize_folder(float_out, out, quantize, keep_lm_head=keep_lm_head, block_size=block_size,
                               overwrite=True, progress=say)
    finally:
        shutil.rmtree(float_out, ignore_errors=True)
