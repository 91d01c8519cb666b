"""``load_critic(backend="vllm")``: a :class:`~firm_lite.critic.Critic` whose generation runs on
an in-process vLLM engine (:func:`~firm_lite.vllm_backend.parallel.start_engine`).

Everything else is the critic's own: the processor (prompts, image budget) is loaded with
transformers from the same folder, images are decoded and checked by the critic, records are built
by it. The variant decides what vLLM loads: a dtype, vLLM's in-flight bitsandbytes 4-bit (``nf4``)
or an exported GPTQ folder as itself (``gptq_marlin`` on a GPU); anything else is refused with
one line saying to use ``--backend hf``.
"""

from __future__ import annotations

import logging
from dataclasses import replace as dc_replace

from firm_lite.artifact import calibration_warning
from firm_lite.critic import Critic
from firm_lite.errors import UserError
from firm_lite.generation import DecodingConfig
from firm_lite.images import ImageBudget
from firm_lite.settings import CriticSettings
from firm_lite.sources import DEFAULT_MODEL
from firm_lite.vllm_backend.parallel import start_engine

log = logging.getLogger(__name__)

# What each variant is on vLLM: (dtype or None for --dtype, vLLM quantization); exported GPTQ
# folders load as themselves (vLLM reads their quantization_config: gptq_marlin on a GPU).
VLLM_VARIANTS = {"default": (None, None), "fp32": ("fp32", None), "bf16": ("bf16", None),
                 "fp16": ("fp16", None), "nf4": (None, "bitsandbytes")}
VLLM_FOLDER_FAMILIES = ("gptq",)


def load(settings: CriticSettings) -> Critic:
    """The critic on an in-process vLLM engine: firm-lite prepares and records, vLLM generates."""

    from transformers import AutoProcessor

    from firm_lite.device import dtype_name, resolve_device, resolve_dtype
    from firm_lite.sources import resolve_model
    from firm_lite.variants.registry import resolve_variant

    variant = settings.variant
    if variant == "auto":
        raise UserError("--variant auto plans for the transformers backend; with --backend vllm name the "
                        "variant (see `firm-lite plan --backend vllm`)")
    spec, folder = resolve_variant(variant)
    if folder is None and spec.name not in VLLM_VARIANTS or folder is not None and spec.family not in \
            VLLM_FOLDER_FAMILIES:
        raise UserError(f"variant {variant} ({spec.description}) does not run on vLLM: use --backend hf for it; "
                        f"on vLLM: {', '.join(VLLM_VARIANTS)} or an exported GPTQ folder")
    dev = resolve_device(settings.device)
    fixed_dtype, quantization = VLLM_VARIANTS.get(spec.name, (None, None)) if folder is None else (None, None)
    dtype = fixed_dtype or dtype_name(resolve_dtype(settings.dtype, dev))
    options = settings.vllm if quantization is None else dc_replace(settings.vllm, quantization=quantization)
    source = resolve_model(str(folder) if folder is not None and settings.model == DEFAULT_MODEL else settings.model,
                           revision=settings.revision)
    processor = AutoProcessor.from_pretrained(source.path)
    budget = ImageBudget.from_processor(processor, settings.min_pixels, settings.max_pixels)
    drift_warning = calibration_warning(folder)
    if drift_warning:
        log.warning("%s", drift_warning)
    label = "vllm:" + (str(folder) if folder else (f"default:{dtype}" if spec.name == "default" else spec.name))
    critic = Critic(model=None, processor=processor, model_id=source.model_id, variant=label, device=dev,
                    budget=budget, decoding=DecodingConfig(max_new_tokens=settings.max_new_tokens),
                    weights=settings.weights, max_image_pixels=settings.max_image_pixels, settings=settings)
    critic.backend = start_engine(folder or source.path, processor, critic.render, budget, critic.decoding,
                                  dtype=dtype, options=options)
    critic.provenance = {"source": source.as_record(), "variant_family": spec.family,
                         "variant_folder": str(folder) if folder else None, "variant_choice": None,
                         "drift_warning": drift_warning, "backend": critic.backend.provenance}
    return critic
