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
same records ``firm-lite score --json`` prints. Images of both doors are decoded by
:func:`firm_lite.images.load_image` and checked by the critic's own pair rules (:func:`prepare_pair`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from firm_lite.errors import ImageError, PairError
from firm_lite.images import load_image
from firm_lite.prompts import TEMPLATE_KEYS
from firm_lite.records import EditPair, ModeScore

# Route name on the wire -> critic mode ("score_execution" -> "execution").
ROUTE_MODES: dict[str, str] = {wire: mode for mode, wire in TEMPLATE_KEYS.items()}
WIRE_FAILED_SCORE = 0  # what the reference sends when no score could be read
JSON_PAIR_KEYS = frozenset({"id", "source", "edited", "instruction", "requirement"})

PreparedItem = tuple[EditPair, Any, Any]


class RequestRefused(Exception):
    """A request the server answers with ``status`` and a one-line ``message`` (no traceback)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
        pairs.append(EditPair(id=str(i), source=bytes(source[i]), edited=bytes(edited[i]),
                              instruction=prompts[i], requirement=requirement))
    return pairs


def prepare_pair(critic: Any, pair: EditPair, labels: tuple[str, str] = ("source", "edited")) -> PreparedItem:
    """Decode one pair's images and apply the critic's pair rules; raise PairError naming the image.

    ``labels`` name the ORIGINAL and EDITED image in messages (``ref_images[3]``, ``images[3]``).
    """
    decoded = []
    for label, image in zip(labels, (pair.source, pair.edited), strict=True):
        try:
            decoded.append(load_image(image, critic.max_image_pixels))
        except ImageError as exc:
            raise ImageError(f"{label}: {exc}") from None
    ready = EditPair(pair.id, decoded[0], decoded[1], pair.instruction, pair.requirement)
    # The critic's own rules (instruction present, not too long); decoded images pass straight through.
    src, edt = critic.prepare(ready)
    return ready, src, edt


def prepare_reference(critic: Any, pairs: Sequence[EditPair]) -> list[PreparedItem]:
    """All items of a reference request, or a 400 naming the first unusable index."""
    items = []
    for i, pair in enumerate(pairs):
        try:
            items.append(prepare_pair(critic, pair, (f"ref_images[{i}] (original)", f"images[{i}] (edited)")))
        except PairError as exc:
            raise _bad(f"item {i}: {exc}") from None
    return items


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


def parse_json_request(payload: Any, max_items: int) -> list[EditPair]:
    """``{"pairs": [{"id", "source", "edited", "instruction", "requirement"}]}`` -> pairs (bytes)."""
    if not isinstance(payload, dict) or set(payload) != {"pairs"}:
        raise _bad('body must be a JSON object {"pairs": [{"source": b64, "edited": b64, "instruction": str}]}')
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
        pair_id = item.get("id", str(i))
        if not isinstance(pair_id, (str, int)) or isinstance(pair_id, bool):
            raise _bad(f"pairs[{i}]: id must be a string")
        pairs.append(EditPair(id=str(pair_id), source=decode_base64_image(item["source"], f"pairs[{i}].source"),
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
        pairs.append(EditPair(id=texts[2], source=files[0], edited=files[1], instruction=texts[0],
                              requirement=texts[1]))
    return pairs
