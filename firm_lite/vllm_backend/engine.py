"""The vLLM engine behind ``backend="vllm"``: firm-lite's protocol on vLLM's scheduler.

:class:`VllmEngine` runs an in-process ``vllm.LLM`` (its engine core and worker are vLLM's own
processes) on a resolved model folder, and scores prepared pairs exactly as the transformers
engine does: the prompts are the critic's own renders (one user turn: ORIGINAL image, EDITED
image, the mode's verbatim template, chat template with generation prompt), the image budget is
the critic's (passed to vLLM's Qwen3-VL processor as the same ``size``), decoding is greedy with
the same cap and stop tokens, and each completion becomes a ModeScore through
:mod:`firm_lite.vllm_backend.answers` (firm-lite's stop rule, parser and digit read-out).

What vLLM adds: paged KV cache, continuous batching, automatic prefix caching (the two modes of a
pair share their image prefix), and its kernels. What firm-lite adds on top of stock vLLM: its own
model class (:mod:`firm_lite.vllm_backend.model`, registered by firm-lite's vLLM plugin) that loads
every tensor of the checkpoint, and a refusal before scoring if any non-zero tensor went unused.

vLLM is imported when an engine is built, never at import of this module.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from firm_lite.engine import FAST_ANSWER_PREFIX, PROTOCOLS, fast_results
from firm_lite.errors import UserError
from firm_lite.generation import DecodingConfig, digit_distribution, digit_token_ids
from firm_lite.images import ImageBudget
from firm_lite.plan.vllm import vllm_max_model_len
from firm_lite.prompts import MODES
from firm_lite.records import EditPair, ModeScore
from firm_lite.settings import VllmOptions
from firm_lite.teacher_forcing import ForcedReadout, forced_target
from firm_lite.vllm_backend.answers import mode_score, step_digit_logprobs, stop_token_ids
from firm_lite.vllm_backend.plugin import ARCHITECTURE, AUDIT_FILE_ENV, ENTRY_POINT, ENTRY_POINT_GROUP, installed
from firm_lite.vllm_backend.weights import unused_weights_error

Render = Callable[[str, str, str], str]  # (mode, instruction, requirement) -> rendered prompt
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CPU_KV_CACHE_GIB = 2.0  # vLLM's CPU default is 4 GiB; a 1024x1024 pair of the 8B takes ~0.36 GiB in bf16
INT4_WEIGHT_ONLY = ("gptq", "gptq_marlin", "awq", "awq_marlin")


class VllmEngine:
    """A loaded vLLM engine that scores prepared ``(EditPair, source, edited)`` items."""

    def __init__(self, folder: str | Path, processor: Any, render: Render, budget: ImageBudget,
                 decoding: DecodingConfig, dtype: str = "auto", options: VllmOptions | None = None,
                 placement: dict[str, str] | None = None) -> None:
        if not decoding.greedy or not decoding.stop_on_close:
            raise ValueError("the vLLM backend runs the reference protocol: greedy, stop when the answer closes")
        self.folder = Path(folder)
        self.processor, self.render, self.budget, self.decoding = processor, render, budget, decoding
        self.options = options or VllmOptions()
        tokenizer = processor.tokenizer
        self.digit_ids = digit_token_ids(tokenizer)
        generation_config = _generation_config(self.folder)
        self.stop_ids = stop_token_ids(tokenizer, generation_config)
        self.placement = dict(placement or {})  # the devices this engine was started on (data parallel)
        self.llm, self.platform, self.dtype, self.weight_audit = _start_llm(self.folder, budget, decoding, dtype,
                                                                            self.options, self.placement)
        from vllm import SamplingParams

        # greedy; every step returns the five digit log-probabilities (raw, before any processor)
        self.sampling = {protocol: SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0,
                                                  stop_token_ids=self.stop_ids, logprob_token_ids=self.digit_ids,
                                                  detokenize=False)
                         for protocol, max_tokens in (("full", decoding.max_new_tokens), ("fast", 1))}
        self._lock = threading.Lock()  # one generate at a time, as the transformers critic

    @property
    def provenance(self) -> dict[str, Any]:
        import vllm

        return {"backend": "vllm", "vllm_version": vllm.__version__, "platform": self.platform,
                "dtype": self.dtype, "options": self.options.as_record(), "weight_audit": self.weight_audit,
                "placement": self.placement or None}

    def requests(self, items: list[tuple[EditPair, Any, Any]], modes: list[str],
                 protocol: str = "full") -> list[dict[str, Any]]:
        """One vLLM prompt per (pair, mode), pair-major: a pair's modes are submitted side by side
        so prefix caching and the multimodal caches see the same two images together. The fast
        protocol appends the forced answer prefix, as the transformers engine does."""
        forced = FAST_ANSWER_PREFIX if protocol == "fast" else ""
        return [{"prompt": self.render(mode, pair.instruction, pair.requirement) + forced,
                 "multi_modal_data": {"image": [source, edited]}}
                for pair, source, edited in items for mode in modes]

    def score_modes(self, items: list[tuple[EditPair, Any, Any]], modes: Iterable[str] = MODES,
                    timings: dict[str, float] | None = None, *, protocol: str = "full") -> dict[str, list[ModeScore]]:
        """Same signature and meaning as :meth:`firm_lite.critic.Critic.score_modes` (whose
        ``protocol`` is a field of the critic view, here an argument). ``timings`` gets
        ``generate`` seconds, ``decode_tokens`` (answer tokens) and ``wasted_decode_tokens`` (steps
        vLLM ran after firm-lite's rule had ended an answer)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}")
        if self.llm is None:
            raise RuntimeError("this vLLM engine is closed")
        modes = list(modes)
        if not items:
            return {m: [] for m in modes}
        start = time.perf_counter()
        with self._lock:
            outputs = self.llm.generate(self.requests(items, modes, protocol), self.sampling[protocol],
                                        use_tqdm=False)
        elapsed = time.perf_counter() - start
        if protocol == "fast":  # the score distribution of the single step after the forced prefix
            import torch

            first = step_digit_logprobs([out.outputs[0].logprobs[0] for out in outputs], self.digit_ids)
            return fast_results(torch.stack(first), modes, len(items))
        results: dict[str, list[ModeScore]] = {m: [] for m in modes}
        tokens = wasted = 0
        tokenizer = self.processor.tokenizer
        for k, out in enumerate(outputs):
            completion = out.outputs[0]
            score, extra = mode_score(tokenizer, completion.token_ids, completion.logprobs, self.digit_ids,
                                      set(self.stop_ids))
            results[modes[k % len(modes)]].append(score)
            tokens += len(completion.token_ids) - extra
            wasted += extra
        if timings is not None:
            for key, value in (("generate", elapsed), ("decode_tokens", tokens), ("wasted_decode_tokens", wasted)):
                timings[key] = timings.get(key, 0) + value
        return results

    def forced_readout(self, mode: str, pair: EditPair, images: list[Any], answer: str) -> ForcedReadout | None:
        """Teacher forcing (calibration's KL) on vLLM: the prompt followed by ``answer`` up to its
        score digit, one greedy step, the five digit log-probabilities of that step. The same
        read-out as :func:`firm_lite.teacher_forcing.forced_readout` (softmax over the digits'
        log-probabilities equals softmax over their logits), with the answer's prefix given as
        text after the prompt the way the fast protocol gives its prefix."""

        target = forced_target(self.processor.tokenizer, answer)
        if target is None:
            return None
        answer_ids, index, score = target
        prefix = self.processor.tokenizer.decode(answer_ids[:index])
        request = {"prompt": self.render(mode, pair.instruction, pair.requirement) + prefix,
                   "multi_modal_data": {"image": list(images)}}
        with self._lock:
            out = self.llm.generate([request], self.sampling["fast"], use_tqdm=False)
        (digits,) = step_digit_logprobs([out[0].outputs[0].logprobs[0]], self.digit_ids)
        probs, expected = digit_distribution(digits)
        return ForcedReadout(score=score, probs=probs, expected=expected, token_index=index)

    def close(self) -> None:
        """Stop vLLM's engine processes now (otherwise they stop when the engine is collected)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()


def _generation_config(folder: Path) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").exists() else None


def _max_model_len(folder: Path, budget: ImageBudget, decoding: DecodingConfig) -> int:
    """Two images at the budget's largest size, the prompt text and the answer, within the
    model's positions (the arithmetic `firm-lite plan --backend vllm` shows)."""
    config = json.loads((folder / "config.json").read_text("utf-8"))
    text = config.get("text_config", config)
    return vllm_max_model_len(budget.max_pixels, budget.patch_size, budget.merge_size, decoding.max_new_tokens,
                              text.get("max_position_embeddings"))


def check_supported(folder: Path, on_cpu: bool, quantization: str | None = None) -> None:
    """Refuse, with one line saying what to use instead, what vLLM cannot run here."""
    config = json.loads((folder / "config.json").read_text("utf-8"))
    if ARCHITECTURE not in config.get("architectures", []) and "Qwen3VLForConditionalGeneration" not in config.get(
            "architectures", []):
        raise UserError(f"{folder}: the vLLM backend runs Qwen3-VL critics (config architectures: "
                        f"{config.get('architectures')})")
    method = str((config.get("quantization_config") or {}).get("quant_method", "")).lower()
    if on_cpu and quantization == "bitsandbytes":
        raise UserError("bitsandbytes on vLLM needs a CUDA GPU: score nf4 with --backend hf on this machine "
                        "(or fp32 on vLLM)")
    if on_cpu and method in INT4_WEIGHT_ONLY:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        if "AVX512" not in capability:
            raise UserError(f"{folder}: vLLM's {method} int4 kernel on CPU needs AVX512 and this CPU has "
                            f"{capability}: score this variant with --backend hf, or with vLLM on a GPU")


def _start_llm(folder: Path, budget: ImageBudget, decoding: DecodingConfig, dtype: str,
               options: VllmOptions, placement: dict[str, str] | None = None) -> tuple[Any, str, str, dict[str, Any]]:
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError:
        raise UserError('vLLM is not installed: pip install "firm-lite[vllm]" (GPU), or build the CPU '
                        "environment with scripts/vllm_cpu_env.sh") from None
    if not installed():
        raise UserError(f"firm-lite's vLLM plugin is not registered ({ENTRY_POINT_GROUP} entry point "
                        f"{ENTRY_POINT}): reinstall firm-lite in this environment (pip install -e . or "
                        f'pip install "firm-lite[vllm]")')
    on_cpu = current_platform.is_cpu()
    check_supported(folder, on_cpu, options.quantization)
    dtype_name = vllm_dtype(dtype, on_cpu)
    args = engine_args(folder, budget, decoding, dtype_name, options, on_cpu)
    with tempfile.TemporaryDirectory(prefix="firm-lite-vllm-") as tmp:
        audit_file = Path(tmp) / "weight-audit.json"
        env = {AUDIT_FILE_ENV: str(audit_file)}
        if on_cpu:
            # vLLM 0.32's CPU worker cannot reload its AOT compile cache ("'function' object has
            # no attribute 'finalize_loading'") and recompiles at every start (1-2 min on 2
            # cores); its older compile cache reloads in seconds.
            env["VLLM_USE_AOT_COMPILE"] = "0"
            if options.cpu_threads_bind:
                env["VLLM_CPU_OMP_THREADS_BIND"] = options.cpu_threads_bind
        try:
            with _scoped_env(env, placement or {}):
                llm = vllm.LLM(**args)
        except Exception as exc:
            audit = _read_audit(audit_file)
            if audit and audit["unused_nonzero"]:  # the worker refused the checkpoint: say why, in one line
                raise unused_weights_error(audit["unused_nonzero"]) from None
            if "Engine core initialization failed" in str(exc):  # vLLM logged its reason above
                raise UserError(
                    f"vLLM could not start its engine (its reason is logged above). If the KV cache cannot hold "
                    f"one sequence of max_model_len {args['max_model_len']} (two images at --max-pixels "
                    f"{budget.max_pixels}): pass --max-pixels for your images, or raise --gpu-memory-utilization "
                    f"/ --kv-cache-gib; `firm-lite plan --backend vllm --vram GIB` shows what fits") from None
            raise
        audit = _read_audit(audit_file)
    if audit is None:
        llm.llm_engine.engine_core.shutdown()
        raise RuntimeError(f"vLLM did not load the model with firm-lite's class {ARCHITECTURE} (no weight audit)")
    return llm, type(current_platform).__name__, dtype_name, audit


def engine_args(folder: Path, budget: ImageBudget, decoding: DecodingConfig, dtype_name: str,
                 options: VllmOptions, on_cpu: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments: firm-lite's model class, prefix caching, two images per prompt at
    the critic's image budget, room for two largest images + prompt + answer."""
    args: dict[str, Any] = dict(
        model=str(folder), tokenizer=str(folder), dtype=dtype_name, seed=0,
        hf_overrides={"architectures": [ARCHITECTURE]},
        enable_prefix_caching=True,
        limit_mm_per_prompt={"image": 2, "video": 0},
        mm_processor_kwargs=budget.processor_kwargs(),
        max_model_len=_max_model_len(folder, budget, decoding),
        max_num_batched_tokens=options.max_num_batched_tokens,
        max_num_seqs=options.max_num_seqs,
        enforce_eager=options.enforce_eager,
        tensor_parallel_size=options.tensor_parallel_size,
    )
    if options.quantization:
        args["quantization"] = options.quantization
    kv_gib = options.kv_cache_gib if options.kv_cache_gib is not None else (CPU_KV_CACHE_GIB if on_cpu else None)
    if kv_gib is not None:
        args["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
    else:
        args["gpu_memory_utilization"] = options.gpu_memory_utilization
    return args


def _read_audit(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def vllm_dtype(dtype: str, on_cpu: bool) -> str:
    """firm-lite's dtype policy (``auto``: fp32 on CPU, bf16 on a GPU) in vLLM's names."""
    name = dtype if dtype != "auto" else ("fp32" if on_cpu else "bf16")
    if name not in VLLM_DTYPES:
        raise UserError(f"dtype {dtype!r}: the vLLM backend takes auto, {', '.join(VLLM_DTYPES)}")
    return VLLM_DTYPES[name]


@contextmanager
def _scoped_env(values: dict[str, str], forced: dict[str, str] | None = None) -> Iterator[None]:
    """Set settings that vLLM reads only from the environment while its processes start (they
    inherit it); a value the user already set wins over ``values``, ``forced`` (a data-parallel
    rank's devices) wins over the user's; everything is put back after."""
    forced = forced or {}
    old = {k: os.environ.get(k) for k in {**values, **forced}}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    os.environ.update(forced)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
