"""What the server accepts and answers: the reference wire protocol and the JSON API, validated.

The reference protocol (``POST /mode/score_execution|score_consistency``) carries a pickled dict
``{"images": [edited JPEG bytes], "ref_images": [original JPEG bytes], "prompts": [str],
"metadatas": [{"requirement": str, ...}]}`` and answers ``{"scores": [int], "reasonings": [str]}``.
The reference silently truncates mismatched lists (``zip``) and answers 500 for anything wrong;
here every shape error is a 400 whose one-line message names the field and index, so a trainer
stops on a bad batch instead of retrying it (its client retries only 500 and 503+Retry-After).

A score the critic's answer does not yield goes on the wire as 0, as the reference sends, and
its index is listed under ``parse_failures`` (an extra key old clients ignore).

The JSON API (``POST /v1/score``) takes base64 images or multipart uploads and answers with the
same records ``firm-lite score --json`` prints. Ids are strings or integers (an integer becomes its
decimal string, as in manifests); anything else is a 400.

Two stages, so that memory is bounded by design:

- **At the edge** (request time, cheap): shapes, texts (:func:`~firm_lite.records.check_text`: a
  lone surrogate is a 400 naming the field, before it can reach the shared batch's tokenizer) and
  each image's header (:func:`admit_pairs`: format, size and aspect guards, no pixel decoded). The
  header also gives what the decode will keep (:func:`~firm_lite.images.kept_bytes`), which the
  app reserves from the in-flight budget before queueing.
- **In the worker**, right before its batch is scored: :func:`decode_queued` decodes the pair
  through :meth:`Critic.prepare` (once per image, shrunk to what the budget keeps). A pair that
  fails there fails alone: a 400 naming its index on the reference routes, an error record on
  the JSON API.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from firm_lite.errors import ImageError, PairError
from firm_lite.images import kept_bytes, probe_image
from firm_lite.prompts import TEMPLATE_KEYS
from firm_lite.records import EditPair, ModeScore, check_text
from firm_lite.server.access import RequestRefused

# Route name on the wire -> critic mode ("score_execution" -> "execution").
ROUTE_MODES: dict[str, str] = {wire: mode for mode, wire in TEMPLATE_KEYS.items()}
WIRE_FAILED_SCORE = 0  # what the reference sends when no score could be read
JSON_PAIR_KEYS = frozenset({"id", "source", "edited", "instruction", "requirement"})

PreparedItem = tuple[EditPair, Any, Any]


__all__ = ["RequestRefused", "QueuedPair", "parse_reference_request", "parse_json_request",
           "parse_multipart_request", "admit_pairs", "decode_queued", "reference_response"]


@dataclass(frozen=True)
class QueuedPair:
    """A pair that passed the edge checks, waiting for the worker: still encoded bytes.

    ``labels`` name its ORIGINAL and EDITED image in messages; ``cost`` is the estimated bytes
    its decoded images will hold (:func:`~firm_lite.images.kept_bytes`)."""

    index: int
    pair: EditPair
    labels: tuple[str, str]
    cost: int


def _bad(message: str) -> RequestRefused:
    return RequestRefused(400, message)


def _check_count(n: int, max_items: int) -> None:
    if n > max_items:
        raise _bad(f"{n} edits in one request is over this server's limit of {max_items} "
                   "(--max-items); send smaller batches")


def _as_list(payload: dict[str, Any], key: str) -> list[Any]:
    if key not in payload:
        raise _bad(f"missing key {key!r}: the body needs images, ref_images and prompts (metadatas optional)")
    value = payload[key]
    if not isinstance(value, (list, tuple)):
        raise _bad(f"{key} must be a list (got {type(value).__name__})")
    return list(value)


def parse_reference_request(payload: Any, max_items: int) -> list[EditPair]:
    """Check a decoded reference body and return one :class:`EditPair` (bytes images) per edit."""
    if not isinstance(payload, dict):
        raise _bad(f"body must be a pickled dict with images, ref_images, prompts (got {type(payload).__name__})")
    edited = _as_list(payload, "images")
    source = _as_list(payload, "ref_images")
    prompts = _as_list(payload, "prompts")
    metadatas = payload.get("metadatas")
    if metadatas is None:
        metadatas = []
    if not isinstance(metadatas, (list, tuple)):
        raise _bad(f"metadatas must be a list of dicts (got {type(metadatas).__name__})")
    lengths = {"images": len(edited), "ref_images": len(source), "prompts": len(prompts)}
    if metadatas:
        lengths["metadatas"] = len(metadatas)
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise _bad(f"list lengths differ ({listed}): every list needs one entry per edit")
    n = len(edited)
    _check_count(n, max_items)
    pairs = []
    for i in range(n):
        for key, value in (("images", edited[i]), ("ref_images", source[i])):
            if not isinstance(value, (bytes, bytearray)):
                raise _bad(f"{key}[{i}] is {type(value).__name__}; expected JPEG bytes")
        if not isinstance(prompts[i], str):
            raise _bad(f"prompts[{i}] is {type(prompts[i]).__name__}; expected str")
        _text(prompts[i], f"prompts[{i}]", f"item {i}: ")
        requirement = ""
        if metadatas:
            meta = metadatas[i]
            if not isinstance(meta, dict):
                raise _bad(f"metadatas[{i}] is {type(meta).__name__}; expected a dict")
            requirement = meta.get("requirement", "")
            if requirement is None:
                requirement = ""
            if not isinstance(requirement, str):
                raise _bad(f"metadatas[{i}].requirement is {type(requirement).__name__}; expected str")
            _text(requirement, f"metadatas[{i}].requirement", f"item {i}: ")
        pairs.append(EditPair(id=str(i), source=bytes(source[i]), edited=bytes(edited[i]),
                              instruction=prompts[i], requirement=requirement))
    return pairs


def _text(value: str, what: str, prefix: str = "") -> str:
    try:
        return check_text(value, what)
    except PairError as exc:
        raise _bad(f"{prefix}{exc}") from None


def _probe_pair(critic: Any, pair: EditPair, labels: tuple[str, str]) -> int:
    budget = getattr(critic, "budget", None)
    total = 0
    for label, data in zip(labels, (pair.source, pair.edited), strict=True):
        try:
            width, height = probe_image(data, critic.max_image_pixels)
        except ImageError as exc:
            raise ImageError(f"{label}: {exc}") from None
        total += kept_bytes(width, height, budget)
    return total


def reference_labels(i: int) -> tuple[str, str]:
    return f"ref_images[{i}] (original)", f"images[{i}] (edited)"


def admit_pairs(critic: Any, pairs: Sequence[EditPair], reference: bool
                ) -> tuple[list[QueuedPair], dict[int, str]]:
    """Probe every pair's image headers (no pixel decoded). On the reference routes the first bad
    pair is a 400 naming its index; on the JSON API it becomes an error message for its record."""
    queued: list[QueuedPair] = []
    errors: dict[int, str] = {}
    for i, pair in enumerate(pairs):
        labels = reference_labels(i) if reference else ("source", "edited")
        try:
            queued.append(QueuedPair(i, pair, labels, _probe_pair(critic, pair, labels)))
        except PairError as exc:
            if reference:
                raise _bad(f"item {i}: {exc}") from None
            errors[i] = pair_message(pair.id, exc)
    return queued, errors


def pair_message(pair_id: str, exc: BaseException) -> str:
    """The error text of a JSON record: ``pair ID: what went wrong``."""
    text = str(exc)
    return text if text.startswith(f"pair {pair_id}:") else f"pair {pair_id}: {text}"


_STAND_IN = None


def _stand_in_image() -> Any:
    global _STAND_IN
    if _STAND_IN is None:
        from PIL import Image

        _STAND_IN = Image.new("RGB", (64, 64), (128, 128, 128))
    return _STAND_IN


def decode_queued(critic: Any, queued: QueuedPair) -> tuple[EditPair, Any, Any]:
    """Decode a queued pair in the worker via :meth:`Critic.prepare`; a PairError names the image.

    ``prepare``'s message describes an image from bytes as ``<N bytes>`` without saying which of the
    two it is, so on that (rare) error path only, the pair is prepared again with the edited image
    replaced by a stand-in: if it still fails, the original is the broken one."""
    try:
        src, edt = critic.prepare(queued.pair)
    except ImageError as exc:
        try:
            critic.prepare(replace(queued.pair, edited=_stand_in_image()))
            label = queued.labels[1]
        except PairError:
            label = queued.labels[0]
        raise ImageError(f"{label}: {exc}") from None
    return queued.pair, src, edt


def reference_response(scores: Sequence[ModeScore]) -> dict[str, Any]:
    """The reference response, plus ``parse_failures``: indices whose 0 means 'no score read'."""
    return {
        "scores": [s.score if s.score is not None else WIRE_FAILED_SCORE for s in scores],
        "reasonings": [s.reasoning or "" for s in scores],
        "parse_failures": [i for i, s in enumerate(scores) if s.score is None],
    }


def decode_base64_image(value: Any, where: str) -> bytes:
    """Bytes of a base64 string (a ``data:...;base64,`` prefix is allowed)."""
    if not isinstance(value, str) or not value:
        raise _bad(f"{where} must be a non-empty base64 string")
    if value.startswith("data:"):
        head, _, value = value.partition(",")
        if not head.endswith(";base64"):
            raise _bad(f"{where}: data URL is not base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where}: not valid base64") from None


def _pair_id(value: Any, what: str) -> str:
    """A string id as is, an integer as its decimal string (as in manifests); nothing else."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _bad(f"{what} must be a string or an integer (got {type(value).__name__})")
    if isinstance(value, int):
        return str(value)
    if not value.strip():
        raise _bad(f"{what} is empty")
    return _text(value, what)


