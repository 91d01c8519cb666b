"""Edit-pair manifests (JSONL in) and result files (JSONL out, append-only, resumable).

A manifest line is ``{"id", "source" | "image", "edited", "instruction" | "prompt",
"requirement"?}``; relative paths resolve against the manifest's folder. A line that is not
valid becomes a :class:`ManifestRow` carrying its error, so a batch job records it and goes on.

Result files are only ever appended to, one complete line per write, flushed and fsynced, so an
interrupted run leaves every finished record intact and a re-run skips the ids already there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from firm_lite.errors import ManifestError
from firm_lite.records import EditPair

_ALIASES = {"source": ("source", "image"), "instruction": ("instruction", "prompt")}
_KNOWN = {"id", "source", "image", "edited", "instruction", "prompt", "requirement"}


@dataclass
class ManifestRow:
    """A manifest line: either a pair, or the error that kept it from being one."""

    line: int
    id: str
    pair: EditPair | None
    error: str | None = None
    extra: dict[str, Any] | None = None  # unknown fields (e.g. labels), kept for harnesses


def _field(obj: dict[str, Any], name: str) -> Any:
    for key in _ALIASES.get(name, (name,)):
        if key in obj:
            return obj[key]
    return None


def _resolve(base: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"missing or empty {what!r} path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def read_manifest(path: str | Path) -> Iterator[ManifestRow]:
    """Yield every line of a JSONL manifest as a row (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path}: file not found")
    base = path.resolve().parent
    seen: set[str] = set()
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fallback_id = f"line-{lineno}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield ManifestRow(lineno, fallback_id, None, f"{path}:{lineno}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                yield ManifestRow(lineno, fallback_id, None, f"{path}:{lineno}: expected a JSON object")
                continue
            pair_id = str(obj.get("id", fallback_id))
            if pair_id in seen:
                yield ManifestRow(lineno, pair_id, None, f"{path}:{lineno}: duplicate id {pair_id!r}")
                continue
            seen.add(pair_id)
            try:
                instruction = _field(obj, "instruction")
                if not isinstance(instruction, str):
                    raise ManifestError("missing 'instruction' (or 'prompt') string")
                requirement = obj.get("requirement") or ""
                if not isinstance(requirement, str):
                    raise ManifestError("'requirement' must be a string")
                pair = EditPair(id=pair_id, source=_resolve(base, _field(obj, "source"), "source"),
                                edited=_resolve(base, obj.get("edited"), "edited"),
                                instruction=instruction, requirement=requirement)
            except ManifestError as exc:
                yield ManifestRow(lineno, pair_id, None, f"{path}:{lineno}: {exc}")
                continue
            extra = {k: v for k, v in obj.items() if k not in _KNOWN} or None
            yield ManifestRow(lineno, pair_id, pair, None, extra)


def read_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Records already in a result file, last record per id winning. Broken lines (a crash
    mid-write on another tool) are ignored, never rewritten."""
    path = Path(path)
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                done[str(rec["id"])] = rec
    return done


class ResultWriter:
    """Append-only JSONL writer: one whole line per record, flushed and fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = self.path.open("a", encoding="utf-8")
        # A previous crash may have left a partial last line: start ours on a fresh line.
        if self.path.stat().st_size > 0:
            with self.path.open("rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    self._fh.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
