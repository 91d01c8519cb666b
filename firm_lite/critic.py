"""The critic: a loaded model + processor that turns edit pairs into records.

:func:`load_critic` resolves the model source and variant from a
:class:`~firm_lite.settings.CriticSettings`, loads once per process (cached by those settings),
and pins the image budget and decoding settings. :meth:`Critic.score` decodes each
pair's images once, renders both modes through :mod:`firm_lite.prompts`, generates in batches,
and returns one record per pair; a pair whose images cannot be used becomes an error record and
the others go on.

The generation itself runs on one of three backends (``CriticSettings.backend``): ``hf``, the
transformers model in this process (firm-lite's shared-prefix engine); ``vllm``, an in-process
vLLM engine (:mod:`firm_lite.vllm_backend`); ``remote``, OpenAI-compatible servers
(:mod:`firm_lite.remote`). Everything around generation (texts checked, images decoded at the
budget, prompts rendered, answers parsed, records built) is this module's, whatever the backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import import_module
from typing import Any

from firm_lite.artifact import calibration_warning
from firm_lite.cme import CMEWeights
from firm_lite.errors import PairError
from firm_lite.generation import DecodingConfig, generate_answers
from firm_lite.images import DEFAULT_MAX_IMAGE_PIXELS, ImageBudget, load_image
from firm_lite.prompts import MODES, render_text
from firm_lite.records import EditPair, ModeScore, build_record, check_text
from firm_lite.settings import FAST_SUFFIX, CriticSettings, split_protocol
from firm_lite.sources import DEFAULT_MODEL

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 4000


@dataclass
class Critic:
    """A loaded critic. Thread-safe for callers: one generation runs at a time."""

    model: Any
    processor: Any
    model_id: str
    variant: str
    device: Any
    budget: ImageBudget
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    weights: CMEWeights = field(default_factory=CMEWeights)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    provenance: dict[str, Any] = field(default_factory=dict)
    engine: str = "auto"  # "auto": shared-prefix engine when the backend allows; "generate": plain HF generate
    protocol: str = "full"  # "full": the reference protocol; "fast": score read without reasoning
    settings: CriticSettings = field(default_factory=CriticSettings)  # what it was loaded with
    backend: Any = None  # a vLLM or remote engine that generates instead of ``model`` (None: transformers)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def context(self) -> dict[str, Any]:
        context = {"model": self.model_id, "variant": self.variant, "image_budget": self.budget.as_record()}
        if getattr(self.backend, "probs_exact", True) is False:  # a remote server without logprob_token_ids
            context["probs"] = "partial"
        return context

    @property
    def supports_teacher_forcing(self) -> bool:
        """Calibration's teacher forcing: the transformers model, or a backend that has it (vLLM)."""
        return self.model is not None or hasattr(self.backend, "forced_readout")

    def render(self, mode: str, instruction: str, requirement: str = "") -> str:
        """The exact text (with image placeholders) sent for one mode."""
        return render_text(self.processor, mode, instruction, requirement)

    def prepare(self, pair: EditPair) -> tuple[Any, Any]:
        """Check the pair's texts and decode both images, each once and shrunk to what this
        critic's budget uses (raises PairError naming the problem)."""
        check_text(pair.id, "id")
        instruction = check_text(pair.instruction, f"pair {pair.id}: instruction")
        check_text(pair.requirement, f"pair {pair.id}: requirement")
        if not instruction.strip():
            raise PairError(f"pair {pair.id}: empty instruction")
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise PairError(f"pair {pair.id}: instruction is {len(instruction)} characters "
                             f"(limit {MAX_INSTRUCTION_CHARS})")
        return (load_image(pair.source, self.max_image_pixels, self.budget),
                load_image(pair.edited, self.max_image_pixels, self.budget))

    @property
    def uses_engine(self) -> bool:
        from firm_lite.engine import supports_engine

        return self.model is not None and self.engine != "generate" and supports_engine(self.model)

    def score_modes(self, items: list[tuple[EditPair, Any, Any]], modes: Iterable[str] = MODES,
                    timings: dict[str, float] | None = None) -> dict[str, list[ModeScore]]:
        """Score prepared (pair, source_img, edited_img) items in every mode, batched.
        ``timings`` (engine only) collects seconds per phase, for the benchmark."""
        modes = list(modes)
        if self.backend is not None:
            return self.backend.score_modes(items, modes, timings, protocol=self.protocol)
        if self.uses_engine:
            from firm_lite.engine import score_batch, split_after_images

            prefixes, suffixes = [], {m: [] for m in modes}
            for pair, _, _ in items:
                for m in modes:
                    prefix, suffix = split_after_images(self.render(m, pair.instruction, pair.requirement))
                    suffixes[m].append(suffix)
                prefixes.append(prefix)
            images = [im for _, s, e in items for im in (s, e)]
            with self._lock:
                return score_batch(self.model, self.processor, prefixes, suffixes, images, self.budget,
                                   self.decoding, self.protocol, timings)
        if self.protocol != "full":
            raise ValueError("the fast protocol needs the shared-prefix engine (a transformers backend)")
        out: dict[str, list[ModeScore]] = {}
        for mode in modes:
            texts = [self.render(mode, p.instruction, p.requirement) for p, _, _ in items]
            images = [im for _, s, e in items for im in (s, e)]
            with self._lock:
                out[mode] = generate_answers(self.model, self.processor, texts, images,
                                             self.budget, self.decoding)
        return out

    def score_isolated(self, items: list[tuple[EditPair, Any, Any]], modes: Iterable[str] = MODES
                       ) -> list[dict[str, ModeScore] | Exception]:
        """:meth:`score_modes` where one item cannot fail the others: if the batch raises, its
        items are scored one by one and only the guilty item gets the exception (servers
        co-batch different clients; a manifest row must not abort the run)."""
        modes = tuple(modes)
        try:
            out = self.score_modes(items, modes)
            return [{m: out[m][k] for m in modes} for k in range(len(items))]
        except Exception as exc:  # noqa: BLE001 - isolated below; a lone item's failure is returned
            if len(items) == 1:
                log.warning("scoring pair %r failed: %s: %s", items[0][0].id, type(exc).__name__, exc,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                return [exc]
            log.warning("a batch of %d items failed (%s: %s); scoring them one by one", len(items),
                        type(exc).__name__, exc)
        return [result for item in items for result in self.score_isolated([item], modes)]

    def score(self, pairs: Iterable[EditPair], batch_size: int = 4,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Score pairs; returns records in input order (``on_record`` sees each as it is done)."""
        return list(self.iter_score(pairs, batch_size, on_record))

    def iter_score(self, pairs: Iterable[EditPair], batch_size: int = 4,
                   on_record: Callable[[dict[str, Any]], None] | None = None) -> Iterator[dict[str, Any]]:
        batch: list[EditPair] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) >= batch_size:
                yield from self._score_batch(batch, on_record)
                batch = []
        if batch:
            yield from self._score_batch(batch, on_record)

    def _score_batch(self, batch: list[EditPair], on_record: Callable[[dict[str, Any]], None] | None
                     ) -> Iterator[dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        ready: list[tuple[int, tuple[EditPair, Any, Any]]] = []
        for i, pair in enumerate(batch):
            try:
                src, edt = self.prepare(pair)
                ready.append((i, (pair, src, edt)))
            except PairError as exc:
                records[i] = build_record(pair.id, self.context, None, None, self.weights, error=str(exc))
        if ready:
            scored = self.score_isolated([item for _, item in ready])
            for (i, (pair, _, _)), result in zip(ready, scored, strict=True):
                if isinstance(result, Exception):
                    records[i] = build_record(pair.id, self.context, None, None, self.weights,
                                              error=f"pair {pair.id}: scoring failed "
                                                    f"({type(result).__name__}: {result})")
                else:
                    records[i] = build_record(pair.id, self.context, result["execution"],
                                              result["consistency"], self.weights)
        for i in range(len(batch)):
            if on_record:
                on_record(records[i])
            yield records[i]


# Backends other than transformers sit a layer up and are imported by name only (as variants are).
BACKEND_LOADERS = {"vllm": "firm_lite.vllm_backend.loader", "remote": "firm_lite.remote.loader"}

_CACHE: dict[CriticSettings, Critic] = {}
_CACHE_LOCK = threading.Lock()


def load_critic(settings: CriticSettings | str | None = None, /, **changes: Any) -> Critic:
    """Load (once per process for the same settings) a critic ready to score.

    ``load_critic(CriticSettings(model="tiny", device="cpu"))``, or the same as keywords:
    ``load_critic("tiny", device="cpu")`` (see :class:`~firm_lite.settings.CriticSettings`).
    ``variant="auto"`` picks the most accurate variant that fits the device's free memory; the
    reason is logged and kept in ``provenance["variant_choice"]``.
    """
    settings = CriticSettings.coerce(settings, **changes)
    _, protocol = split_protocol(settings.variant, settings.protocol)
    key = settings.load_key
    with _CACHE_LOCK:
        if key in _CACHE:
            # same weights, processor and settings: share them; engine/protocol are per view
            return _view(_CACHE[key], settings.engine, protocol)
        critic = _load(key)
        _CACHE[key] = critic
        return _view(critic, settings.engine, protocol)


def _load(settings: CriticSettings) -> Critic:
    if settings.backend in BACKEND_LOADERS:  # they build a Critic whose ``backend`` generates
        return import_module(BACKEND_LOADERS[settings.backend]).load(settings)
    return _load_hf(settings)


def _load_hf(settings: CriticSettings) -> Critic:
    from firm_lite.device import cap_memory, dtype_name, resolve_device, resolve_dtype
    from firm_lite.sources import resolve_model
    from firm_lite.variants.registry import LoadRequest, backend_record, resolve_variant

    model, variant = settings.model, settings.variant
    dev = resolve_device(settings.device)
    torch_dtype = resolve_dtype(settings.dtype, dev)
    if settings.memory_cap_gib is not None:
        cap_memory(dev, settings.memory_cap_gib)
    choice = None
    if variant == "auto":  # the most accurate variant that fits this device's free memory
        from firm_lite.plan import auto_image_size, choose_variant

        variant, choice = choose_variant(model, dev, image_size=auto_image_size(settings.max_pixels),
                                         pairs=settings.batch_size, cap_gib=settings.memory_cap_gib,
                                         dtype=dtype_name(torch_dtype))
        log.info("%s", choice)
    spec, folder = resolve_variant(variant)
    # An exported folder carries its own config and processor: unless --model names another
    # checkpoint it is its own source (no hub lookup for weights the backend does not use).
    source = resolve_model(str(folder) if folder is not None and model == DEFAULT_MODEL else model,
                           revision=settings.revision)
    with _no_weight_loading_bar():
        loaded_model, processor = spec.load(LoadRequest(source=source, device=dev, dtype=torch_dtype,
                                                        folder=folder))
    drift_warning = calibration_warning(folder)
    if drift_warning:  # said once per load: a score from an ungated variant must not pass unnoticed
        log.warning("%s", drift_warning)
    budget = ImageBudget.from_processor(processor, settings.min_pixels, settings.max_pixels)
    label = str(folder) if folder else (f"{spec.name}:{dtype_name(torch_dtype)}"
                                        if spec.name == "default" else spec.name)
    return Critic(model=loaded_model, processor=processor, model_id=source.model_id,
                  variant=label, device=dev, budget=budget,
                  decoding=DecodingConfig(max_new_tokens=settings.max_new_tokens),
                  weights=settings.weights, max_image_pixels=settings.max_image_pixels,
                  provenance={"source": source.as_record(), "variant_family": spec.family,
                              "variant_folder": str(folder) if folder else None,
                              "variant_choice": choice, "drift_warning": drift_warning,
                              "backend": backend_record(loaded_model)},
                  settings=settings)


@contextmanager
def _no_weight_loading_bar() -> Iterator[None]:
    """transformers draws a "Loading weights" bar for a step that takes seconds from a local
    folder; it is noise on a scoring run's screen. Downloads (resolve_model) keep their bars."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _view(critic: Critic, engine: str, protocol: str) -> Critic:
    """The shared loaded critic under an engine/protocol; a fast view is labelled as such."""
    label = critic.variant + (FAST_SUFFIX if protocol == "fast" else "")
    return replace(critic, engine=engine, protocol=protocol, variant=label,
                   settings=critic.settings.replace(engine=engine, protocol=protocol))


def release_critic(critic: Critic) -> None:
    """Forget a loaded critic so its memory can be freed once the caller drops it too
    (calibration loads the reference and each variant one after another)."""
    with _CACHE_LOCK:
        for key in [k for k, c in _CACHE.items()
                    if (c.model is critic.model if critic.backend is None else c.backend is critic.backend)]:
            del _CACHE[key]
    if critic.backend is not None:  # vLLM's engine processes hold the weights: stop them now
        critic.backend.close()
