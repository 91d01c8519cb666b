"""``load_critic(backend="remote")``: a :class:`~firm_lite.critic.Critic` whose generation runs on
OpenAI-compatible servers (:class:`~firm_lite.remote.RemoteEngine`)."""

from __future__ import annotations

from firm_lite.critic import Critic
from firm_lite.errors import UserError
from firm_lite.generation import DecodingConfig
from firm_lite.images import ImageBudget
from firm_lite.remote import RemoteEngine
from firm_lite.settings import CriticSettings


def load(settings: CriticSettings) -> Critic:
    """The critic on OpenAI-compatible servers: firm-lite prepares, renders, parses and records;
    the servers generate. Only the model's processor (tokenizer, chat template, image settings)
    is loaded here, never its weights."""
    from transformers import AutoProcessor

    from firm_lite.sources import resolve_model

    if settings.variant != "default":
        raise UserError(f"--variant {settings.variant}: with --endpoint the server decides the weights; "
                        "drop --variant (the record names the model the server serves)")
    source = resolve_model(settings.model, revision=settings.revision, processor_only=True)
    processor = AutoProcessor.from_pretrained(source.path)
    budget = ImageBudget.from_processor(processor, settings.min_pixels, settings.max_pixels)
    critic = Critic(model=None, processor=processor, model_id=source.model_id, variant="remote", device="remote",
                    budget=budget, decoding=DecodingConfig(max_new_tokens=settings.max_new_tokens),
                    weights=settings.weights, max_image_pixels=settings.max_image_pixels, settings=settings)
    critic.backend = RemoteEngine(settings.remote, processor, critic.render, budget, critic.decoding)
    critic.variant = f"remote:{critic.backend.served_model}"
    critic.provenance = {"source": source.as_record(), "variant_family": "remote", "variant_folder": None,
                         "variant_choice": None, "drift_warning": None, "backend": critic.backend.provenance}
    return critic
