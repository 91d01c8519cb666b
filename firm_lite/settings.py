"""What describes a loaded critic, in one object: :class:`CriticSettings`.

``load_critic`` takes it, and every verb that scores (``score``, ``serve``, ``calibrate``,
``bench``) takes it as its first argument and passes it through, so the settings that decide a
score are declared once, validated once, and recorded the same way everywhere. The CLI builds it
from one set of shared options (:func:`firm_lite.cli.critic_options`).

Fields that change what a score means (model and revision, variant, dtype, image budget,
decoding cap, CME weights, protocol) and fields that only change how it is computed (device,
engine) live together: the cache key of a loaded critic is everything but ``engine`` and
``protocol``, which are views of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from firm_lite.cme import CMEWeights
from firm_lite.errors import UserError
from firm_lite.images import DEFAULT_MAX_IMAGE_PIXELS
from firm_lite.sources import DEFAULT_MODEL

ENGINES = ("auto", "generate")  # auto: the shared-prefix engine where the backend allows it
PROTOCOLS = ("full", "fast")  # full: the reference protocol; fast: score read without reasoning
DTYPES = ("auto", "bf16", "fp16", "fp32")
FAST_SUFFIX = "+fast"  # "<variant>+fast": that variant under the fast protocol (calibrate, bench)


def split_protocol(variant: str, protocol: str = "full") -> tuple[str, str]:
    """``"nf4+fast"`` -> ``("nf4", "fast")``; other names keep ``protocol``."""
    if variant.endswith(FAST_SUFFIX):
        return variant[: -len(FAST_SUFFIX)], "fast"
    return variant, protocol


@dataclass(frozen=True)
class CriticSettings:
    """How to load and run the critic. ``CriticSettings(model="tiny", device="cpu")``.

    ``model``: hub id, local folder or ``tiny``; ``variant``: a registered name (``fp32``,
    ``bf16``, ``nf4``, ...), an exported folder, ``default`` (``dtype`` decides) or ``auto``, any
    of them with ``+fast``; ``min_pixels``/``max_pixels``: the image budget (None: the model's
    processor); ``max_new_tokens``: the answer cap (the reference uses 256); ``w1``/``w2``: CME
    weights; ``max_image_pixels``: the decompression-bomb guard; ``revision``: hub revision;
    ``batch_size``: pairs per forward pass the caller runs (``--variant auto`` plans memory for
    it; the verbs set it from their own batch size); ``memory_cap_gib``: the most GPU memory this
    process may use (``--variant auto`` plans within it and the CUDA allocator is capped to it).
    """

    model: str = DEFAULT_MODEL
    variant: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_new_tokens: int = 256
    w1: float = 0.6
    w2: float = 0.4
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    engine: str = "auto"
    protocol: str = "full"
    batch_size: int = 4
    memory_cap_gib: float | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.dtype in DTYPES, f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}"),
            (self.engine in ENGINES, f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}"),
            (self.protocol in PROTOCOLS, f"protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1 (got {self.max_new_tokens})"),
            (self.max_image_pixels >= 1, f"max_image_pixels must be >= 1 (got {self.max_image_pixels})"),
            (self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})"),
            (self.memory_cap_gib is None or self.memory_cap_gib > 0,
             f"memory cap must be > 0 GiB (got {self.memory_cap_gib})"),
            (all(p is None or p >= 1 for p in (self.min_pixels, self.max_pixels)), "min/max_pixels must be >= 1"),
            (None in (self.min_pixels, self.max_pixels) or self.min_pixels <= self.max_pixels,
             f"min_pixels {self.min_pixels} is over max_pixels {self.max_pixels}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.weights  # noqa: B018 - validates w1/w2 (raises UserError)

    @property
    def weights(self) -> CMEWeights:
        try:
            return CMEWeights(self.w1, self.w2)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    @property
    def load_key(self) -> CriticSettings:
        """The settings that decide which weights and processor are loaded: engine and protocol
        are views of one loaded critic (``nf4+fast`` shares ``nf4``'s weights); the batch size
        matters only to ``--variant auto``'s choice."""
        variant, _ = split_protocol(self.variant, self.protocol)
        batch = self.batch_size if variant == "auto" else CriticSettings.batch_size
        return replace(self, variant=variant, engine="auto", protocol="full", batch_size=batch)

    def replace(self, **changes: Any) -> CriticSettings:
        return replace(self, **changes)

    @classmethod
    def coerce(cls, settings: CriticSettings | str | None = None, **changes: Any) -> CriticSettings:
        """``settings`` (or ``CriticSettings(model=settings)`` for a model name) with ``changes``."""
        if isinstance(settings, str):
            changes = {"model": settings, **changes}
            settings = None
        unknown = sorted(set(changes) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown critic setting(s): {', '.join(unknown)}")
        return replace(settings, **changes) if settings is not None else cls(**changes)