def json_values_bound(max_items: int) -> int:
    """Most JSON values (roughly: commas, brackets and braces) a /v1/score body may hold: a pair
    needs about ten, its instruction and requirement text may add commas. Bounds the work of
    parsing one body whatever its shape."""
    return 50_000 + 10_000 * max_items


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_SHAPE = 'body must be a JSON object {"pairs": [{"source": b64, "edited": b64, "instruction": str}]}'


def _expect(text: str, at: int, char: str) -> int:
    at = _SPACE.match(text, at).end()
    if text[at:at + 1] != char:
        raise _bad(_SHAPE)
    return _SPACE.match(text, at + 1).end()


def _json_pairs(text: str, max_items: int) -> list[Any]:
    """The elements of ``{"pairs": [...]}``, each parsed by its own ``json`` call.

    ``json.loads`` holds the GIL for its whole run, so one call on a 120 MB body stalls the event
    loop even from a worker thread; one call per pair holds it for one pair at a time."""
    at = _expect(text, 0, "{")
    key, at = _DECODER.raw_decode(text, at)
    if key != "pairs":
        raise _bad(_SHAPE)
    at = _expect(text, _expect(text, at, ":"), "[")
    items: list[Any] = []
    if text[at:at + 1] == "]":
        at += 1
    else:
        while True:
            item, at = _DECODER.raw_decode(text, at)
            items.append(item)
            if len(items) > max_items:
                raise _bad(f"more than {max_items} edits in one request is over this server's limit "
                           "(--max-items); send smaller batches")
            at = _SPACE.match(text, at).end()
            if text[at:at + 1] == "]":
                at += 1
                break
            at = _expect(text, at, ",")
    if _SPACE.match(text, _expect(text, at, "}")).end() != len(text):
        raise _bad(_SHAPE)
    return items


