"""Quantization recipes: TOML files that say exactly what is quantized, how, and what is kept.

A recipe is data (``firm_lite/data/recipes/*.toml``, package data, so a wheel install has the same
recipes as a checkout; ``export/recipes`` in the repo links there), never code: ``firm-lite export --recipe NAME|FILE``
reads one, the quantize-at-load variants ``int8``/``nf4`` read ``bnb-int8``/``bnb-nf4``, and
the fit planner reads them all, so the memory a recipe is planned with is the memory it gets.
Every recipe names all four module groups of a Qwen3-VL critic (:data:`MODULE_GROUPS`) either
under ``quantize`` or under ``keep``. Unknown keys, keys of another backend, and groups a backend
cannot quantize are errors, not silently ignored settings.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError

log = logging.getLogger(__name__)

# Module groups of Qwen3VLForConditionalGeneration -> module-name prefix (transformers 5 layout).
MODULE_GROUPS: dict[str, str] = {
    "decoder": "model.language_model.layers",
    "vision": "model.visual",
    "embeddings": "model.language_model.embed_tokens",
    "lm_head": "lm_head",
}
# What each backend can quantize. A GPTQ checkpoint that plain transformers (optimum) and vLLM
# load has exactly one quantized block list, the decoder layers; bitsandbytes can take any Linear.
QUANTIZABLE: dict[str, frozenset[str]] = {
    "gptq": frozenset({"decoder"}),
    "bnb": frozenset({"decoder", "vision", "lm_head"}),
}
DTYPES = ("bfloat16", "float16", "float32")
# (backend, bits) -> the recipe used when only --bits is given.
DEFAULT_RECIPES: dict[tuple[str, int], str] = {
    ("gptq", 4): "gptq-w4-g128", ("gptq", 8): "gptq-w8", ("bnb", 4): "bnb-nf4", ("bnb", 8): "bnb-int8",
}
# quantize-at-load variant name -> the shipped recipe it quantizes with
LOAD_TIME_RECIPES: dict[str, str] = {"int8": "bnb-int8", "nf4": "bnb-nf4"}

# Keys every recipe has, and the keys only one backend understands.
_COMMON_KEYS = {"name", "backend", "description", "bits", "dtype", "quantize", "keep"}
_BACKEND_KEYS: dict[str, set[str]] = {
    "gptq": {"group_size", "act_order", "sym", "damp_percent", "max_calibration_pairs"},
    "bnb": {"quant_type", "double_quant"},
}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``source``/``sha256`` say which file it came from (``None`` in code)."""

    name: str
    backend: str
    description: str
    bits: int
    quantize: tuple[str, ...]
    keep: tuple[str, ...]
    dtype: str = "bfloat16"
    group_size: int | None = None
    act_order: bool | None = None
    sym: bool | None = None
    damp_percent: float | None = None
    max_calibration_pairs: int | None = None
    quant_type: str | None = None
    double_quant: bool | None = None
    source: str | None = None
    sha256: str | None = None

    @property
    def quantizes_vision(self) -> bool:
        return "vision" in self.quantize

    def settings(self) -> dict[str, Any]:
        """The recipe's effective settings (what the manifest records), without file details."""
        return {k: v for k, v in asdict(self).items() if v is not None and k not in ("source", "sha256")}

    def kept_modules(self) -> list[str]:
        """Module-name prefixes left unquantized."""
        return [MODULE_GROUPS[g] for g in self.keep]

    def with_overrides(self, **overrides: Any) -> tuple[Recipe, dict[str, Any]]:
        """Apply CLI overrides (``None`` = not given); returns the new recipe and what changed."""
        changed = {k: v for k, v in overrides.items() if v is not None and getattr(self, k) != v}
        if not changed:
            return self, {}
        if "quantize" in changed:
            changed["quantize"] = tuple(changed["quantize"])
            changed["keep"] = tuple(g for g in MODULE_GROUPS if g not in changed["quantize"])
        recipe = replace(self, **changed)
        validate(recipe)
        return recipe, {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}


def _fail(where: str, message: str) -> UserError:
    return UserError(f"recipe {where}: {message}")


