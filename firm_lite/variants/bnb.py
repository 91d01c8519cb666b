"""bitsandbytes variants: ``int8`` and ``nf4`` quantized at load time, and exported ``bnb`` folders.

``int8``/``nf4`` quantize the reference checkpoint while it loads (nothing to export first; the
load is slower and the result is not a file). Their settings are the shipped recipes
``bnb-int8``/``bnb-nf4``, the same ones ``firm-lite export bnb`` writes to disk, so a load-time
variant and its exported folder hold the same weights. Exported folders are verified against their
manifest before loading. bitsandbytes is imported only inside the loaders.
"""

from __future__ import annotations

from typing import Any

from firm_lite.errors import missing_extra
from firm_lite.variants.registry import LoadRequest, VariantSpec, register

# Load-time variant -> the recipe that defines it.


def require_bnb() -> None:
    """One-line error when the bnb extra is missing (checked without importing it)."""
    from importlib.util import find_spec

    if find_spec("bitsandbytes") is None:
        raise missing_extra("bnb", "bitsandbytes")


def bnb_config(recipe: Any, compute_dtype: Any) -> Any:
    """``BitsAndBytesConfig`` for a bnb recipe: what it keeps becomes ``llm_int8_skip_modules``."""
    from transformers import BitsAndBytesConfig

    skip = recipe.kept_modules()
    if recipe.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=recipe.quant_type,
                              bnb_4bit_use_double_quant=bool(recipe.double_quant),
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)


def quiet_int8_cast_warning() -> None:
    """LLM.int8 logs "inputs will be cast from bfloat16 to float16" on every forward pass: once
    per decoded token. It is expected for bf16 compute, so the loader raises that one logger's level."""
    import logging

    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def device_map(device: Any) -> dict[str, str]:
    return {"": str(device)}


def quantize_on_load(path: Any, recipe: Any, device: Any, dtype: Any) -> tuple[Any, Any]:
    """Load the checkpoint at ``path`` and quantize it with ``recipe`` on the way in."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from firm_lite.recipes import warn_if_vision

    require_bnb()
    quiet_int8_cast_warning()
    warn_if_vision(recipe)
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        path, quantization_config=bnb_config(recipe, dtype), dtype=dtype, device_map=device_map(device))
    return model.eval(), processor


def _load_time(name: str):
    def load(request: LoadRequest) -> tuple[Any, Any]:
        from firm_lite.recipes import LOAD_TIME_RECIPES, load_recipe

        return quantize_on_load(request.source.path, load_recipe(LOAD_TIME_RECIPES[name]), request.device,
                                request.dtype)
    return load


def load_bnb_folder(request: LoadRequest) -> tuple[Any, Any]:
    """An exported bitsandbytes folder: verified, then loaded as saved (the quantization config
    travels in its config.json, the kept parts keep their saved dtype)."""
    from firm_lite.artifact import check_exported_folder

    manifest = check_exported_folder(request.folder, "bnb") or {}
    require_bnb()
    quiet_int8_cast_warning()
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    # The kept parts stay in the dtype they were saved in (the 4-bit compute dtype is fixed in
    # config.json; casting only the kept parts would mix dtypes inside the vision tower).
    saved = manifest.get("recipe", {}).get("settings", {}).get("dtype")
    processor = AutoProcessor.from_pretrained(request.folder)
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        request.folder, dtype=getattr(torch, saved) if saved else "auto", device_map=device_map(request.device))
    return model.eval(), processor


register(VariantSpec("int8", "bnb", "bitsandbytes LLM.int8 of the decoder, quantized at load (recipe bnb-int8)",
                     _load_time("int8"), weight_bits=8, accuracy_rank=10, extra="bnb"))
register(VariantSpec("nf4", "bnb", "bitsandbytes NF4 + double quant of the decoder, quantized at load "
                     "(recipe bnb-nf4)", _load_time("nf4"), weight_bits=4, accuracy_rank=20, extra="bnb"))
register(VariantSpec("bnb", "bnb", "exported bitsandbytes folder (firm-lite export bnb)", load_bnb_folder,
                     weight_bits=4, accuracy_rank=20, extra="bnb", from_folder=True))
