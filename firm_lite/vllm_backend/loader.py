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


def load(settings: CriticSettings) -> Critic:
    """The critic on an in-process vLLM engine: firm-lite prepares and records, vLLM generates."""

    from transformers import AutoProcessor

    from firm_lite.device import dtype_name, resolve_device, resolve_dtype
    from firm_lite.plan.vllm import vllm_candidates
    from firm_lite.sources import resolve_model
    from firm_lite.variants.registry import resolve_variant

    variant = settings.variant
    if variant == "auto":
        raise UserError("--variant auto plans for the transformers backend; with --backend vllm name the "
                        "variant (see `firm-lite plan --backend vllm`)")
    spec, folder = resolve_variant(variant)
    dev = resolve_device(settings.device)
    dtype = dtype_name(resolve_dtype(settings.dtype, dev))
    # which variants vLLM runs, and how, is the planner's table (one source for plan and load); the
    # checkpoint at --dtype and an exported GPTQ folder (vLLM reads its quantization_config) load as themselves
    as_itself = spec.name in ("default", "gptq")
    candidate = None if as_itself else next((c for c in vllm_candidates(dtype) if c.variant == spec.name), None)
    if not as_itself and (candidate is None or candidate.why_not):
        why = f": {candidate.why_not}" if candidate else ""
        raise UserError(f"variant {variant} ({spec.description}) does not run on vLLM: use --backend hf for it{why}")
    quantization = candidate.quantization if candidate else None
    if spec.family == "reference" and spec.name != "default":
        dtype = spec.name  # fp32, bf16, fp16: the variant is the dtype
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