def _check_type(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        raise _fail(where, f"{key} must be {getattr(kind, '__name__', kind)}, got a boolean")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(where, f"{key} must be {name}, got {value!r}")


def validate(recipe: Recipe) -> None:
    """Check cross-field rules; raise a one-line UserError naming the recipe and the problem."""
    where = recipe.source or recipe.name
    if recipe.backend not in QUANTIZABLE:
        raise _fail(where, f"backend must be one of {sorted(QUANTIZABLE)}, got {recipe.backend!r}")
    if recipe.bits not in (4, 8):
        raise _fail(where, f"bits must be 4 or 8, got {recipe.bits!r}")
    if recipe.dtype not in DTYPES:
        raise _fail(where, f"dtype must be one of {DTYPES}, got {recipe.dtype!r}")
    unknown = [g for g in (*recipe.quantize, *recipe.keep) if g not in MODULE_GROUPS]
    if unknown:
        raise _fail(where, f"unknown module group(s) {unknown}; groups are {list(MODULE_GROUPS)}")
    both = set(recipe.quantize) & set(recipe.keep)
    if both:
        raise _fail(where, f"{sorted(both)} listed under both quantize and keep")
    missing = [g for g in MODULE_GROUPS if g not in recipe.quantize and g not in recipe.keep]
    if missing:
        raise _fail(where, f"{missing} must be listed under quantize or keep (say what happens to every group)")
    refused = sorted(set(recipe.quantize) - QUANTIZABLE[recipe.backend])
    if refused:
        why = {"gptq": "a standard GPTQ checkpoint (transformers/optimum, vLLM) quantizes only the decoder "
                       "layers; use a bnb recipe to quantize the vision tower or lm_head"}
        raise _fail(where, f"{recipe.backend} cannot quantize {refused}: "
                           f"{why.get(recipe.backend, 'not supported')}")
    if recipe.backend == "gptq":
        gs = recipe.group_size
        if gs is None or not (gs == -1 or gs > 0):
            raise _fail(where, f"group_size must be -1 (per channel) or a positive integer, got {gs!r}")
        if recipe.damp_percent is not None and not 0 < recipe.damp_percent < 1:
            raise _fail(where, f"damp_percent must be in (0, 1), got {recipe.damp_percent!r}")
        if recipe.max_calibration_pairs is not None and recipe.max_calibration_pairs < 1:
            raise _fail(where, "max_calibration_pairs must be >= 1")
    if recipe.backend == "bnb" and recipe.bits == 4 and recipe.quant_type not in ("nf4", "fp4"):
        raise _fail(where, f"quant_type must be nf4 or fp4 for 4-bit, got {recipe.quant_type!r}")
    if recipe.backend == "bnb" and recipe.bits == 8 and (recipe.quant_type or recipe.double_quant):
        raise _fail(where, "quant_type/double_quant apply to 4-bit only")


_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "backend": str, "description": str, "bits": int, "dtype": str, "quantize": list,
    "keep": list, "group_size": int, "act_order": bool, "sym": bool, "damp_percent": (float, int),
    "max_calibration_pairs": int, "quant_type": str, "double_quant": bool,
}


def parse_recipe(data: dict[str, Any], where: str, sha256: str | None = None) -> Recipe:
    """A TOML table -> validated :class:`Recipe`; unknown keys are refused."""
    backend = data.get("backend")
    if backend not in _BACKEND_KEYS:
        raise _fail(where, f"backend must be one of {sorted(_BACKEND_KEYS)}, got {backend!r}")
    allowed = _COMMON_KEYS | _BACKEND_KEYS[backend]
    unknown = sorted(set(data) - allowed)
    if unknown:
        other = {k for b, keys in _BACKEND_KEYS.items() if b != backend for k in keys}
        hint = [f"{k} (a {'/'.join(b for b, ks in _BACKEND_KEYS.items() if k in ks)} key)" if k in other else k
                for k in unknown]
        raise _fail(where, f"unknown key(s) {', '.join(hint)}; a {backend} recipe takes {sorted(allowed)}")
    missing = sorted(k for k in ("name", "bits", "quantize", "keep") if k not in data)
    if missing:
        raise _fail(where, f"missing key(s) {missing}")
    for key, value in data.items():
        _check_type(where, key, value, _TYPES[key])
    for key in ("quantize", "keep"):
        if not all(isinstance(g, str) for g in data[key]):
            raise _fail(where, f"{key} must be a list of module-group names")
    values = dict(data, quantize=tuple(data["quantize"]), keep=tuple(data["keep"]))
    if "damp_percent" in values:
        values["damp_percent"] = float(values["damp_percent"])
    values.setdefault("description", "")
    if backend == "gptq":
        values.setdefault("group_size", 128)
        values.setdefault("act_order", False)
        values.setdefault("sym", True)
    elif values["bits"] == 4:
        values.setdefault("quant_type", "nf4")
        values.setdefault("double_quant", True)
    known = {f.name for f in fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in values.items() if k in known}, source=where, sha256=sha256)
    validate(recipe)
    return recipe


def recipes_dir() -> Path:
    """The shipped recipes' folder (package data, found with importlib.resources)."""
    from importlib import resources

    return Path(str(resources.files("firm_lite.data") / "recipes"))


def shipped_recipes() -> dict[str, Path]:
    """Recipe name -> file, for the recipes shipped in the package."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.toml"))}


def load_recipe(name_or_file: str | Path) -> Recipe:
    """A shipped recipe by name, or a TOML file by path."""
    text = str(name_or_file)
    path = Path(text).expanduser()
    if not (path.suffix == ".toml" or path.is_file()):
        shipped = shipped_recipes()
        if text not in shipped:
            known = ", ".join(shipped) or f"none found in {recipes_dir()}"
            raise UserError(f"--recipe {text}: no such recipe file, and not a shipped recipe ({known})")
        path = shipped[text]
    if not path.is_file():
        raise UserError(f"--recipe {text}: file not found")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _fail(str(path), f"not valid TOML ({exc})") from None
    return parse_recipe(data, str(path), hashlib.sha256(raw).hexdigest())


def recipe_for(backend: str, recipe: str | Path | None, bits: int | None) -> Recipe:
    """The recipe an export uses: ``--recipe`` if given, else the default for ``--bits``."""
    if recipe is None:
        bits = 4 if bits is None else bits
        if (backend, bits) not in DEFAULT_RECIPES:
            raise UserError(f"--bits {bits}: {backend} export supports 4 or 8")
        recipe = DEFAULT_RECIPES[(backend, bits)]
    loaded = load_recipe(recipe)
    if loaded.backend != backend:
        raise UserError(f"--recipe {recipe}: a {loaded.backend} recipe; use `firm-lite export {loaded.backend}`")
    return loaded


def warn_if_vision(recipe: Recipe) -> None:
    """Quantizing the vision tower is allowed but risky: say so (a logged warning)."""
    if recipe.quantizes_vision:
        log.warning("recipe %s quantizes the vision tower; image features drift first (run `firm-lite "
                    "calibrate` on the result before trusting it)", recipe.name)
