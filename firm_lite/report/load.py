"""Reading what a report is made from: score files (one per editing model) and their manifests.

A score file is what ``firm-lite score --out`` writes (JSONL, one record per pair; see
:mod:`firm_lite.records`) or what ``firm-lite score --json`` prints (``{"records": [...]}``).
Nothing in it is trusted to be well formed, and nothing is silently dropped:

- a line that is not UTF-8, not JSON (a run killed mid-write), or not a record with an id is
  counted and named (file:line and why) in the report;
- an id with several lines keeps the last successful record, else the last error record (the
  rule :func:`firm_lite.manifest.read_results` resumes by), and the superseded lines are counted;
- a file whose records come from different models, variants or image budgets is split into one
  leaderboard row per provenance group, named after the group, and the report says so.

Records carry scores but not images, instructions or edit types; those come from the manifest
the file was scored from (``--manifest``). A manifest's ``category`` field (any string: "remove",
"style", "colour" ...) is the edit type the per-category columns use; the bundled edit set's
``edit.family`` is used when ``category`` is absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.manifest import read_manifest, require_regular_file

PROVENANCE_KEYS = ("model", "variant", "image_budget")


@dataclass(frozen=True)
class BadLine:
    """A line of a score file that could not be used, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class PairInfo:
    """What a manifest says about one pair: the instruction, the edit type and the image paths."""

    instruction: str | None = None
    category: str | None = None
    source: Path | None = None
    edited: Path | None = None


@dataclass
class ModelRun:
    """One leaderboard row: the records of one editing model (one provenance group of a file)."""

    name: str
    path: str
    provenance: dict[str, Any]
    records: dict[str, dict[str, Any]]
    pairs: dict[str, PairInfo] = field(default_factory=dict)

    def info(self, pair_id: str) -> PairInfo:
        found = self.pairs.get(pair_id)
        if found is not None:
            return found
        rec = self.records.get(pair_id, {})  # a record that carries its own text (not the standard shape)
        text = rec.get("instruction")
        cat = rec.get("category")
        return PairInfo(instruction=text if isinstance(text, str) else None,
                        category=str(cat) if isinstance(cat, (str, int)) and not isinstance(cat, bool) else None)


@dataclass
class ScoreFile:
    """A score file as read: its runs (one per provenance group) and what could not be used."""

    path: str
    name: str
    lines: int
    runs: list[ModelRun]
    bad_lines: list[BadLine]
    superseded: int

    @property
    def mixed(self) -> bool:
        return len(self.runs) > 1


def _provenance(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in PROVENANCE_KEYS}


def _key(prov: dict[str, Any]) -> str:
    return json.dumps(prov, sort_keys=True, default=str)


def describe_provenance(prov: dict[str, Any]) -> str:
    """``model variant budget`` in a few words, for names and headers."""
    budget = prov.get("image_budget")
    if isinstance(budget, dict) and "min_pixels" in budget:
        budget_text = f"{budget.get('min_pixels')}-{budget.get('max_pixels')} px"
    else:
        budget_text = "budget ?" if budget is None else str(budget)
    return f"{prov.get('model') or 'model ?'} {prov.get('variant') or 'variant ?'} {budget_text}"


