"""The vLLM plugin firm-lite ships: registers :data:`ARCHITECTURE`, firm-lite's Qwen3-VL class.

vLLM calls :func:`register` in each of its processes (engine, workers, API server) through the
``vllm.general_plugins`` entry point of firm-lite's package metadata, the documented way to add a
model to vLLM. Registering a *new* architecture name changes nothing for other vLLM users: only a
load that asks for it (firm-lite's engine, or ``vllm serve --hf-overrides
'{"architectures": ["FirmLiteQwen3VLForConditionalGeneration"]}'``) gets it. The class is named by
string, so vLLM imports it only when a model uses it.
"""

from __future__ import annotations

ARCHITECTURE = "FirmLiteQwen3VLForConditionalGeneration"
MODEL_CLASS = f"firm_lite.vllm_backend.model:{ARCHITECTURE}"
ENTRY_POINT_GROUP = "vllm.general_plugins"
ENTRY_POINT = "firm_lite.vllm_backend.plugin:register"
# Where the model class writes its weight audit (JSON) when set: vLLM's processes inherit the
# environment of the process that starts them, so the engine learns what the worker loaded, or
# why it refused, without any code or pickle crossing the process boundary.
AUDIT_FILE_ENV = "FIRM_LITE_WEIGHT_AUDIT_FILE"


def register() -> None:
    """Add firm-lite's model class to vLLM's registry (idempotent: vLLM may call it repeatedly)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def installed() -> bool:
    """Whether vLLM will find :func:`register` (firm-lite's entry point is in the environment)."""
    from importlib.metadata import entry_points

    return any(ep.value == ENTRY_POINT for ep in entry_points(group=ENTRY_POINT_GROUP))
