"""Variant registry (core): every way of loading a critic, behind one load signature.

A variant is a named recipe for turning a :class:`~firm_lite.sources.ModelSource` into a
``(model, processor)`` pair on a device: the reference precisions (``bf16``, ``fp16``, ``fp32``),
quantize-at-load backends, and exported folders (which carry a ``firm_lite_variant.json`` naming
their backend). Backends register themselves with :func:`register`; nothing here branches on
backend names. Backend modules import their heavy libraries inside ``load`` only.

The registry is core (the critic resolves variants through it); the backends that register
here sit one layer up, in this package's other modules, and are imported by name only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from firm_lite.artifact import read_variant_manifest
from firm_lite.errors import UserError

# Modules whose import registers built-in backends (kept lazy: imported on first lookup).
_BUILTIN_MODULES: list[str] = ["firm_lite.variants.reference", "firm_lite.variants.noisy",
                               "firm_lite.variants.onnx", "firm_lite.variants.bnb", "firm_lite.variants.gptq"]


# A backend may record what it chose on this machine (execution providers, kernel, dtype) as a
# JSON-able dict in this attribute of the model it returns; the critic keeps it in its provenance.
BACKEND_RECORD = "firm_lite_backend"


def backend_record(model: Any) -> dict[str, Any] | None:
    record = getattr(model, BACKEND_RECORD, None)
    return dict(record) if isinstance(record, dict) else None


@dataclass(frozen=True)
class LoadRequest:
    """Everything a backend needs to load: same shape for every backend."""

    source: Any  # ModelSource of the reference checkpoint (or of the exported folder)
    device: Any  # torch.device
    dtype: Any  # torch dtype for unquantized parts
    folder: Path | None = None  # exported variant folder, when loading one
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantSpec:
    """A registered variant. ``weight_bits`` feeds the fit planner; ``accuracy_rank`` orders
    variants for ``--variant auto`` (lower is closer to the reference)."""

    name: str
    family: str
    description: str
    load: Callable[[LoadRequest], tuple[Any, Any]]
    weight_bits: float = 16.0
    accuracy_rank: int = 0
    extra: str | None = None
    from_folder: bool = False  # True: loads an exported folder rather than quantizing at load


_REGISTRY: dict[str, VariantSpec] = {}
_loaded = False


def register(spec: VariantSpec) -> VariantSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"variant {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def add_builtin_module(module: str) -> None:
    """Let a backend package add itself to the lazily imported built-ins."""
    if module not in _BUILTIN_MODULES:
        _BUILTIN_MODULES.append(module)


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for module in list(_BUILTIN_MODULES):
            import_module(module)
        _loaded = True


def registry() -> dict[str, VariantSpec]:
    _ensure_loaded()
    return dict(_REGISTRY)


def resolve_variant(name_or_path: str) -> tuple[VariantSpec, Path | None]:
    """A registered name, ``backend:DIR``, or an exported folder -> (spec, folder)."""
    specs = registry()
    if name_or_path in specs and not specs[name_or_path].from_folder:
        return specs[name_or_path], None
    backend, sep, rest = name_or_path.partition(":")
    if sep and backend in specs and specs[backend].from_folder:
        return specs[backend], Path(rest)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        manifest = read_variant_manifest(folder)
        backend = manifest.get("backend")
        if backend not in specs:
            raise UserError(f"{folder}: variant backend {backend!r} is unknown to this firm-lite "
                            f"(known: {', '.join(sorted(specs))})")
        return specs[backend], folder
    names = ", ".join(sorted(n for n, s in specs.items() if not s.from_folder))
    raise UserError(f"--variant {name_or_path}: not a variant name ({names}, auto) nor an exported folder")
