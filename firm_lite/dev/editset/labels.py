"""Ground-truth labels by construction: what was done decides the score, not a judge.

The rules follow FIRM-Edit's two rubrics (``firm_lite/data/firm_edit_prompts.json``):

Execution, from the *outcome* of the requested edit (:data:`EXECUTION_BY_OUTCOME`):
``full`` 5; ``mostly`` (70% strength) 4; ``partial`` (45% strength, half the angle or zoom) and
``half`` (the edit on half its region) 3; ``weak`` (20% strength) and ``wrong_param`` (the right
edit on the wrong region or in the wrong colour: a vague attempt) 2; ``opposite`` (darker for
brighter, the other axis or direction), ``wrong_family`` (a different edit), ``none`` (nothing
done) and ``unrelated`` (an unrelated image) 1.

Consistency, from the changes nobody asked for (:func:`consistency_label`): each unrequested
local change (an extra shape, painted-over patch or recoloured patch; or the requested local edit
landing in the wrong region; or a wrong *local* edit) counts once: 0 -> 5, 1 -> 4, 2-3 -> 3,
4+ -> 2. A wrong *global* edit (the frame changed without licence) caps it at 2; an unrelated
image is 1. A requested global edit done with the wrong parameter (blue for red, vertical for
horizontal) was allowed to change the frame, so it hurts execution only.
"""

from __future__ import annotations

from typing import Any

from firm_lite.manifest import label_of  # noqa: F401 - the manifest owns the labels field
from firm_lite.prompts import MODES

EXECUTION_BY_OUTCOME: dict[str, int] = {
    "full": 5, "mostly": 4, "partial": 3, "half": 3, "weak": 2, "wrong_param": 2,
    "opposite": 1, "wrong_family": 1, "none": 1, "unrelated": 1}
OUTCOMES: tuple[str, ...] = tuple(EXECUTION_BY_OUTCOME)


def execution_label(outcome: str) -> int:
    if outcome not in EXECUTION_BY_OUTCOME:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
    return EXECUTION_BY_OUTCOME[outcome]


def consistency_label(unrequested_local: int, wrong_global: bool = False, unrelated: bool = False) -> int:
    """FIRM's consistency scale from counted unrequested changes (see module doc)."""
    if unrelated:
        return 1
    if unrequested_local < 0:
        raise ValueError("a count of changes cannot be negative")
    score = 5 if unrequested_local == 0 else 4 if unrequested_local == 1 else 3 if unrequested_local <= 3 else 2
    return min(score, 2) if wrong_global else score


def unrequested_changes(outcome: str, requested_local: bool, applied_local: bool, extras: int) -> tuple[int, bool]:
    """(local unrequested changes, wrong global edit?) for an outcome, per the module's rules."""
    count = extras
    wrong_global = False
    if outcome == "wrong_param" and requested_local:
        count += 1
    elif outcome == "wrong_family":
        if applied_local:
            count += 1
        else:
            wrong_global = True
    return count, wrong_global


def labels_for(outcome: str, requested_local: bool, applied_local: bool, extras: int) -> dict[str, int]:
    """Both labels of one item, as stored in the manifest's ``labels`` field."""
    if outcome == "unrelated":
        return {"execution": 1, "consistency": 1}
    count, wrong_global = unrequested_changes(outcome, requested_local, applied_local, extras)
    return {"execution": execution_label(outcome), "consistency": consistency_label(count, wrong_global)}


_COUNT_WORDS = ("none", "one", "two", "three", "four", "five", "six")
# One word (or two) per kind of edit: what a tiny critic can tell from the pixels, and what its
# execution reasoning compares (the kind asked for vs the kind it sees).
KIND_WORDS: dict[str, str] = {
    "greyscale": "greyscale", "tint": "tint", "brightness": "brightness", "flip": "flip", "rotate": "rotation",
    "blur": "blur", "pixelate": "pixelation", "remove": "removal", "invert": "inversion", "zoom": "zoom",
    "add_shape": "new shape"}

SEEN_KINDS: tuple[str, ...] = (*KIND_WORDS.values(), "nothing", "unrelated picture")


def kind_seen(edit: dict[str, Any]) -> str:
    """The kind of edit the edited image shows (:data:`KIND_WORDS`, "nothing" or "unrelated picture")."""
    if edit["outcome"] == "unrelated":
        return "unrelated picture"
    applied = edit.get("applied")
    if edit["outcome"] == "none" or not applied:
        return "nothing"
    return KIND_WORDS[applied["family"]]


def rationale(mode: str, edit: dict[str, Any], seen: str | None = None) -> str:
    """The templated reasoning a trained critic writes: the kind of edit asked for and the kind
    the images show (execution), or how many unrequested changes there are (consistency). The
    score follows from it by the rules above, so the image-dependent fact is a supervised token,
    not just the final digit: that is what lets a tiny critic learn from a few thousand pairs.
    The kind is deliberately coarse (no colour, region or strength): a half-million-parameter
    critic can learn to tell a tint from a blur, not a red tint from an orange one. ``seen``
    replaces the true kind in the execution reasoning (what a critic in training itself saw)."""
    if mode == "execution":
        return f"Requested: {KIND_WORDS[edit['family']]}. Seen: {seen or kind_seen(edit)}."
    if mode != "consistency":
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    outcome = edit["outcome"]
    if outcome == "unrelated":
        return "Unrequested changes: everything (an unrelated picture)."
    from firm_lite.dev.editset.families import FAMILIES

    applied = edit.get("applied") or {}
    requested_local = FAMILIES[edit["family"]].changed_box(edit["params"]) is not None
    applied_local = bool(applied) and FAMILIES[applied["family"]].changed_box(applied["params"]) is not None
    count, wrong_global = unrequested_changes(outcome, requested_local, applied_local, len(edit.get("extras", ())))
    if wrong_global:
        more = f" and {_COUNT_WORDS[min(count, 6)]} more" if count else ""
        return f"Unrequested changes: the whole image ({kind_seen(edit)}){more}."
    return f"Unrequested changes: {_COUNT_WORDS[min(count, 6)]}."


def description(edit: dict[str, Any]) -> str:
    """The visual fact alone (no request): the kind of edit the images show. A critic in
    training first learns to write this for an image pair (see
    :func:`firm_lite.dev.editset.training.describe_batches`)."""
    return f"Seen: {kind_seen(edit)}."
