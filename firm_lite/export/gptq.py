"""``firm-lite export gptq``: a standard GPTQ checkpoint of the critic, made once with gptqmodel.

The recipe decides bits, group size, act-order and what is kept (the vision tower, embeddings
and lm_head by default: a GPTQ checkpoint that transformers/optimum and vLLM load quantizes the
decoder layers only). Calibration samples are the critic's own conversations
(:mod:`firm_lite.export.gptq_samples`), handed to gptqmodel already processed, so its own
Qwen-VL preprocessing (a different resize) never runs. The output is what gptqmodel saves
(``quantization_config`` in config.json) plus the source processor, a greedy generation config,
the quantization log and the provenance manifest, written atomically.

gptqmodel is configured only inside :func:`export_gptq`: ``GPTQMODEL_CPU_WORKERS`` is capped at
the cores this process may use (more workers than cores stalls it), and its one-time C++ kernel
build is pinned to a stable cache (:func:`kernel_cache_dir`) so CI compiles it once, not per run.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from firm_lite.artifact import folder_bytes, hash_weights, write_manifest
from firm_lite.errors import UserError
from firm_lite.export.provenance import base_manifest, check_out_folder, staged_folder
from firm_lite.export.session import ExportResult, Stages, keep_log, library_output, make_greedy, scoped_env
from firm_lite.recipes import Recipe, recipe_for
from firm_lite.sources import DEFAULT_MODEL

logger = logging.getLogger(__name__)

def kernel_cache_dir() -> Path:
    """Where gptqmodel keeps its compiled CPU kernels: ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/gptqmodel/torch_extensions``, the same place gptqmodel uses by default under ``~/.cache``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gptqmodel" / "torch_extensions"


def cpu_workers() -> str:
    """GPTQMODEL_CPU_WORKERS for this run: the user's value if set and sane, capped at our cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        wanted = int(os.environ.get("GPTQMODEL_CPU_WORKERS", cores))
    except ValueError:
        wanted = cores
    return str(max(1, min(wanted, cores)))


def variant_label(recipe: Recipe, group_size: int) -> str:
    return f"gptq-w{recipe.bits}-g{group_size}" if group_size != -1 else f"gptq-w{recipe.bits}-perchannel"


def fit_group_size(inv: Any, recipe: Recipe) -> tuple[int, str | None]:
    """The group size every quantized Linear can use. Kernels (vLLM's, transformers' CPU int4)
    need ``in_features % group_size == 0``; when the recipe's size does not divide a layer (only
    small test models), use the largest size that divides all and say so."""
    from firm_lite.plan import module_group

    size = recipe.group_size
    ins = sorted({lin.in_features for lin in inv.linears.values() if module_group(lin.name) in recipe.quantize})
    if size == -1 or not ins or all(n % size == 0 for n in ins):
        return size, None
    common = math.gcd(*ins)
    fitted = max(d for d in range(1, min(size, common) + 1) if common % d == 0)
    return fitted, (f"group size {size} does not divide every quantized layer's input width ({ins}); "
                    f"used {fitted} (recorded as group_size, the recipe's as group_size_requested)")


def quantized_linear_count(inv: Any, recipe: Recipe) -> int:
    from firm_lite.plan import module_group

    return sum(1 for lin in inv.linears.values() if module_group(lin.name) in recipe.quantize)


def require_gptq() -> None:
    from firm_lite.variants.gptq import require_gptq as check

    check()


def _layer_progress(total: int, enabled: bool) -> Any:
    """A tqdm bar advanced by gptqmodel's layer-complete callback (once per decoder layer)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="quantizing layers", unit="layer", file=sys.stderr, disable=not enabled)
    seen: set[int] = set()

    def on_layer(layer_idx: int, submodule_finalized: bool = False, **_: Any) -> None:
        if layer_idx not in seen:
            seen.add(layer_idx)
            bar.update(1)
    return bar, on_layer


