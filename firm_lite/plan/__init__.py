"""Fit planner: how much memory each variant of a critic needs, and which one to load.

Weight memory is exact, not a rule of thumb: the model is built from its config on the meta
device (no weight is read or downloaded) and every parameter is priced by the layout its variant
stores it in: dense at 2 or 4 bytes, GPTQ ``qweight``/``qzeros``/``scales``/``g_idx`` tensors, or
bitsandbytes packed weights plus their quantization constants. Which modules are quantized comes
from the same recipes the exports use. For the default model the published Qwen3-VL-8B config
ships with the package (``firm_lite/configs/qwen3_vl_8b.json``), so planning works offline.

KV cache and activations are estimates for a batch of edit pairs (one by default) at a given
image size: both modes' conversations of every pair in one batch (no prefix sharing), each holding
the prompt, two images and 256 new tokens; SDPA/flash attention (no seq x seq score matrix); they
grow linearly with the batch. :func:`plan` returns the rows that ``firm-lite plan`` prints;
:func:`choose_variant` is ``--variant auto``, planned for the batch size the caller will run and
within a memory cap when one is set.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.sources import DEFAULT_MODEL

GIB = 1024**3
DEFAULT_IMAGE_SIZE = (1024, 1024)
RUNTIME_RESERVE_BYTES = GIB // 2  # CUDA context, allocator slack, processor tensors
MAX_NEW_TOKENS = 256
CHARS_PER_TOKEN = 3.5  # English prompt text in Qwen's BPE (conservative)
SCAFFOLD_TOKENS = 64  # chat template, instruction, vision start/end markers
# Qwen3-VL processor budget (min/max pixels) when no processor config is at hand.
QWEN3_VL_BUDGET = (65536, 16777216)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "float32": 4, "bfloat16": 2, "float16": 2}
_DEFAULT_MODELS = {DEFAULT_MODEL, "qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct"}


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class Inventory:
    """Every parameter of a model: its Linear layers (by module name) and the rest (name -> numel)."""

    label: str
    linears: dict[str, Linear]
    others: dict[str, int]
    text: dict[str, Any]
    vision: dict[str, Any]
    budget: tuple[int, int]

    @property
    def parameters(self) -> int:
        return (sum(lin.in_features * lin.out_features + lin.bias * lin.out_features for lin in self.linears.values())
                + sum(self.others.values()))


@dataclass(frozen=True)
class PlanRow:
    variant: str
    how: str
    weights: int
    kv_cache: int
    activations: int
    reserve: int
    fits: bool | None

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.reserve

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _budget_from_folder(folder: Path) -> tuple[int, int]:
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))
            size = (data.get(key) if key else data) or {}
            size = size.get("size") or {}
            if "shortest_edge" in size and "longest_edge" in size:
                return int(size["shortest_edge"]), int(size["longest_edge"])
    return QWEN3_VL_BUDGET


def model_config(model: str = DEFAULT_MODEL) -> tuple[dict[str, Any], str, tuple[int, int]]:
    """(config dict, label, image budget): shipped 8B shape for the default model, else a local folder's."""
    if model in _DEFAULT_MODELS:
        text = resources.files("firm_lite.configs").joinpath("qwen3_vl_8b.json").read_text("utf-8")
        return json.loads(text), f"{DEFAULT_MODEL} (Qwen3-VL-8B shape, shipped config)", QWEN3_VL_BUDGET
    from firm_lite.sources import resolve_model

    source = resolve_model(model, allow_download=False)
    return (json.loads((source.path / "config.json").read_text("utf-8")), source.model_id,
            _budget_from_folder(source.path))


