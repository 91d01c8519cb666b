"""The fast scoring engine: shared image prefix, batched pairs, per-row stop.

The reference pipeline encodes both images again for each of the two modes, handles one pair
at a time, and decodes up to 256 tokens. Here, for a batch of B pairs:

1. the prefix common to both modes (``<|im_start|>user`` + both images, up to the second
   ``<|vision_end|>``) is run once per pair: the vision tower encodes each image once and the
   prefix's KV cache is computed once;
2. the cache is duplicated for the two modes (2B rows) and each mode's prompt suffix is
   prefilled on top of it (left padding between prefix and suffix is masked);
3. greedy decoding runs on all rows together; a row leaves the batch as soon as its JSON answer
   is closed (or EOS), so finished rows cost nothing.

M-RoPE positions are computed once over the full (prefix + suffix) rows with the model's own
``get_rope_index``, then extended by one per decoded token, exactly as ``generate`` does.

``protocol="fast"`` is a *different protocol*: it forces the answer prefix
``{"reasoning" : "", "score" : [`` (the template's layout with an empty reasoning) and reads the
score distribution from that single prefill, skipping the reasoning. Its agreement with the full
protocol is a calibration question, not an assumption.
"""

from __future__ import annotations

import time
from typing import Any

from firm_lite.generation import (
    DecodingConfig,
    closes_answer,
    digit_distribution,
    digit_token_ids,
    readout,
    stop_token_ids,
)
from firm_lite.parsing import parse_answer
from firm_lite.records import ModeScore

VISION_END = "<|vision_end|>"
FAST_ANSWER_PREFIX = '{\n"reasoning" : "",\n"score" : ['
PROTOCOLS = ("full", "fast")


def split_after_images(text: str, n_images: int = 2) -> tuple[str, str]:
    """Split a rendered conversation after its ``n_images``-th ``<|vision_end|>``."""
    cut = -1
    for _ in range(n_images):
        cut = text.find(VISION_END, cut + 1)
        if cut == -1:
            raise ValueError(f"rendered prompt has fewer than {n_images} images")
    cut += len(VISION_END)
    return text[:cut], text[cut:]


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword the model's forward takes its KV cache by: ``cache`` in recent transformers 5,
    ``past_key_values`` before (5.19, which vLLM 0.32 pins), where an unknown ``cache=`` is
    swallowed by ``**kwargs`` and the answers silently become garbage."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def supports_engine(model: Any) -> bool:
    """The engine drives a transformers Qwen3-VL model by hand; other backends use ``generate``."""
    inner = getattr(model, "model", None)
    return hasattr(inner, "get_rope_index") and hasattr(model, "lm_head")


class _Rows:
    """Per-row decoding state for the rows still generating."""

    def __init__(self, n: int) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.digit_logits: list[list[Any]] = [[] for _ in range(n)]
        self.done = [False] * n


class PhaseTimer:
    """Wall time per phase (vision, prefill, decode), synchronised with the device."""

    def __init__(self, device: Any, sink: dict[str, float] | None) -> None:
        self.device, self.sink = device, sink
        self._t = 0.0

    def start(self) -> None:
        if self.sink is not None:
            from firm_lite.device import synchronize

            synchronize(self.device)
            self._t = time.perf_counter()

    def stop(self, phase: str) -> None:
        if self.sink is not None:
            from firm_lite.device import synchronize

            synchronize(self.device)
            self.sink[phase] = self.sink.get(phase, 0.0) + time.perf_counter() - self._t


