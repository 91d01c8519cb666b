"""Before scoring against a server: is it there, does it take the key, is it a chat server that
gives what firm-lite reads, and does it see the very prompt firm-lite would send?

:func:`probe_endpoint` asks ``GET /v1/models`` (the served model), ``GET /version`` (vLLM's
version, if the server has the route) and one one-token chat request on two small images with
``logprob_token_ids`` and the critic's image budget: a server that returns all five digit
log-probabilities honours it (``exact``), one that does not gets top log-probabilities later; a
server that refuses a per-request budget (vLLM's default) is asked again without it, and then its
launch budget is what the image-token checks below and on every answer hold to firm-lite's. When the server returns the
prompt's token ids (vLLM's ``return_token_ids``) they are compared with the processor's own for
the same turn and image budget: another chat template, tokenizer or image budget would score a
different prompt, so it is refused here rather than discovered in the results. Each failure is a
one-line :class:`~firm_lite.errors.UserError` naming the endpoint and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firm_lite.errors import UserError
from firm_lite.images import ImageBudget
from firm_lite.remote.http import Http, RemoteError
from firm_lite.remote.wire import (
    RemoteResponseError,
    error_text,
    image_data_url,
    messages,
    parse_completion,
    request_body,
)

PROBE_MODE = "execution"
PROBE_INSTRUCTION = "Make the sky blue."
PROBE_MAX_PIXELS = 2048 * 2048  # the largest budget whose upper bound the probe checks (4096 image tokens)
SERVE_HINT = "firm_lite.remote.vllm_serve_command gives the vLLM command that matches firm-lite's settings"


@dataclass(frozen=True)
class Probe:
    endpoint: str
    served_model: str
    server_version: str | None
    exact: bool  # the server honours logprob_token_ids
    prompt_check: str  # "token ids equal" or why it was not checked
    per_request_budget: bool  # the server takes the image budget per request (else its launch budget is used)


def probe_images(budget: ImageBudget) -> tuple[Any, Any]:
    """An image under the budget's least pixels (scaled up) and, where that costs at most a few
    thousand image tokens, one over its most (scaled down): the token check then sees both bounds."""
    import math

    from PIL import Image

    side = math.isqrt(int(budget.max_pixels * 1.2)) if budget.max_pixels <= PROBE_MAX_PIXELS else 64
    return Image.new("RGB", (64, 48), (200, 40, 40)), Image.new("RGB", (side, side), (40, 40, 200))


def probe_endpoint(http: Http, endpoint: str, processor: Any, render: Callable[[str, str, str], str],
                   budget: ImageBudget, digit_ids: list[int], stop_ids: list[int]) -> Probe:
    model = _served_model(http, endpoint)
    version = _server_version(http, endpoint)
    source, edited = probe_images(budget)
    chat = messages(PROBE_MODE, PROBE_INSTRUCTION, "", image_data_url(source), image_data_url(edited))
    per_request_budget = True
    response = _probe_chat(http, endpoint, model, chat, digit_ids, stop_ids, budget.processor_kwargs())
    if response.status_code == 400 and "mm_processor_kwargs" in error_text(response.content):
        # vLLM refuses a per-request image budget unless started with --trust-request-mm-kwargs:
        # its launch budget (--mm-processor-kwargs) is used, and checked on every answer
        per_request_budget = False
        response = _probe_chat(http, endpoint, model, chat, digit_ids, stop_ids, None)
    if response.status_code != 200:
        raise UserError(f"{endpoint}: a one-token test request failed with HTTP {response.status_code}: "
                        f"{error_text(response.content)}")
    try:
        completion = parse_completion(response.content, digit_ids, exact=True)
    except RemoteResponseError as exc:
        raise UserError(f"{endpoint}: not a chat server firm-lite can score with: {exc}") from None
    if not completion.steps:
        raise UserError(f"{endpoint}: the one-token test request generated no token")
    exact = all(d in completion.steps[0] for d in digit_ids)
    if completion.prompt_token_ids is None:
        check = "not checked: the server returned no prompt token ids"
    else:
        local = _local_prompt_ids(processor, render, budget, source, edited)
        if completion.prompt_token_ids != local:
            raise UserError(f"{endpoint}: the server's prompt is not firm-lite's for the same turn "
                            f"({_first_difference(completion.prompt_token_ids, local)}): it serves another chat "
                            f"template, tokenizer or image budget; {SERVE_HINT}")
        check = "token ids equal"
    return Probe(endpoint=endpoint, served_model=model, server_version=version, exact=exact, prompt_check=check,
                 per_request_budget=per_request_budget)


def _probe_chat(http: Http, endpoint: str, model: str, chat: list[dict[str, Any]], digit_ids: list[int],
                stop_ids: list[int], processor_kwargs: dict[str, Any] | None) -> Any:
    body = request_body(model, chat, max_tokens=1, stop_ids=stop_ids, digit_ids=digit_ids, exact=True,
                        processor_kwargs=processor_kwargs)
    return _call(http, "POST", f"{endpoint}/v1/chat/completions", content=json.dumps(body).encode("utf-8"))


def _call(http: Http, method: str, url: str, content: bytes | None = None, retries: int | None = None) -> Any:
    endpoint = url.rsplit("/v1/", 1)[0] if "/v1/" in url else url
    try:
        response = http.request(method, url, content=content, retries=retries)
    except RemoteError as exc:
        raise UserError(f"{endpoint}: cannot use the server ({exc}): is it running? {SERVE_HINT}") from None
    if response.status_code in (401, 403):
        raise UserError(f"{endpoint}: the server refused the API key (HTTP {response.status_code}): pass the "
                        "server's key (--api-key)")
    return response


def _served_model(http: Http, endpoint: str) -> str:
    response = _call(http, "GET", f"{endpoint}/v1/models")
    try:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {error_text(response.content)}")
        models = [m["id"] for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{endpoint}: GET /v1/models did not list models ({exc}): not an OpenAI-compatible "
                        "server (the URL should be the server's root, e.g. http://host:8000)") from None
    if len(models) != 1 or not isinstance(models[0], str):
        raise UserError(f"{endpoint}: the server serves {len(models)} models ({', '.join(map(str, models))}): "
                        "firm-lite scores against a server of the critic alone")
    return models[0]


def _server_version(http: Http, endpoint: str) -> str | None:
    try:
        response = http.request("GET", f"{endpoint}/version", retries=0)
        version = response.json().get("version") if response.status_code == 200 else None
    except (RemoteError, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None


def _local_prompt_ids(processor: Any, render: Callable[[str, str, str], str], budget: ImageBudget,
                      source: Any, edited: Any) -> list[int]:
    text = render(PROBE_MODE, PROBE_INSTRUCTION, "")
    inputs = processor(text=[text], images=[source, edited], return_tensors="pt", **budget.processor_kwargs())
    return [int(t) for t in inputs["input_ids"][0].tolist()]


def _first_difference(server: list[int], local: list[int]) -> str:
    k = next((i for i, (a, b) in enumerate(zip(server, local, strict=False)) if a != b), min(len(server), len(local)))
    return f"{len(server)} tokens against firm-lite's {len(local)}, first difference at token {k}"