@lru_cache(maxsize=8)
def _inventory(config_json: str, label: str, budget: tuple[int, int]) -> Inventory:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    linears: dict[str, Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linears[name] = Linear(name, module.in_features, module.out_features, module.bias is not None)
    others = {}
    for name, param in model.named_parameters():
        owner, _, attr = name.rpartition(".")
        if owner not in linears:
            others[name] = param.numel()
    return Inventory(label, linears, others, config.text_config.to_dict(), config.vision_config.to_dict(), budget)


def inventory(model: str = DEFAULT_MODEL) -> Inventory:
    """The parameter inventory of ``model``, built on the meta device (cached per config)."""
    config, label, budget = model_config(model)
    return _inventory(json.dumps(config, sort_keys=True), label, budget)


def module_group(name: str) -> str | None:
    """Which recipe module group a module/parameter name belongs to (None: norms, rotary, ...)."""
    from firm_lite.recipes import MODULE_GROUPS

    for group, prefix in MODULE_GROUPS.items():
        if name == prefix or name.startswith(prefix + "."):
            return group
    return None


# ---- per-layout pricing of one quantized Linear (bytes it occupies in memory) -----------------

def gptq_linear_bytes(lin: Linear, bits: int, group_size: int) -> int:
    """qweight int32 [in*bits/32, out] + qzeros int32 [groups, out*bits/32] + fp16 scales
    [groups, out] + int32 g_idx [in] (the GPTQ checkpoint layout transformers and vLLM load)."""
    groups = 1 if group_size == -1 else math.ceil(lin.in_features / group_size)
    words = 32 // bits
    qweight = math.ceil(lin.in_features / words) * lin.out_features * 4
    qzeros = groups * math.ceil(lin.out_features / words) * 4
    return qweight + qzeros + groups * lin.out_features * 2 + lin.in_features * 4


def bnb_linear_bytes(lin: Linear, bits: int, double_quant: bool, blocksize: int = 64) -> int:
    """int8: weight + fp32 row scales (SCB). 4-bit: packed nibbles + absmax per block of 64
    (fp32, or uint8 + fp32 per 256 blocks + a 256-entry fp32 code with double quantization)
    + the 16-entry fp32 quant map."""
    n = lin.in_features * lin.out_features
    if bits == 8:
        return n + 4 * lin.out_features
    blocks = math.ceil(n / blocksize)
    absmax = blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 4 if double_quant else 4 * blocks
    return math.ceil(n / 2) + absmax + 16 * 4


def weight_bytes(inv: Inventory, recipe: Any | None, dense_bytes: int) -> int:
    """Weight memory of ``inv`` under ``recipe`` (None: every parameter dense at ``dense_bytes``)."""
    quantized = set(recipe.quantize) if recipe is not None else set()
    total = sum(n * dense_bytes for n in inv.others.values())
    for lin in inv.linears.values():
        bias = lin.bias * lin.out_features * dense_bytes
        if module_group(lin.name) not in quantized:
            total += lin.in_features * lin.out_features * dense_bytes + bias
        elif recipe.backend == "gptq":
            total += gptq_linear_bytes(lin, recipe.bits, recipe.group_size) + bias
        else:
            total += bnb_linear_bytes(lin, recipe.bits, bool(recipe.double_quant)) + bias
    return total


# ---- one edit pair: tokens, KV cache, activations ----------------------------------------------

def image_tokens(inv: Inventory, width: int, height: int) -> int:
    from firm_lite.images import ImageBudget

    v = inv.vision
    budget = ImageBudget(inv.budget[0], inv.budget[1], v["patch_size"], v["spatial_merge_size"])
    return budget.tokens_for(width, height)


def prompt_text_tokens() -> int:
    from firm_lite.prompts import templates

    return math.ceil(max(len(t) for t in templates().values()) / CHARS_PER_TOKEN) + SCAFFOLD_TOKENS


def sequence_tokens(inv: Inventory, image_size: tuple[int, int]) -> int:
    """Tokens of one conversation: prompt text, two images (+ start/end markers), the answer."""
    return prompt_text_tokens() + 2 * (image_tokens(inv, *image_size) + 2) + MAX_NEW_TOKENS


def kv_bytes_per_token(inv: Inventory, dtype_bytes: int = 2) -> int:
    t = inv.text
    head_dim = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
    return 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * head_dim * dtype_bytes


def kv_cache_bytes(inv: Inventory, image_size: tuple[int, int], dtype_bytes: int = 2, pairs: int = 1) -> int:
    """Both modes' conversations of ``pairs`` pairs, cached in full."""
    return 2 * pairs * sequence_tokens(inv, image_size) * kv_bytes_per_token(inv, dtype_bytes)


def activation_bytes(inv: Inventory, image_size: tuple[int, int], dtype_bytes: int = 2, pairs: int = 1) -> int:
    """Peak working set: the vision tower on both images of every pair (patch inputs, residual,
    qkv, attention output, MLP, merged + deepstack features; the engine encodes a batch's images in
    one call) plus one decoder layer's prefill for both conversations of every pair."""
    v, t = inv.vision, inv.text
    w, h = image_size
    patches = 2 * image_tokens(inv, w, h) * v["spatial_merge_size"] ** 2
    patch_in = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    vision = patches * (6 * v["hidden_size"] + 2 * v["intermediate_size"] + patch_in)
    merged = patches // v["spatial_merge_size"] ** 2 * v["out_hidden_size"] * (1 + len(v["deepstack_visual_indexes"]))
    prefill = 2 * sequence_tokens(inv, image_size) * (4 * t["hidden_size"] + 3 * t["intermediate_size"])
    return pairs * (vision + merged + prefill) * dtype_bytes


# ---- rows, the table, and --variant auto --------------------------------------------------------

def _candidates() -> list[tuple[str, str, Any, int | None]]:
    """(variant, how to get it, recipe or None, bytes of the kept parts or None = the run dtype),
    in accuracy order. Exported recipes keep their parts in the recipe's dtype."""
    from firm_lite.recipes import LOAD_TIME_RECIPES, load_recipe, shipped_recipes
    from firm_lite.variants.registry import registry

    rows: list[tuple[int, str, str, Any, int | None]] = []
    for spec in registry().values():
        if spec.family == "reference" and spec.name != "default":
            rows.append((spec.accuracy_rank, spec.name, f"--variant {spec.name}", None, int(spec.weight_bits) // 8))
        elif spec.name in LOAD_TIME_RECIPES:
            recipe = load_recipe(LOAD_TIME_RECIPES[spec.name])
            rows.append((spec.accuracy_rank, spec.name,
                         f"--variant {spec.name} (or export bnb --recipe {recipe.name})", recipe, None))
    for name in shipped_recipes():
        recipe = load_recipe(name)
        if recipe.backend == "gptq":
            rank = 10 if recipe.bits == 8 else 20
            rows.append((rank, name, f"export gptq --recipe {name}", recipe, DTYPE_BYTES[recipe.dtype]))
    return [r[1:] for r in sorted(rows, key=lambda r: (r[0], r[1]))]


def check_plan_inputs(dtype: str, image_size: tuple[int, int]) -> None:
    """What every plan (transformers or vLLM) refuses alike."""
    if dtype not in DTYPE_BYTES:
        raise UserError(f"--dtype {dtype}: expected one of bf16, fp16, fp32")
    if min(image_size) < 1:
        raise UserError(f"--image-size {image_size[0]}x{image_size[1]}: sides must be positive")


def plan(model: str = DEFAULT_MODEL, vram_gib: float | None = None,
         image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, dtype: str = "bf16", pairs: int = 1) -> list[PlanRow]:
    """One row per variant: exact weight memory, KV-cache and activation estimates for a batch of
    ``pairs`` pairs at ``image_size``, and whether the total fits ``vram_gib`` (None: not judged)."""
    check_plan_inputs(dtype, image_size)
    if pairs < 1:
        raise UserError(f"--batch-size {pairs}: must be >= 1")
    inv = inventory(model)
    run_bytes = DTYPE_BYTES[dtype]
    kv = kv_cache_bytes(inv, image_size, run_bytes, pairs)
    act = activation_bytes(inv, image_size, run_bytes, pairs)
    rows = []
    for name, how, recipe, dense in _candidates():
        weights = weight_bytes(inv, recipe, dense or run_bytes)
        row = PlanRow(name, how, weights, kv, act, RUNTIME_RESERVE_BYTES, None)
        if vram_gib is not None:
            row = PlanRow(**{**asdict(row), "fits": row.total <= vram_gib * GIB})
        rows.append(row)
    return rows


def format_table(rows: list[PlanRow], model_label: str, vram_gib: float | None,
                 image_size: tuple[int, int], inv: Inventory | None = None, pairs: int = 1) -> str:
    """The human table ``firm-lite plan`` prints."""
    unit, scale = ("GiB", GIB) if max((r.weights for r in rows), default=0) >= GIB else ("MiB", 2**20)
    g = lambda b: f"{b / scale:.2f}"  # noqa: E731
    head = f"{'variant':<14} {'weights':>8} {'kv-cache':>9} {'activ.':>7} {'total':>7}  {'fits':<5} how"
    batch = "one pair" if pairs == 1 else f"a batch of {pairs} pairs"
    lines = [f"model: {model_label}", f"{batch} at {image_size[0]}x{image_size[1]} px"
             + (f", {vram_gib:g} GiB" if vram_gib is not None else "") + f"; sizes in {unit}", head, "-" * len(head)]
    for r in rows:
        fits = "-" if r.fits is None else ("yes" if r.fits else "NO")
        lines.append(f"{r.variant:<14} {g(r.weights):>8} {g(r.kv_cache):>9} {g(r.activations):>7} "
                     f"{g(r.total):>7}  {fits:<5} {r.how}")
    if inv is not None:
        toks = image_tokens(inv, *image_size)
        params = f"{inv.parameters / 1e9:.2f}B" if inv.parameters >= 1e8 else f"{inv.parameters / 1e6:.2f}M"
        lines.append(f"\n{params} parameters; {toks} tokens per image; "
                     f"{sequence_tokens(inv, image_size)} tokens per conversation (2 per pair); "
                     f"KV {kv_bytes_per_token(inv) / 1024:g} KiB/token in bf16; total includes "
                     f"{RUNTIME_RESERVE_BYTES / GIB:.1f} GiB runtime reserve.")
    return "\n".join(lines)


def choose_variant(model: str, device: Any, free_bytes: int | None = None,
                   image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, pairs: int = 1, cap_gib: float | None = None,
                   dtype: str | None = None) -> tuple[str, str]:
    """``--variant auto``: the most accurate variant whose planned total for a batch of ``pairs``
    pairs fits the memory ``device`` has free, within ``cap_gib`` when set. ``dtype`` (default:
    what ``--dtype auto`` gives on ``device``) prices the KV cache and the kept parts; fp32 is
    skipped on GPUs, and so is bf16 where it is emulated (fp16 default). Returns (name, reason)."""
    from firm_lite.device import default_dtype_name, device_capability, free_memory_bytes

    free = free_memory_bytes(device, cap_gib) if free_bytes is None else free_bytes
    if cap_gib is not None:
        free = min(free, int(cap_gib * GIB))
    dtype = dtype or default_dtype_name(device.type, device_capability(device))
    rows = [r for r in plan(model, free / GIB, image_size, dtype, pairs) if r.how.startswith("--variant ")]
    if device.type != "cpu":
        skip = {"fp32"} | ({"bf16"} if dtype == "fp16" else set())
        rows = [r for r in rows if r.variant not in skip]
    where = f"{free / GIB:.1f} GiB free on {device}" + (f" (capped at {cap_gib:g} GiB)" if cap_gib else "")
    batch = "one" if pairs == 1 else f"a batch of {pairs}"
    for row in rows:
        if row.fits:
            return row.variant, (f"variant auto -> {row.variant}: needs ~{row.total / GIB:.1f} GiB for {batch} "
                                 f"{image_size[0]}x{image_size[1]} pair{'s' if pairs > 1 else ''} in {dtype}, {where}")
    smallest = min(rows, key=lambda r: r.total)
    raise UserError(f"--variant auto: nothing fits {where} for {batch} {image_size[0]}x{image_size[1]} "
                    f"pair{'s' if pairs > 1 else ''} (smallest: {smallest.variant}, ~{smallest.total / GIB:.1f} GiB); "
                    "lower --batch-size or --max-pixels, free memory, or use --device cpu")


def auto_image_size(max_pixels: int | None = None) -> tuple[int, int]:
    """The image size ``--variant auto`` plans for: a square of ``--max-pixels``, else 1024x1024."""
    if max_pixels:
        side = max(1, math.isqrt(max_pixels))
        return side, side
    return DEFAULT_IMAGE_SIZE