def _decode_lines(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[BadLine], int]:
    """``(line number, object)`` of every usable line, the bad lines, and the number of lines."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    good, bad = [], []
    for number, chunk in enumerate(chunks, start=1):
        chunk = chunk.rstrip(b"\r")
        if not chunk.strip():
            continue
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1})"
            bad.append(BadLine(str(path), number, reason))
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            ended_early = isinstance(exc, json.JSONDecodeError) and (
                exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated string"))
            reason = "truncated JSON (a run stopped mid-write?)" if ended_early else "not valid JSON"
            bad.append(BadLine(str(path), number, f"{reason}: {getattr(exc, 'msg', exc)}"))
            continue
        good.append((number, obj))
    return good, bad, len(chunks)


def _whole_json(path: Path) -> Any:
    """The file as one JSON document when it is one (``score --json`` output), else None."""
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _record_id(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def read_score_file(path: str | Path, name: str | None = None) -> ScoreFile:
    """Read a score file (see the module docstring); a missing or unreadable file is a UserError."""
    path = Path(path)
    require_regular_file(path, "score file")
    name = name or path.stem
    whole = _whole_json(path)
    if isinstance(whole, dict) and isinstance(whole.get("records"), list):
        numbered, bad, lines = list(enumerate(whole["records"], start=1)), [], len(whole["records"])
    elif isinstance(whole, dict) and "variants" in whole and "reference" in whole:
        raise UserError(f"{path}: this is a calibration result; make its page with `firm-lite report {path} "
                        "--out calibration.html` on its own (not mixed with score files)")
    else:
        numbered, bad, lines = _decode_lines(path)
    found = _collect(str(path), name, numbered, lines, bad)
    if not any(run.records for run in found.runs) and not found.bad_lines:
        raise UserError(f"{path}: no score records in it; give the JSONL that `firm-lite score --out` wrote")
    return found


def score_file_from_records(records: list[dict[str, Any]], name: str, path: str = "(this run)") -> ScoreFile:
    """A :class:`ScoreFile` of records already in memory (``firm-lite score --html`` without ``--out``)."""
    return _collect(path, name, list(enumerate(records, start=1)), len(records), [])


def _collect(path: str, name: str, numbered: list[tuple[int, Any]], lines: int, bad: list[BadLine]) -> ScoreFile:
    by_id: dict[str, dict[str, Any]] = {}
    superseded = 0
    for number, obj in numbered:
        pair_id = _record_id(obj)
        if pair_id is None:
            bad.append(BadLine(path, number, "not a score record (a JSON object with an \"id\")"))
            continue
        prev = by_id.get(pair_id)
        if prev is not None:
            superseded += 1
            if prev.get("error") is None and obj.get("error") is not None:
                continue  # a success is never hidden by a later error row
        by_id[pair_id] = obj
    bad.sort(key=lambda b: b.line)
    return ScoreFile(path, name, lines, _split_by_provenance(path, name, by_id), bad, superseded)


def _split_by_provenance(path: str, name: str, records: dict[str, dict[str, Any]]) -> list[ModelRun]:
    groups: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    unknown: dict[str, dict[str, Any]] = {}
    for pair_id, rec in records.items():
        prov = _provenance(rec)
        if all(v is None for v in prov.values()):
            unknown[pair_id] = rec
            continue
        groups.setdefault(_key(prov), (prov, {}))[1][pair_id] = rec
    if unknown:  # rows that say nothing about where they came from join the only group there is
        if len(groups) == 1:
            next(iter(groups.values()))[1].update(unknown)
        else:
            groups[_key({})] = ({k: None for k in PROVENANCE_KEYS}, unknown)
    if len(groups) <= 1:
        prov, recs = next(iter(groups.values())) if groups else ({k: None for k in PROVENANCE_KEYS}, {})
        return [ModelRun(name, path, prov, recs)]
    return [ModelRun(f"{name} [{describe_provenance(prov)}]", path, prov, recs) for prov, recs in groups.values()]


def _category(extra: dict[str, Any] | None) -> str | None:
    extra = extra or {}
    value = extra.get("category")
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    edit = extra.get("edit")
    if isinstance(edit, dict) and isinstance(edit.get("family"), str):
        return edit["family"]
    return None


def read_pair_info(manifest: str | Path) -> dict[str, PairInfo]:
    """``{id: PairInfo}`` for the usable rows of a manifest (rows with errors are left out: the
    score file holds their error records)."""
    out: dict[str, PairInfo] = {}
    for row in read_manifest(manifest):
        if row.pair is None:
            continue
        out[row.id] = PairInfo(instruction=row.pair.instruction, category=_category(row.extra),
                               source=Path(row.pair.source), edited=Path(row.pair.edited))
    return out
