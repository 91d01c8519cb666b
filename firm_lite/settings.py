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

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from firm_lite.cme import CMEWeights
from firm_lite.errors import UserError
from firm_lite.images import DEFAULT_MAX_IMAGE_PIXELS
from firm_lite.sources import DEFAULT_MODEL

ENGINES = ("auto", "generate")  # auto: the shared-prefix engine where the backend allows it
PROTOCOLS = ("full", "fast")  # full: the reference protocol; fast: score read without reasoning
DTYPES = ("auto", "bf16", "fp16", "fp32")
BACKENDS = ("hf", "vllm", "remote")
FAST_SUFFIX = "+fast"  # "<variant>+fast": that variant under the fast protocol (calibrate, bench)
BACKEND_PREFIXES = ("vllm:",)  # "vllm:<variant>": that variant on the vLLM backend (calibrate, bench)


def require_all(checks: list[tuple[bool, str]]) -> None:
    """UserError with the message of the first check that fails (settings validate in one place)."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def split_protocol(variant: str, protocol: str = "full") -> tuple[str, str]:
    """``"nf4+fast"`` -> ``("nf4", "fast")``; other names keep ``protocol``."""
    if variant.endswith(FAST_SUFFIX):
        return variant[: -len(FAST_SUFFIX)], "fast"
    return variant, protocol


def split_backend(variant: str, backend: str = "hf") -> tuple[str, str]:
    """``"vllm:fp32"`` -> ``("fp32", "vllm")``; other names keep ``backend``."""
    for prefix in BACKEND_PREFIXES:
        if variant.startswith(prefix):
            return variant[len(prefix):] or "default", prefix[:-1]
    return variant, backend


@dataclass(frozen=True)
class VllmOptions:
    """How the vLLM backend runs, not what a score means (recorded in provenance, not in a
    record's identity). ``kv_cache_gib``: KV cache size (None: 2 GiB on a CPU; on a GPU what
    ``gpu_memory_utilization`` leaves after the weights); ``cpu_threads_bind``: the CPU worker's
    OpenMP cores (vLLM's ``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``"0-1"``; None: vLLM's default);
    ``tensor_parallel_size``: GPUs one engine spans (a model that does not fit one card);
    ``data_parallel_size``: independent engines, one per GPU (or per CPU core group), each
    scoring its share of every batch; ``quantization``: vLLM's in-flight quantization (the variant
    sets it: ``nf4`` -> ``bitsandbytes``)."""

    kv_cache_gib: float | None = None
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 16384
    max_num_seqs: int = 128
    cpu_threads_bind: str | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    quantization: str | None = None  # vLLM's in-flight quantization; set by the variant (nf4 -> bitsandbytes)

    def __post_init__(self) -> None:
        checks = [
            (self.kv_cache_gib is None or self.kv_cache_gib > 0, f"KV cache must be > 0 GiB (got {self.kv_cache_gib})"),
            (0 < self.gpu_memory_utilization <= 1,
             f"gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})"),
            (self.max_num_batched_tokens >= 1 and self.max_num_seqs >= 1, "vLLM batch limits must be >= 1"),
            (self.tensor_parallel_size >= 1, f"tensor parallel size must be >= 1 (got {self.tensor_parallel_size})"),
            (self.data_parallel_size >= 1, f"data parallel size must be >= 1 (got {self.data_parallel_size})"),
        ]
        require_all(checks)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RemoteOptions:
    """The remote backend: OpenAI-compatible servers (``vllm serve`` of the critic) to score
    against. ``endpoints``: base URLs (``http://host:8000`` or ``.../v1``), requests spread over
    them; ``api_key``: sent as a Bearer token (never recorded); ``timeout_s``: per request;
    ``retries``: attempts after the first on connection errors, timeouts, 429 and 5xx, with
    exponential backoff; ``concurrency``: requests in flight per endpoint."""

    endpoints: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 300.0
    retries: int = 4
    concurrency: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, (list, str)):
            object.__setattr__(self, "endpoints", (self.endpoints,) if isinstance(self.endpoints, str)
                               else tuple(self.endpoints))
        checks = [
            (all(e.startswith(("http://", "https://")) for e in self.endpoints),
             f"endpoint must be an http(s) URL (got {', '.join(e for e in self.endpoints if '://' not in e)})"),
            (self.timeout_s > 0, f"endpoint timeout must be > 0 s (got {self.timeout_s})"),
            (self.retries >= 0, f"retries must be >= 0 (got {self.retries})"),
            (self.concurrency >= 1, f"concurrency must be >= 1 (got {self.concurrency})"),
        ]
        require_all(checks)

    def as_record(self) -> dict[str, Any]:
        """Without the key."""
        record = asdict(self)
        record.pop("api_key")
        record["endpoints"] = list(self.endpoints)
        return record


@dataclass(frozen=True)
class CriticSettings:
    """How to load and run the critic. ``CriticSettings(model="tiny", device="cpu")``.

    ``model``: hub id, local folder or ``tiny``; ``variant``: a registered name (``fp32``,
    ``bf16``, ``nf4``, ...), an exported folder, ``default`` (``dtype`` decides) or ``auto``, any
    of them with ``+fast``; ``min_pixels``/``max_pixels``: the image budget (None: the model's
    processor); ``max_new_tokens``: the answer cap (the reference uses 256); ``w1``/``w2``: CME
    weights; ``max_image_pixels``: the decompression-bomb guard; ``revision``: hub revision;
    ``backend``: ``hf``, ``vllm`` or ``remote`` (``vllm``/``remote``: the options in ``vllm``/``remote``);
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
    backend: str = "hf"
    vllm: VllmOptions = field(default_factory=VllmOptions)
    remote: RemoteOptions = field(default_factory=RemoteOptions)

    def __post_init__(self) -> None:
        # dicts (asdict() of settings sent to Ray workers) become their option classes again
        for name, cls in (("vllm", VllmOptions), ("remote", RemoteOptions)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        checks = [
            (self.dtype in DTYPES, f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}"),
            (self.engine in ENGINES, f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}"),
            (self.backend in BACKENDS, f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}"),
            (self.backend != "remote" or bool(self.remote.endpoints),
             "the remote backend needs at least one endpoint URL (--endpoint)"),
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
        require_all(checks)
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
        variant, backend = split_backend(variant, self.backend)
        batch = self.batch_size if variant == "auto" else CriticSettings.batch_size
        return replace(self, variant=variant, backend=backend, engine="auto", protocol="full", batch_size=batch)

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