def score_batch(model: Any, processor: Any, prefixes: list[str], suffixes: dict[str, list[str]],
                images: list[Any], budget: Any, decoding: DecodingConfig,
                protocol: str = "full", timings: dict[str, float] | None = None) -> dict[str, list[ModeScore]]:
    """Score B pairs in every mode of ``suffixes`` (mode -> B suffix texts) with shared prefixes.

    If ``timings`` is a dict, seconds spent in vision, prefill and decode (and the number of
    decoded tokens, ``decode_tokens``) are added to it."""
    import torch

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")
    tok = processor.tokenizer
    tok.padding_side = "left"
    device = model.device
    modes = list(suffixes)
    n_modes, batch = len(modes), len(prefixes)
    rows = n_modes * batch  # row r = pair (r // n_modes), mode (r % n_modes)
    digit_ids = digit_token_ids(tok)
    digit_index = torch.tensor(digit_ids, device=device)

    pre = processor(text=prefixes, images=images, return_tensors="pt", padding=True,
                    **budget.processor_kwargs()).to(device)
    suffix_texts = [suffixes[m][i] + (FAST_ANSWER_PREFIX if protocol == "fast" else "")
                    for i in range(batch) for m in modes]
    suf = tok(suffix_texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)

    rep = torch.arange(batch, device=device).repeat_interleave(n_modes)
    full_ids = torch.cat([pre["input_ids"][rep], suf["input_ids"]], dim=1)
    full_mask = torch.cat([pre["attention_mask"][rep], suf["attention_mask"]], dim=1)
    mm_types = torch.cat([pre["mm_token_type_ids"][rep], torch.zeros_like(suf["input_ids"])], dim=1)
    grids = pre["image_grid_thw"].view(batch, -1, 3)[rep].reshape(-1, 3)
    positions, _ = model.model.get_rope_index(full_ids, mm_token_type_ids=mm_types, image_grid_thw=grids,
                                              attention_mask=full_mask)
    prefix_len = pre["input_ids"].shape[1]

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config())
    kv = cache_kwargs(model, cache)
    timer = PhaseTimer(device, timings)
    with torch.inference_mode():
        timer.start()
        vision = model.model.get_image_features(pre["pixel_values"], pre["image_grid_thw"], return_dict=True)
        timer.stop("vision")
        timer.start()
        model(input_ids=pre["input_ids"], attention_mask=pre["attention_mask"],
              position_ids=positions[:, rep.new_tensor(range(0, rows, n_modes)), :prefix_len],
              mm_encoder_outputs={"image": vision}, image_grid_thw=pre["image_grid_thw"],
              mm_token_type_ids=pre["mm_token_type_ids"], **kv, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(n_modes)
        out = model(input_ids=suf["input_ids"], attention_mask=full_mask, position_ids=positions[:, :, prefix_len:],
                    **kv, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
        timer.stop("prefill")
        if protocol == "fast":
            return fast_results(logits[:, digit_index], modes, batch)
        timer.start()
        results = _decode(model, tok, cache, logits, full_mask, positions[:, :, -1:] + 1,
                          digit_index, digit_ids, decoding, modes, timings)
        timer.stop("decode")
        return results


def fast_results(digit_logits: Any, modes: list[str], batch: int) -> dict[str, list[ModeScore]]:
    results: dict[str, list[ModeScore]] = {m: [] for m in modes}
    for r in range(digit_logits.shape[0]):
        probs, expected = digit_distribution(digit_logits[r])
        score = max(range(5), key=lambda k: probs[k]) + 1
        raw = f"{FAST_ANSWER_PREFIX}{score}]\n}}"
        results[modes[r % len(modes)]].append(ModeScore(score=score, expected=expected, probs=probs,
                                                        reasoning=None, parse_ok=True, raw=raw))
    return results


def _decode(model: Any, tok: Any, cache: Any, logits: Any, mask: Any, next_pos: Any, digit_index: Any,
            digit_ids: list[int], decoding: DecodingConfig, modes: list[str],
            timings: dict[str, float] | None = None) -> dict[str, list[ModeScore]]:
    """Greedy decode; rows leave the batch (and the cache) as soon as they finish."""
    import torch

    n = logits.shape[0]
    state = _Rows(n)
    stop_ids = set(stop_token_ids(tok, getattr(model, "generation_config", None)))
    active = list(range(n))  # row index of each row still in the batch
    for _step in range(decoding.max_new_tokens):
        next_tok = logits.argmax(dim=-1)
        digits = logits[:, digit_index]  # stays on the device until the read-out
        keep = []
        # one device-to-host copy per step for all rows (not one synchronising int() per row)
        for k, (r, t) in enumerate(zip(active, next_tok.tolist(), strict=True)):
            if t in stop_ids:
                state.done[r] = True
                continue
            state.tokens[r].append(t)
            state.digit_logits[r].append(digits[k])
            if decoding.stop_on_close and closes_answer(tok, state.tokens[r]):
                state.done[r] = True
                continue
            keep.append(k)
        if not keep or _step == decoding.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            sel = torch.tensor(keep, device=logits.device)
            cache.batch_select_indices(sel)
            active = [active[k] for k in keep]
            next_tok, mask, next_pos = next_tok[sel], mask[sel], next_pos[:, sel]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        with torch.inference_mode():
            out = model(input_ids=next_tok[:, None], attention_mask=mask, position_ids=next_pos,
                        **cache_kwargs(model, cache), use_cache=True)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1

    if timings is not None:
        timings["decode_tokens"] = timings.get("decode_tokens", 0) + sum(len(t) for t in state.tokens)
    results: dict[str, list[ModeScore]] = {m: [] for m in modes}
    for r in range(n):
        raw = tok.decode(state.tokens[r], skip_special_tokens=True)
        parsed = parse_answer(raw)
        probs, expected = readout(tok, state.tokens[r], state.digit_logits[r], parsed.score_offset,
                                  digit_ids, parsed.score)
        results[modes[r % len(modes)]].append(ModeScore(score=parsed.score, expected=expected, probs=probs,
                                                        reasoning=parsed.reasoning, parse_ok=parsed.parse_ok,
                                                        raw=raw))
    return results