def export_gptq(*, out: str | Path, model: str = DEFAULT_MODEL, calib: str | Path | None = None,
                recipe: str | Path | None = None, bits: int | None = None, group_size: int | None = None,
                act_order: bool | None = None, quantize_vision: bool = False, overwrite: bool = False,
                device: str = "auto", min_pixels: int | None = None, max_pixels: int | None = None,
                max_calibration_pairs: int | None = None, revision: str | None = None,
                progress: bool = True, quiet_library: bool = True) -> ExportResult:
    """Quantize ``model`` with GPTQ on the edit pairs in ``calib`` and write it to ``out``."""
    from firm_lite.export.gptq_samples import read_calibration_set, render_samples
    from firm_lite.sources import resolve_model

    stages = Stages(5, progress)
    base = recipe_for("gptq", recipe, bits)
    rec, overrides = base.with_overrides(
        bits=bits, group_size=group_size, act_order=act_order, max_calibration_pairs=max_calibration_pairs,
        quantize=(*base.quantize, "vision") if quantize_vision and not base.quantizes_vision else None)
    source = resolve_model(model, revision=revision)
    out_dir = check_out_folder(Path(out), overwrite, source.path)
    calib_set = read_calibration_set(calib, rec.max_calibration_pairs)
    require_gptq()

    stages(f"rendering calibration samples ({len(calib_set.pairs)} pairs x 2 modes) from {calib_set.manifest}")
    import torch
    from transformers import AutoProcessor

    from firm_lite.device import resolve_device
    from firm_lite.images import ImageBudget
    from firm_lite.plan import inventory

    dev = resolve_device(device)
    inv = inventory(str(source.path))
    fitted, note = fit_group_size(inv, rec)
    if note:
        logger.warning("%s", note)
    processor = AutoProcessor.from_pretrained(source.path)
    budget = ImageBudget.from_processor(processor, min_pixels, max_pixels)
    samples, sample_stats = render_samples(processor, calib_set, budget, progress)

    manifest = base_manifest(backend="gptq", variant=variant_label(rec, fitted), source=source, recipe=rec,
                             overrides=overrides, image_budget=budget.as_record())
    manifest.update(group_size=fitted, group_size_requested=rec.group_size, act_order=rec.act_order, sym=rec.sym,
                    quantized_linear_layers=quantized_linear_count(inv, rec),
                    calibration_data=calib_set.as_record(**sample_stats))
    kernels = os.environ.get("GPTQMODEL_TORCH_EXTENSIONS_DIR") or str(kernel_cache_dir())
    env = {"GPTQMODEL_CPU_WORKERS": cpu_workers(), "GPTQMODEL_TORCH_EXTENSIONS_DIR": kernels}
    with scoped_env(**env), staged_folder(out_dir) as stage:
        with library_output(quiet_library) as log:
            stages(f"loading {source.model_id} for quantization on {dev} (the first run builds gptqmodel's "
                   f"kernels into {kernels}, a few minutes, once)")
            from gptqmodel import GPTQModel, QuantizeConfig

            config = QuantizeConfig(bits=rec.bits, group_size=fitted, desc_act=rec.act_order, sym=rec.sym,
                                    damp_percent=rec.damp_percent, device=str(dev))
            qmodel = GPTQModel.load(str(source.path), config, dtype=getattr(torch, rec.dtype))
            # Samples are already what scoring feeds the model; skip gptqmodel's own VL preprocessing.
            qmodel.prepare_dataset = lambda *args, **kwargs: samples
            stages(f"quantizing {manifest['quantized_linear_layers']} Linear layers to {rec.bits} bits, "
                   f"group {fitted}")
            bar, qmodel.layer_callback = _layer_progress(int(inv.text["num_hidden_layers"]), progress)
            try:
                qmodel.quantize(samples, batch_size=1)
            finally:
                bar.close()
            stages("saving the checkpoint, processor and greedy generation config")
            qmodel.save(str(stage))
            del qmodel
        processor.save_pretrained(stage)
        manifest["generation_config"] = make_greedy(stage)
        keep_log(log, stage)
        stages("hashing weight files and writing the provenance manifest")
        manifest["weights"] = hash_weights(stage)
        if not manifest["weights"]:
            raise UserError(f"gptqmodel wrote no weight files for {source.model_id}; run again with --verbose")
        manifest["export"] = {"seconds": round(stages.elapsed, 2), "device": str(dev), "tool": "gptqmodel",
                              "bytes_on_disk": folder_bytes(stage)}
        write_manifest(stage, manifest)
    return ExportResult(out_dir, manifest, stages.elapsed, folder_bytes(out_dir), [note] if note else [])
