"""What goes over the wire to an OpenAI-compatible server, and what is read back.

One request is one chat call of the reference protocol: a single user turn holding the ORIGINAL
image, the EDITED image and the mode's verbatim template text (the order of
:func:`firm_lite.prompts.build_messages`), with the images as lossless PNG data URLs of the
pictures the critic decoded (so the server sees the same pixels as the in-process engines), the
critic's image budget per request (``mm_processor_kwargs``, where the server allows it), greedy
decoding with the answer cap and firm-lite's stop tokens, and every sampling knob that could change
a greedy token set to its neutral value (a server's generation config may set a repetition penalty
as a default).

Beyond the OpenAI fields it uses vLLM's: ``logprob_token_ids`` (the five digit log-probabilities
at every step), ``return_token_ids`` (the completion's token ids, which firm-lite decodes and cuts
with its own stop rule), ``return_tokens_as_token_ids`` (log-probability entries named by id, not
text), and ``continue_final_message`` for the fast protocol's forced answer prefix. A server that
ignores ``logprob_token_ids`` is asked for the top 20 log-probabilities instead
(``exact=False``); digits missing from them get no probability mass (-inf), so the read-out is
renormalised over the digits present.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from firm_lite.engine import FAST_ANSWER_PREFIX
from firm_lite.prompts import render_prompt

TOP_LOGPROBS = 20  # OpenAI's maximum, the fallback when logprob_token_ids is not honoured
TOKEN_ID_PREFIX = "token_id:"  # vLLM's name of a token with return_tokens_as_token_ids
ERROR_TEXT_CHARS = 300  # how much of a server's error text goes into one error line


class RemoteResponseError(RuntimeError):
    """The server answered 200 with a body that is not a completion firm-lite can read."""


@dataclass(frozen=True)
class Logprob:
    """One log-probability, shaped like vLLM's (``.logprob``) for the shared read-out."""

    logprob: float


def image_data_url(image: Any) -> str:
    """A decoded image as a PNG data URL: lossless, so the server decodes the very pixels.
    Compression level 1: these bytes live for one request; speed beats size."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def messages(mode: str, instruction: str, requirement: str, source_url: str, edited_url: str,
             protocol: str = "full") -> list[dict[str, Any]]:
    """The chat turn of :func:`firm_lite.prompts.build_messages` in the OpenAI content format; the
    fast protocol adds the forced answer prefix as an assistant message to continue."""
    turn: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": source_url}},
        {"type": "image_url", "image_url": {"url": edited_url}},
        {"type": "text", "text": render_prompt(mode, instruction, requirement)},
    ]}]
    if protocol == "fast":
        turn.append({"role": "assistant", "content": FAST_ANSWER_PREFIX})
    return turn


def request_body(model: str, chat: list[dict[str, Any]], *, max_tokens: int, stop_ids: list[int],
                 digit_ids: list[int], exact: bool, processor_kwargs: dict[str, Any] | None,
                 continue_final: bool = False) -> dict[str, Any]:
    """The body of one ``POST /v1/chat/completions``. ``processor_kwargs`` (the image budget) is
    left out for a server that refuses it per request (vLLM without ``--trust-request-mm-kwargs``):
    that server's own budget is then checked on every answer's image tokens."""
    body: dict[str, Any] = {
        "model": model,
        "messages": chat,
        "max_tokens": max_tokens,
        "n": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop_token_ids": stop_ids,
        "logprobs": True,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "add_generation_prompt": not continue_final,
        "continue_final_message": continue_final,
        "stream": False,
    }
    if processor_kwargs is not None:
        body["mm_processor_kwargs"] = processor_kwargs
    if exact:
        body["logprob_token_ids"] = digit_ids
    else:
        body["top_logprobs"] = TOP_LOGPROBS
    return body


def _entry_id(entry: dict[str, Any], digit_ids: list[int]) -> int | None:
    """The token id of a log-probability entry: ``token_id:N`` (vLLM), else a digit's text."""
    token = entry.get("token")
    if not isinstance(token, str):
        return None
    if token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX):])
        except ValueError:
            return None
    return digit_ids[int(token) - 1] if token in ("1", "2", "3", "4", "5") else None


@dataclass
class Completion:
    """What firm-lite reads from one completion: the generated ids and, per step, the
    log-probabilities given (digit ids and the sampled token)."""

    token_ids: list[int]
    steps: list[dict[int, Logprob]]
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None


def parse_completion(payload: bytes, digit_ids: list[int], exact: bool) -> Completion:
    """Read one chat completion body; a missing digit is -inf when ``exact`` is False (top
    log-probabilities), and left out when True (the read-out then refuses the answer)."""
    try:
        data = json.loads(payload)
        choice = data["choices"][0]
        content = (choice.get("logprobs") or {}).get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise RemoteResponseError(f"the server's answer is not a chat completion ({type(exc).__name__}: "
                                  f"{str(exc)[:100]}): {payload[:ERROR_TEXT_CHARS]!r}") from None
    if not isinstance(content, list):
        raise RemoteResponseError("the server returned no log-probabilities (logprobs.content): firm-lite reads "
                                  "the score's digit probabilities from them")
    ids = choice.get("token_ids")
    if ids is None:  # a server without return_token_ids: the sampled tokens named by id, if at all
        ids = [_entry_id(step, digit_ids) if isinstance(step, dict) else None for step in content]
        if None in ids:
            raise RemoteResponseError("the server returned neither token ids (vLLM's return_token_ids) nor "
                                      "tokens named by id (return_tokens_as_token_ids)")
    if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)) or len(ids) != len(content):
        raise RemoteResponseError(f"the server's token ids ({str(ids)[:80]}) do not match its "
                                  f"{len(content)} log-probability steps")
    steps = []
    for token, step in zip(ids, content, strict=True):
        try:
            found = {_entry_id(e, digit_ids): float(e["logprob"]) for e in step.get("top_logprobs") or []}
            if step.get("logprob") is not None:
                found[token] = float(step["logprob"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RemoteResponseError(f"malformed log-probability entry in the server's answer ({exc!r})") from None
        found.pop(None, None)
        if not exact:
            for d in digit_ids:
                found.setdefault(d, -math.inf)
        steps.append({t: Logprob(lp) for t, lp in found.items()})
    prompt_ids = data.get("prompt_token_ids")
    return Completion(token_ids=ids, steps=steps,
                      prompt_token_ids=prompt_ids if isinstance(prompt_ids, list) else None,
                      prompt_text=data.get("prompt_text") if isinstance(data.get("prompt_text"), str) else None)


def error_text(payload: bytes) -> str:
    """A server's error body as one short line (OpenAI shape ``{"error": {"message"}}`` or text)."""
    try:
        data = json.loads(payload)
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
        if isinstance(data, dict) and "detail" in data and not isinstance(message, str):
            message = data["detail"]
        text = str(message)
    except ValueError:
        text = payload.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_CHARS else text[:ERROR_TEXT_CHARS] + "..."
