"""Engine planner for ``--backend vllm``: the vLLM settings that fit a card, per variant.

``firm-lite plan --backend vllm`` answers what a user has to decide before starting vLLM: which
variants run on vLLM at all, how long a sequence the engine must admit (``max_model_len``), how
much of the card's memory is left for the paged KV cache, how many edit pairs that cache holds at
once, and whether one card is enough (data parallelism: one engine per GPU) or the weights must be
split over several (tensor parallelism). Everything is computed from the config, like the hf
table (:mod:`firm_lite.plan`): weights exactly, the rest from the stated assumptions below.

Assumptions (what vLLM does at start, as this module models it):

- vLLM may use ``gpu_memory_utilization`` of each card (0.9 unless given); the rest is left for
  what vLLM does not count in that share (CUDA graphs captured after the KV cache is allocated,
  allocator fragmentation, a display).
- Inside that share: the weights (per card: split over tensor-parallel ranks, norms and vision
  patch/position embeddings replicated), the peak of vLLM's profiling run (the vision tower on as
  many largest images as its encoder budget ``max(max_num_batched_tokens, tokens per image)``
  holds, or one language-model step of ``max_num_batched_tokens`` tokens, whichever is larger,
  plus the merged image features and the logits of ``max_num_seqs`` rows), and a runtime reserve
  (CUDA context; more for the NCCL buffers of tensor parallelism). What is left is the KV cache,
  in blocks of 16 tokens across all layers.
- vLLM refuses to start unless the KV cache holds one sequence of ``max_model_len`` tokens.
- A pair is two sequences (execution, consistency) with the same two images first: with prefix
  caching the full 16-token blocks of that prefix are stored once; each mode has its own partial
  block, its prompt text and its 256-token answer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from firm_lite.errors import UserError
from firm_lite.plan import (
    DEFAULT_IMAGE_SIZE,
    DTYPE_BYTES,
    GIB,
    MAX_NEW_TOKENS,
    RUNTIME_RESERVE_BYTES,
    Inventory,
    check_plan_inputs,
    image_tokens,
    inventory,
    kv_bytes_per_token,
    prompt_text_tokens,
    weight_bytes,
)
from firm_lite.settings import VllmOptions
from firm_lite.sources import DEFAULT_MODEL

BLOCK_SIZE = 16  # vLLM's KV cache block (tokens) on CUDA
PROMPT_TEXT_TOKENS = 4096  # room for the template + an instruction of up to 4000 characters (engine's too)
VISION_MARKERS = 2  # <|vision_start|> and <|vision_end|> around each image's tokens
PREFIX_SCAFFOLD_TOKENS = 3  # "<|im_start|>", "user", "\n" before the first image
TP_RESERVE_BYTES = GIB // 4  # per card with tensor parallelism: NCCL / custom all-reduce buffers
BATCHED_TOKEN_STEPS = (16384, 8192, 4096, 2048)  # max_num_batched_tokens tried, largest first
TP_SIZES = (1, 2, 4, 8)
LOGITS_COPIES = 2  # fp32 logits and the sampler's log-softmax of them


def vllm_max_model_len(max_pixels: int, patch_size: int = 16, merge_size: int = 2,
                       max_new_tokens: int = MAX_NEW_TOKENS, max_positions: int | None = None) -> int:
    """The ``max_model_len`` firm-lite's vLLM engine asks for: two images at ``max_pixels``
    (``max_pixels // (patch*merge)^2`` tokens each, + vision start/end), the prompt text room and
    the answer, within the model's positions."""
    factor = patch_size * merge_size
    per_image = max_pixels // (factor * factor) + VISION_MARKERS
    wanted = 2 * per_image + PROMPT_TEXT_TOKENS + max_new_tokens
    return min(wanted, max_positions) if max_positions else wanted


@dataclass(frozen=True)
class VllmCandidate:
    """A variant as vLLM would run it: ``quantization`` is vLLM's method (None: dense);
    ``recipe`` prices the weights (None: every parameter at the run dtype); ``why_not`` says
    why a variant is not planned on vLLM (then nothing else matters)."""

    variant: str
    how: str
    quantization: str | None = None
    recipe: Any = None
    why_not: str | None = None
    run_bytes: int | None = None  # the reference precisions' own dtype (None: --dtype)


def vllm_candidates(dtype: str) -> list[VllmCandidate]:
    """Every variant of the registry and every shipped GPTQ recipe, in accuracy order, with how
    vLLM runs it or why it does not."""
    from firm_lite.recipes import LOAD_TIME_RECIPES, load_recipe, shipped_recipes
    from firm_lite.variants.registry import registry

    rows: list[tuple[int, VllmCandidate]] = []
    for spec in registry().values():
        name = spec.name
        if spec.family == "reference" and name != "default":
            rows.append((spec.accuracy_rank, VllmCandidate(name, f"--variant {name}",
                                                           run_bytes=int(spec.weight_bits) // 8)))
        elif name == "nf4":
            rows.append((spec.accuracy_rank, VllmCandidate(
                name, "--variant nf4 (vLLM quantizes at load)", "bitsandbytes",
                load_recipe(LOAD_TIME_RECIPES[name]))))
        elif name == "int8":
            rows.append((spec.accuracy_rank, VllmCandidate(
                name, "", why_not="vLLM's in-flight bitsandbytes quantization is 4-bit only: use gptq-w8 "
                                  "(export gptq --recipe gptq-w8) or nf4")))
        elif name == "onnx":
            rows.append((spec.accuracy_rank, VllmCandidate(
                name, "", why_not="ONNX graphs run on ONNX Runtime (--backend hf), not vLLM")))
        elif name == "noisy":
            rows.append((spec.accuracy_rank, VllmCandidate(
                name, "", why_not="a negative control of --backend hf (noise added at load); vLLM loads a "
                                  "checkpoint as stored")))
        elif name == "bnb":
            rows.append((spec.accuracy_rank, VllmCandidate(
                name, "", why_not="exported bitsandbytes folders run on --backend hf; on vLLM use --variant nf4 "
                                  "(the same NF4, quantized at load)")))
    for name in shipped_recipes():
        recipe = load_recipe(name)
        if recipe.backend != "gptq":
            continue
        rank = 10 if recipe.bits == 8 else 20
        how = f"firm-lite export gptq --recipe {name} --out {name}"
        why_not = (f"vLLM's GPTQ kernels compute in fp16/bf16, not {dtype}" if dtype == "fp32" else None)
        rows.append((rank, VllmCandidate(name, how, "gptq_marlin", recipe, why_not)))
    return [c for _, c in sorted(rows, key=lambda r: (r[0], r[1].variant))]


# ---- per-card arithmetic ------------------------------------------------------------------------

def weights_per_card(inv: Inventory, total_weights: int, dense_bytes: int, tp: int) -> int:
    """Weights one tensor-parallel rank holds: everything is split over ``tp`` ranks but the
    parameters vLLM replicates (norms, vision patch and position embeddings: every non-Linear
    parameter other than the token embedding)."""
    replicated = sum(n for name, n in inv.others.items() if not name.endswith("embed_tokens.weight")) * dense_bytes
    return replicated + math.ceil((total_weights - replicated) / tp)


def kv_bytes_per_token_per_card(inv: Inventory, dtype_bytes: int, tp: int) -> int:
    """KV bytes of one token on one rank: KV heads are split over ranks (replicated past their count)."""
    heads = inv.text["num_key_value_heads"]
    return kv_bytes_per_token(inv, dtype_bytes) * math.ceil(heads / tp) // heads


def profile_peak_bytes(inv: Inventory, image_size: tuple[int, int], dtype_bytes: int, tp: int,
                       batched_tokens: int, max_num_seqs: int) -> int:
    """Peak of vLLM's profiling run on one rank (see the module docstring): the vision tower on
    the encoder budget's worth of images or one LM step of ``batched_tokens``, plus the merged
    image features and the logits. Same per-token terms as the hf plan's activation estimate,
    with the FFN widths split over ranks."""
    v, t = inv.vision, inv.text
    per_image = image_tokens(inv, *image_size)
    items = max(1, max(batched_tokens, per_image) // per_image)
    patches = items * per_image * v["spatial_merge_size"] ** 2
    patch_in = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    vision = patches * (6 * v["hidden_size"] + 2 * v["intermediate_size"] // tp + patch_in)
    merged = items * per_image * v["out_hidden_size"] * (1 + len(v["deepstack_visual_indexes"]))
    lm_step = batched_tokens * (4 * t["hidden_size"] + 3 * t["intermediate_size"] // tp)
    logits = LOGITS_COPIES * max_num_seqs * t["vocab_size"] * 4
    return (merged + max(vision, lm_step)) * dtype_bytes + logits


def pair_kv_blocks(prefix_tokens: int, suffix_tokens: int) -> int:
    """KV blocks one pair holds with prefix caching: the prefix's full blocks once, then per
    mode its own partial prefix block, prompt text and answer."""
    full, rest = divmod(prefix_tokens, BLOCK_SIZE)
    return full + 2 * math.ceil((rest + suffix_tokens) / BLOCK_SIZE)


@dataclass(frozen=True)
class EngineFit:
    """One engine layout (``tp`` cards per engine) for one variant on one card size."""

    tp: int
    max_num_batched_tokens: int
    weights: int  # per card
    profile_peak: int
    reserve: int
    kv_bytes_per_token: int  # per card
    kv_cache: int  # bytes left for the KV cache per card (negative: over the share)
    kv_blocks: int
    pairs_in_flight: int  # per engine
    starts: bool  # the KV cache holds one max_model_len sequence
    min_gpu_memory_utilization: float  # the smallest share that starts this engine


def engine_fit(inv: Inventory, weights_total: int, dense_bytes: int, vram_bytes: int, utilization: float,
               image_size: tuple[int, int], tp: int, batched_tokens: int, max_num_seqs: int,
               max_model_len: int, pair_blocks: int) -> EngineFit:
    weights = weights_per_card(inv, weights_total, dense_bytes, tp)
    peak = profile_peak_bytes(inv, image_size, dense_bytes, tp, batched_tokens, max_num_seqs)
    reserve = RUNTIME_RESERVE_BYTES + (TP_RESERVE_BYTES if tp > 1 else 0)
    per_token = kv_bytes_per_token_per_card(inv, dense_bytes, tp)
    kv = int(utilization * vram_bytes) - weights - peak - reserve
    blocks = max(0, kv // (BLOCK_SIZE * per_token))
    needed = weights + peak + reserve + math.ceil(max_model_len / BLOCK_SIZE) * BLOCK_SIZE * per_token
    starts = blocks * BLOCK_SIZE >= max_model_len
    pairs = min(blocks // pair_blocks, max_num_seqs // 2) if starts else 0
    return EngineFit(tp, batched_tokens, weights, peak, reserve, per_token, kv, int(blocks), int(pairs), starts,
                     math.ceil(needed / vram_bytes * 100) / 100)


@dataclass(frozen=True)
class VllmPlanRow:
    """The plan of one variant: how vLLM runs it and the layout to use on ``gpus`` cards
    (``fit`` None: it does not fit them, or ``why_not`` says it is not run on vLLM)."""

    variant: str
    how: str
    quantization: str | None
    weights: int | None  # whole model, all ranks together
    fit: EngineFit | None
    tensor_parallel_size: int | None
    data_parallel_size: int | None
    why_not: str | None = None
    note: str | None = None

    @property
    def total_pairs_in_flight(self) -> int:
        return self.fit.pairs_in_flight * self.data_parallel_size if self.fit and self.data_parallel_size else 0

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "total_pairs_in_flight": self.total_pairs_in_flight}


@dataclass(frozen=True)
class VllmPlan:
    """Everything ``firm-lite plan --backend vllm`` prints."""

    model: str
    image_size: tuple[int, int]
    vram_gib: float
    gpus: int
    dtype: str
    gpu_memory_utilization: float
    max_num_seqs: int
    image_tokens: int
    max_model_len: int  # with --max-pixels WxH (what the plan's commands pass)
    max_model_len_default_budget: int  # without it: the processor's largest images
    prefix_tokens: int
    suffix_tokens: int
    pair_blocks: int
    kv_bytes_per_token: int  # one card, no tensor parallelism
    rows: list[VllmPlanRow]

    def command(self, row: VllmPlanRow) -> str | None:
        """The ``firm-lite score`` flags for ``row``'s layout (None when it does not fit)."""
        if row.fit is None:
            return None
        variant = f"gptq:{row.variant}" if row.quantization == "gptq_marlin" else row.variant
        flags = [f"firm-lite score --backend vllm --variant {variant}",
                 f"--max-pixels {self.image_size[0] * self.image_size[1]}",
                 f"--tensor-parallel-size {row.tensor_parallel_size}",
                 f"--data-parallel-size {row.data_parallel_size}"]
        if self.dtype != "bf16":
            flags.insert(1, f"--dtype {self.dtype}")
        if row.fit.max_num_batched_tokens != VllmOptions().max_num_batched_tokens:
            flags.append(f"--max-num-batched-tokens {row.fit.max_num_batched_tokens}")
        if self.gpu_memory_utilization != VllmOptions().gpu_memory_utilization:
            flags.append(f"--gpu-memory-utilization {self.gpu_memory_utilization:g}")
        return " ".join(flags)

    def as_record(self) -> dict[str, Any]:
        record = {k: v for k, v in asdict(self).items() if k != "rows"}
        record["image_size"] = list(self.image_size)
        record["block_size"] = BLOCK_SIZE
        record["rows"] = [{**r.as_record(), "command": self.command(r)} for r in self.rows]
        return record


def _best_fit(inv: Inventory, weights: int, dense: int, plan_args: dict[str, Any], gpus: int) -> EngineFit | None:
    """The first layout that starts: fewest cards per engine, then the most tokens per step."""
    heads = (inv.text["num_attention_heads"], inv.vision["num_heads"])
    for tp in TP_SIZES:
        if tp > gpus or any(h % tp for h in heads):
            continue
        for tokens in BATCHED_TOKEN_STEPS:
            fit = engine_fit(inv, weights, dense, tp=tp, batched_tokens=tokens, **plan_args)
            if fit.starts:
                return fit
    return None


def _no_fit_note(inv: Inventory, weights: int, run: int, args: dict[str, Any], gpus: int, vram_gib: float) -> str:
    """Why nothing fits, and what would: more cards for tensor parallelism, or a bigger card."""
    more = _best_fit(inv, weights, run, args, max(TP_SIZES))
    one = engine_fit(inv, weights, run, tp=1, batched_tokens=BATCHED_TOKEN_STEPS[-1], **args)
    card = one.min_gpu_memory_utilization * vram_gib / args["utilization"]
    instead = f"tensor parallel over {more.tp} such cards (--gpus {more.tp})" if more and more.tp > gpus else None
    return (f"one engine needs a ~{card:.1f} GiB card" + (f", or {instead}" if instead else ""))


def plan_vllm(model: str = DEFAULT_MODEL, vram_gib: float | None = None,
              image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, dtype: str = "bf16", gpus: int = 1,
              gpu_memory_utilization: float | None = None, max_num_seqs: int | None = None) -> VllmPlan:
    """Per variant: whether vLLM runs it, and the engine layout and settings that fit ``gpus``
    cards of ``vram_gib`` each for pairs of ``image_size`` images."""
    defaults = VllmOptions()
    utilization = defaults.gpu_memory_utilization if gpu_memory_utilization is None else gpu_memory_utilization
    seqs = defaults.max_num_seqs if max_num_seqs is None else max_num_seqs
    if vram_gib is None or vram_gib <= 0:
        raise UserError("--backend vllm plans an engine for a card: give its memory, e.g. --vram 24")
    check_plan_inputs(dtype, image_size)
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: must be >= 1")
    if not 0 < utilization <= 1:
        raise UserError(f"--gpu-memory-utilization {utilization}: must be in (0, 1]")
    inv = inventory(model)
    v = inv.vision
    positions = inv.text.get("max_position_embeddings")
    width, height = image_size
    max_len = vllm_max_model_len(width * height, v["patch_size"], v["spatial_merge_size"], MAX_NEW_TOKENS, positions)
    default_len = vllm_max_model_len(inv.budget[1], v["patch_size"], v["spatial_merge_size"], MAX_NEW_TOKENS,
                                     positions)
    per_image = image_tokens(inv, width, height)
    prefix = PREFIX_SCAFFOLD_TOKENS + 2 * (per_image + VISION_MARKERS)
    suffix = prompt_text_tokens() + MAX_NEW_TOKENS
    pair_blocks = pair_kv_blocks(prefix, suffix)
    dense = DTYPE_BYTES[dtype]
    args = {"vram_bytes": int(vram_gib * GIB), "utilization": utilization, "image_size": image_size,
            "max_num_seqs": seqs, "max_model_len": max_len, "pair_blocks": pair_blocks}
    rows = []
    for cand in vllm_candidates(dtype):
        if cand.why_not:
            rows.append(VllmPlanRow(cand.variant, cand.how, cand.quantization, None, None, None, None, cand.why_not))
            continue
        run = cand.run_bytes or dense
        weights = weight_bytes(inv, cand.recipe, run)
        fit = _best_fit(inv, weights, run, args, gpus)
        note = None
        if fit is None:
            rows.append(VllmPlanRow(cand.variant, cand.how, cand.quantization, weights, None, None, None,
                                    note=_no_fit_note(inv, weights, run, args, gpus, vram_gib)))
            continue
        if fit.tp > 1:
            note = f"the weights need {fit.tp} cards per engine (tensor parallel)"
        elif gpus > 1:
            note = f"fits one card: {gpus} engines, one per GPU (data parallel)"
        rows.append(VllmPlanRow(cand.variant, cand.how, cand.quantization, weights, fit, fit.tp, gpus // fit.tp,
                                note=note))
    return VllmPlan(inv.label, image_size, vram_gib, gpus, dtype, utilization, seqs, per_image, max_len, default_len,
                    prefix, suffix, pair_blocks, kv_bytes_per_token(inv, dense), rows)


def format_vllm_table(p: VllmPlan) -> str:
    """The human table ``firm-lite plan --backend vllm`` prints."""
    g = lambda b: "-" if b is None else f"{b / GIB:.2f}"  # noqa: E731
    w, h = p.image_size
    head = (f"{'variant':<14} {'quant.':<12} {'weights':>7} {'w/card':>7} {'KV/card':>7} {'blocks':>6} "
            f"{'pairs':>5} {'TP':>2} {'DP':>2} {'tok/step':>8}  note")
    lines = [f"model: {p.model}",
             f"vLLM engine on {p.gpus} x {p.vram_gib:g} GiB, {p.dtype}, gpu_memory_utilization "
             f"{p.gpu_memory_utilization:g}; pairs of {w}x{h} images; sizes in GiB",
             head, "-" * len(head)]
    for r in p.rows:
        if r.why_not:
            continue
        f = r.fit
        if f is None:
            lines.append(f"{r.variant:<14} {r.quantization or 'none':<12} {g(r.weights):>7} {'-':>7} {'-':>7} "
                         f"{'-':>6} {'-':>5} {'-':>2} {'-':>2} {'-':>8}  NO: {r.note}")
            continue
        lines.append(f"{r.variant:<14} {r.quantization or 'none':<12} {g(r.weights):>7} {g(f.weights):>7} "
                     f"{g(max(f.kv_cache, 0)):>7} {f.kv_blocks:>6} {f.pairs_in_flight:>5} {r.tensor_parallel_size:>2} "
                     f"{r.data_parallel_size:>2} {f.max_num_batched_tokens:>8}  {r.note or ''}".rstrip())
    skipped = [r for r in p.rows if r.why_not]
    if skipped:
        lines.append("\nnot on vLLM:")
        lines += [f"  {r.variant:<12} {r.why_not}" for r in skipped]
    commands = [(r.variant, p.command(r)) for r in p.rows if r.fit is not None]
    if commands:
        lines.append("\ncommands:")
        lines += [f"  {cmd}" for _, cmd in commands]
    per_token = p.kv_bytes_per_token
    lines.append(
        f"\n{p.image_tokens} tokens per image; max_model_len {p.max_model_len} (2 x ({p.image_tokens} + 2) image "
        f"+ {PROMPT_TEXT_TOKENS} prompt room + {MAX_NEW_TOKENS} answer; pass --max-pixels {w * h} so the engine "
        f"sizes it for these images: without it, {p.max_model_len_default_budget} tokens for the processor's largest "
        f"images, {p.max_model_len_default_budget * per_token / GIB:.2f} GiB of KV cache just to start). "
        f"KV {per_token:,} B/token ({per_token / 1024:g} KiB) on one card; blocks of {BLOCK_SIZE} tokens; "
        f"a pair holds {p.pair_blocks} blocks ({p.prefix_tokens}-token image prefix shared, "
        f"{p.suffix_tokens} prompt+answer tokens per mode); pairs = per engine, at most max_num_seqs/2 = "
        f"{p.max_num_seqs // 2}. w/card and KV/card after the profiling peak (vision encoder or one step of "
        f"tok/step tokens) and a {RUNTIME_RESERVE_BYTES / GIB:.1f} GiB runtime reserve; the "
        f"{1 - p.gpu_memory_utilization:.0%} outside gpu_memory_utilization is left for CUDA graphs.")
    return "\n".join(lines)

