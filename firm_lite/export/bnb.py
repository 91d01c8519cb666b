"""``firm-lite export bnb``: a serialized bitsandbytes (NF4 or LLM.int8) critic.

The reference checkpoint is quantized while it loads, exactly as the ``nf4``/``int8`` load-time
variants do (:func:`firm_lite.variants.bnb.quantize_on_load`), and saved straight away: no
forward pass runs before saving, because a 4-bit model saved after a forward on the CPU backend
can reload differently (a known bitsandbytes trap). NF4 uses double quantization by default.
The vision tower and lm_head are kept unless the recipe (or ``--quantize-vision``) says
otherwise, with a warning.
"""

from __future__ import annotations

from pathlib import Path

from firm_lite.artifact import folder_bytes, hash_weights, write_manifest
from firm_lite.errors import UserError
from firm_lite.export.provenance import base_manifest, check_out_folder, staged_folder
from firm_lite.export.session import ExportResult, Stages, make_greedy
from firm_lite.recipes import recipe_for
from firm_lite.sources import DEFAULT_MODEL


def export_bnb(*, out: str | Path, model: str = DEFAULT_MODEL, recipe: str | Path | None = None,
               bits: int | None = None, quantize_vision: bool = False, overwrite: bool = False,
               device: str = "auto", revision: str | None = None, progress: bool = True) -> ExportResult:
    """Quantize ``model`` with bitsandbytes per the recipe and write the folder to ``out``."""
    from firm_lite.sources import resolve_model
    from firm_lite.variants.bnb import require_bnb

    stages = Stages(3, progress)
    base = recipe_for("bnb", recipe, bits)
    if bits is not None and recipe is not None and bits != base.bits:
        raise UserError(f"--bits {bits} contradicts --recipe {base.name} ({base.bits}-bit); drop one of them")
    rec, overrides = base.with_overrides(
        quantize=(*base.quantize, "vision") if quantize_vision and not base.quantizes_vision else None)
    source = resolve_model(model, revision=revision)
    out_dir = check_out_folder(Path(out), overwrite, source.path)
    require_bnb()

    import torch

    from firm_lite.device import resolve_device
    from firm_lite.images import ImageBudget
    from firm_lite.plan import inventory, module_group
    from firm_lite.variants.bnb import quantize_on_load

    dev = resolve_device(device)
    inv = inventory(str(source.path))
    variant = f"bnb-{rec.quant_type}" if rec.bits == 4 else "bnb-int8"
    manifest = base_manifest(backend="bnb", variant=variant, source=source, recipe=rec, overrides=overrides,
                             image_budget=None)
    manifest.update(quant_type=rec.quant_type, double_quant=rec.double_quant, group_size=None,
                    quantized_linear_layers=sum(1 for lin in inv.linears.values()
                                                if module_group(lin.name) in rec.quantize),
                    calibration_data=None)
    with staged_folder(out_dir) as stage:
        stages(f"loading {source.model_id} and quantizing {', '.join(rec.quantize)} to "
               f"{rec.quant_type or 'int8'} on {dev}")
        model_q, processor = quantize_on_load(source.path, rec, dev, getattr(torch, rec.dtype))
        manifest["image_budget"] = ImageBudget.from_processor(processor).as_record()  # as saved with it
        stages("saving (before any forward pass) with the processor and a greedy generation config")
        model_q.save_pretrained(stage)
        del model_q
        processor.save_pretrained(stage)
        manifest["generation_config"] = make_greedy(stage)
        stages("hashing weight files and writing the provenance manifest")
        manifest["weights"] = hash_weights(stage)
        manifest["export"] = {"seconds": round(stages.elapsed, 2), "device": str(dev), "tool": "bitsandbytes",
                              "bytes_on_disk": folder_bytes(stage)}
        write_manifest(stage, manifest)
    return ExportResult(out_dir, manifest, stages.elapsed, folder_bytes(out_dir))
