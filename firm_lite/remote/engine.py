"""The remote backend: firm-lite's protocol against running OpenAI-compatible servers.

:class:`RemoteEngine` scores prepared pairs by sending one chat completion per (pair, mode) to
``vllm serve`` of the critic (or any server speaking vLLM's OpenAI dialect), spread over the
endpoints and run concurrently (:mod:`firm_lite.remote.dispatch`). The server only generates:
firm-lite decodes the returned token ids itself and applies its own stop rule, parser and digit
read-out (:func:`firm_lite.vllm_backend.answers.mode_score`, shared with the in-process vLLM
engine), so a record means what a record of the other backends means.

At construction every endpoint is probed, and anything that would make scores wrong or every
request fail is refused in one line: unreachable, key refused, not a chat server, endpoints
serving different models, a server that renders a different prompt for the same turn (another
chat template, tokenizer or image budget: checked on the prompt token ids vLLM returns).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from firm_lite.engine import PROTOCOLS, fast_results
from firm_lite.errors import UserError
from firm_lite.generation import DecodingConfig, digit_token_ids, stop_token_ids
from firm_lite.images import ImageBudget
from firm_lite.prompts import MODES
from firm_lite.records import EditPair, ModeScore
from firm_lite.remote.dispatch import Dispatch, Job
from firm_lite.remote.http import EndpointUnreachable, Http, RemoteError, api_root
from firm_lite.remote.probe import probe_endpoint
from firm_lite.remote.wire import (
    Completion,
    RemoteResponseError,
    error_text,
    image_data_url,
    messages,
    parse_completion,
    request_body,
)
from firm_lite.settings import RemoteOptions
from firm_lite.vllm_backend.answers import mode_score, step_digit_logprobs

Render = Callable[[str, str, str], str]  # (mode, instruction, requirement) -> rendered prompt
IMAGE_TOKEN = "<|image_pad|>"  # Qwen-VL's image placeholder, one per image token in the prompt ids
DOWN_S = 30.0  # an endpoint that never answered is left alone this long before it is tried again


class RemoteEngine:
    """Scores prepared ``(EditPair, source, edited)`` items on remote servers."""

    def __init__(self, options: RemoteOptions, processor: Any, render: Render, budget: ImageBudget,
                 decoding: DecodingConfig) -> None:
        if not decoding.greedy or not decoding.stop_on_close:
            raise ValueError("the remote backend runs the reference protocol: greedy, stop when the answer closes")
        if not options.endpoints:
            raise UserError("the remote backend needs at least one endpoint URL (--endpoint)")
        self.options, self.processor, self.render, self.budget, self.decoding = (options, processor, render,
                                                                                 budget, decoding)
        tokenizer = processor.tokenizer
        self.digit_ids = digit_token_ids(tokenizer)
        self.stop_ids = stop_token_ids(tokenizer)
        self.endpoints = list(dict.fromkeys(api_root(e) for e in options.endpoints))
        self._http = Http(options, pool_size=options.concurrency * len(self.endpoints))
        self._down_until: dict[str, float] = {}
        self._tokenizer_lock = threading.Lock()
        self._call_lock = threading.Lock()  # one score_modes at a time (as the other engines)
        self._salvage: dict[tuple[int, str, str], tuple[Any, ...]] = {}  # see _reuse
        self._salvage_batch: set[int] = set()
        try:
            probes = [probe_endpoint(self._http, e, processor, render, budget, self.digit_ids, self.stop_ids)
                      for e in self.endpoints]
        except BaseException:
            self._http.close()
            raise
        models = {p.served_model for p in probes}
        if len(models) > 1:
            self._http.close()
            listed = ", ".join(f"{p.endpoint} serves {p.served_model!r}" for p in probes)
            raise UserError(f"the endpoints serve different models ({listed}): point every --endpoint at the same "
                            "critic")
        self.served_model: str = models.pop()
        self.probs_exact: bool = all(p.exact for p in probes)
        self.budget_per_request = all(p.per_request_budget for p in probes)
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        versions = {p.endpoint: p.server_version for p in probes if p.server_version}
        self.provenance: dict[str, Any] = {
            "backend": "remote", "endpoints": list(self.endpoints), "served_model": self.served_model,
            "probs": "exact" if self.probs_exact else "partial-top-logprobs",
            "prompt_check": sorted({p.prompt_check for p in probes}),
            "image_budget": "per request" if self.budget_per_request else "the server's (its launch flags), "
                            "checked on every answer's image tokens",
            "options": options.as_record(),
        }
        if versions:
            distinct = set(versions.values())
            self.provenance["server_version"] = distinct.pop() if len(distinct) == 1 else versions
        self._pool = ThreadPoolExecutor(max_workers=options.concurrency * len(self.endpoints),
                                        thread_name_prefix="firm-lite-remote")

    # -- scoring -----------------------------------------------------------------------------------

    def score_modes(self, items: list[tuple[EditPair, Any, Any]], modes: Iterable[str] = MODES,
                    timings: dict[str, float] | None = None, *, protocol: str = "full") -> dict[str, list[ModeScore]]:
        """Same meaning as :meth:`firm_lite.vllm_backend.engine.VllmEngine.score_modes`. Raises the
        first failure (after retries) once every other request has finished; their answers are
        kept for the next call on the same items, so the caller's item-by-item re-score of a
        failed batch (:meth:`~firm_lite.critic.Critic.score_isolated`) only re-sends what failed."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}")
        if self._http.stop.is_set():
            raise RuntimeError("this remote engine is closed")
        modes = tuple(modes)
        if not items:
            return {m: [] for m in modes}
        start = time.perf_counter()
        with self._call_lock:
            done, jobs = self._reuse(items, modes, protocol)
            if jobs:
                done.update(self._run(items, jobs, protocol))
        errors = {job: out for job, out in done.items() if isinstance(out, Exception)}
        if errors:
            self._keep(items, done, protocol)
            (index, mode), first = min(errors.items(), key=lambda kv: (kv[0][0], modes.index(kv[0][1])))
            if len(errors) == 1 and len(items) == 1:
                raise first
            unreachable = all(isinstance(e, EndpointUnreachable) for e in errors.values())
            kind = EndpointUnreachable if unreachable else RemoteError
            raise kind(f"{len(errors)} of {len(done)} requests failed, first pair {items[index][0].id}/{mode}: "
                       f"{type(first).__name__}: {first}") from first
        results: dict[str, list[ModeScore]] = {m: [] for m in modes}
        tokens = wasted = 0
        for index in range(len(items)):
            for mode in modes:
                score, used, extra = done[(index, mode)]
                results[mode].append(score)
                tokens, wasted = tokens + used, wasted + extra
        if timings is not None:
            elapsed = time.perf_counter() - start
            for key, value in (("generate", elapsed), ("decode_tokens", tokens), ("wasted_decode_tokens", wasted)):
                timings[key] = timings.get(key, 0) + value
        return results

    def _reuse(self, items: list[tuple[EditPair, Any, Any]], modes: tuple[str, ...], protocol: str
               ) -> tuple[dict[Job, Any], list[tuple[int, tuple[str, ...]]]]:
        """Answers kept from a failed call on these very items (same objects), and what is left to send."""
        if not {id(item[0]) for item in items} <= self._salvage_batch:  # the caller moved on
            self._salvage, self._salvage_batch = {}, set()
        done: dict[Job, Any] = {}
        jobs = []
        for index, item in enumerate(items):
            for mode in modes:
                kept = self._salvage.pop((id(item[0]), mode, protocol), None)
                if kept is not None and all(a is b for a, b in zip(kept[:3], item, strict=True)):
                    done[(index, mode)] = kept[3]
            todo = tuple(m for m in modes if (index, m) not in done)
            if todo:
                jobs.append((index, todo))
        return done, jobs

    def _keep(self, items: list[tuple[EditPair, Any, Any]], done: dict[Job, Any], protocol: str) -> None:
        """The answers of a failed call, for the re-scores of its items (they hold the items, so
        an item's ``id`` stays its own while kept)."""
        if not self._salvage_batch:
            self._salvage_batch = {id(item[0]) for item in items}
        self._salvage.update({(id(items[i][0]), m, protocol): (*items[i], out) for (i, m), out in done.items()
                              if not isinstance(out, Exception)})

    def _run(self, items: list[tuple[EditPair, Any, Any]], jobs: list[tuple[int, tuple[str, ...]]],
             protocol: str) -> dict[Job, Any]:
        up = [e for e in self.endpoints if self._is_up(e)]
        if not up:
            raise EndpointUnreachable(f"no endpoint is reachable ({', '.join(self.endpoints)} gave no answer "
                                      f"within the last {DOWN_S:.0f} s)")
        run = Dispatch(jobs, self.endpoints, self._is_up, self._http.stop)
        urls = _ImageUrls(items, {i: len(modes) for i, modes in jobs})
        futures = [self._pool.submit(self._slot, run, endpoint, items, urls, protocol)
                   for endpoint in up for _ in range(self.options.concurrency)]
        for future in futures:
            future.result()
        out: dict[Job, Any] = {**run.results, **run.errors}
        for job in run.unfinished():
            out[job] = (RemoteError("the remote engine is closed") if self._http.stop.is_set() else
                        EndpointUnreachable(f"no endpoint is reachable ({', '.join(self.endpoints)})"))
        return out

    def _slot(self, run: Dispatch, endpoint: str, items: list[tuple[EditPair, Any, Any]], urls: _ImageUrls,
              protocol: str) -> None:
        """One in-flight request at a time for ``endpoint``, until the call has nothing left for it."""
        try:
            while (job := run.take(endpoint)) is not None:
                index, mode = job
                try:
                    result = self._request(endpoint, items[index], mode, urls.get(index), protocol)
                except EndpointUnreachable as exc:
                    self._down_until[endpoint] = time.monotonic() + DOWN_S
                    run.requeue(job, endpoint, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - the item's failure, raised by score_modes
                    run.finish(job, error=exc)
                else:
                    run.finish(job, result)
                urls.release(index)
        except BaseException:
            run.abort()
            raise

    def _request(self, endpoint: str, item: tuple[EditPair, Any, Any], mode: str, images: tuple[str, str],
                 protocol: str) -> tuple[ModeScore, int, int]:
        pair, source, edited = item
        fast = protocol == "fast"
        body = request_body(self.served_model, messages(mode, pair.instruction, pair.requirement, *images, protocol),
                            max_tokens=1 if fast else self.decoding.max_new_tokens, stop_ids=self.stop_ids,
                            digit_ids=self.digit_ids, exact=self.probs_exact,
                            processor_kwargs=self.budget.processor_kwargs() if self.budget_per_request else None,
                            continue_final=fast)
        response = self._http.request("POST", f"{endpoint}/v1/chat/completions",
                                      content=json.dumps(body).encode("utf-8"))
        del body
        if response.status_code != 200:
            raise RemoteError(f"{endpoint}: HTTP {response.status_code} (not retried): {error_text(response.content)}")
        completion = parse_completion(response.content, self.digit_ids, exact=self.probs_exact)
        if completion.prompt_token_ids is not None:
            self._check_image_tokens(endpoint, completion.prompt_token_ids, pair, source, edited)
        with self._tokenizer_lock:
            return self._answer(completion, mode, fast)

    def _check_image_tokens(self, endpoint: str, prompt_ids: list[int], pair: EditPair, source: Any,
                            edited: Any) -> None:
        """The server saw each image at the critic's budget (its own budget may differ when it
        refuses ours per request): the image-token count of the prompt says so."""
        got = prompt_ids.count(self.image_token_id)
        want = sum(self.budget.tokens_for(*im.size) for im in (source, edited))
        if got != want:
            raise RemoteError(f"{endpoint}: the server gave pair {pair.id}'s images {got} image tokens where the "
                              f"critic's budget gives {want}: start it with --mm-processor-kwargs "
                              f"'{json.dumps(self.budget.processor_kwargs())}' (firm_lite.remote.vllm_serve_command)")

    def _answer(self, completion: Completion, mode: str, fast: bool) -> tuple[ModeScore, int, int]:
        if fast:
            import torch

            if not completion.steps:
                raise RemoteResponseError("the server generated no token for the fast protocol's score step")
            digits = step_digit_logprobs(completion.steps[:1], self.digit_ids)[0]
            if not torch.isfinite(digits).any():
                raise RemoteResponseError("the server's top log-probabilities hold none of the score digits")
            return fast_results(digits[None], [mode], 1)[mode][0], 0, 0
        score, extra = mode_score(self.processor.tokenizer, completion.token_ids, completion.steps, self.digit_ids,
                                  set(self.stop_ids))
        if score.probs is not None and any(p != p for p in score.probs):  # no digit among the top log-probs
            score.probs, score.expected = None, None
        return score, len(completion.token_ids) - extra, extra

    def _is_up(self, endpoint: str) -> bool:
        return self._down_until.get(endpoint, 0.0) <= time.monotonic()

    def close(self) -> None:
        """Cut retries short, wait for in-flight requests, close the connections."""
        http = getattr(self, "_http", None)
        if http is None:
            return
        http.stop.set()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        http.close()
        self._salvage, self._salvage_batch = {}, set()


class _ImageUrls:
    """Each pair's two PNG data URLs, encoded once by the first of its modes sent and dropped when
    its last mode is done (so only pairs in flight hold encoded images)."""

    def __init__(self, items: list[tuple[EditPair, Any, Any]], uses: dict[int, int]) -> None:
        self.items, self.uses = items, dict(uses)
        self.lock = threading.Lock()
        self.cache: dict[int, tuple[str, str]] = {}
        self.pair_locks: dict[int, threading.Lock] = {}

    def get(self, index: int) -> tuple[str, str]:
        with self.lock:
            pair_lock = self.pair_locks.setdefault(index, threading.Lock())
        with pair_lock:  # the pair's other mode waits for this encoding instead of repeating it
            if index not in self.cache:
                _, source, edited = self.items[index]
                self.cache[index] = (image_data_url(source), image_data_url(edited))
            return self.cache[index]

    def release(self, index: int) -> None:
        with self.lock:
            self.uses[index] -= 1
            if self.uses[index] <= 0:
                self.cache.pop(index, None)
                self.pair_locks.pop(index, None)