def parse_json_body(body: bytes, max_items: int) -> list[EditPair]:
    """A /v1/score JSON body -> pairs, or a 400 (run it off the event loop)."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > json_values_bound(max_items):
        raise _bad(f"JSON body has about {values:,} values, over the {json_values_bound(max_items):,} a request "
                   f"of {max_items} pairs may need")
    try:
        items = _json_pairs(body.decode("utf-8-sig"), max_items)
    except RecursionError:
        raise _bad("body is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int over 4,300 digits
        raise _bad(f"body is not valid JSON ({exc})") from None
    return parse_json_request({"pairs": items}, max_items)


def parse_json_request(payload: Any, max_items: int) -> list[EditPair]:
    """``{"pairs": [{"id", "source", "edited", "instruction", "requirement"}]}`` -> pairs (bytes)."""
    if not isinstance(payload, dict) or set(payload) != {"pairs"}:
        raise _bad(_SHAPE)
    items = payload["pairs"]
    if not isinstance(items, list):
        raise _bad("pairs must be a list")
    _check_count(len(items), max_items)
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(f"pairs[{i}] must be an object")
        unknown = sorted(set(item) - JSON_PAIR_KEYS)
        if unknown:
            raise _bad(f"pairs[{i}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(JSON_PAIR_KEYS))}")
        for key in ("source", "edited", "instruction"):
            if key not in item:
                raise _bad(f"pairs[{i}]: missing {key!r}")
        instruction, requirement = item["instruction"], item.get("requirement", "")
        if not isinstance(instruction, str) or not isinstance(requirement, str):
            raise _bad(f"pairs[{i}]: instruction and requirement must be strings")
        _text(instruction, f"pairs[{i}].instruction")
        _text(requirement, f"pairs[{i}].requirement")
        pair_id = _pair_id(item.get("id", str(i)), f"pairs[{i}].id")
        pairs.append(EditPair(id=pair_id, source=decode_base64_image(item["source"], f"pairs[{i}].source"),
                              edited=decode_base64_image(item["edited"], f"pairs[{i}].edited"),
                              instruction=instruction, requirement=requirement))
    return pairs


async def parse_multipart_request(form: Any, max_items: int) -> list[EditPair]:
    """Multipart fields ``source``, ``edited`` (files), ``instruction``, optional ``requirement`` and
    ``id``; repeat them (in order) to send several pairs."""
    sources, edits = form.getlist("source"), form.getlist("edited")
    instructions = form.getlist("instruction")
    requirements, ids = form.getlist("requirement"), form.getlist("id")
    n = len(sources)
    if n == 0 or len(edits) != n or len(instructions) != n:
        raise _bad(f"multipart needs one source file, one edited file and one instruction per pair "
                   f"(got {len(sources)} source, {len(edits)} edited, {len(instructions)} instruction)")
    for name, extra in (("requirement", requirements), ("id", ids)):
        if extra and len(extra) != n:
            raise _bad(f"multipart: {len(extra)} {name} fields for {n} pairs")
    _check_count(n, max_items)
    pairs = []
    for i in range(n):
        files = []
        for name, part in (("source", sources[i]), ("edited", edits[i])):
            if isinstance(part, str) or not hasattr(part, "read"):
                raise _bad(f"multipart: {name} #{i} must be a file upload")
            files.append(await part.read())
        texts = [instructions[i], requirements[i] if requirements else "", ids[i] if ids else str(i)]
        if not all(isinstance(t, str) for t in texts):
            raise _bad(f"multipart: instruction, requirement and id #{i} must be text fields")
        for text, name in zip(texts, ("instruction", "requirement", "id"), strict=True):
            _text(text, f"multipart: {name} #{i}")
        pairs.append(EditPair(id=_pair_id(texts[2], f"multipart: id #{i}"), source=files[0], edited=files[1],
                              instruction=texts[0], requirement=texts[1]))
    return pairs
