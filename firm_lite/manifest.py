"""Edit-pair manifests (JSONL in) and result files (JSONL out, append-only, resumable).

A manifest line is ``{"id", "source" | "image", "edited", "instruction" | "prompt",
"requirement"?}``; relative paths resolve against the manifest's folder. A line that is not
valid becomes a :class:`ManifestRow` carrying its error, so a batch job records it and goes on.

Ids are JSON strings or integers. An integer is written as its decimal string (records always
carry string ids), so ``1`` and ``"1"`` are the same id: the second is refused as a duplicate,
never silently merged. ``null``, floats, booleans, lists and objects are refused; a line without
an id gets ``line-N``. The first line with an id wins; later lines with it become error rows.
A UTF-8 byte-order mark is accepted. Text that is not valid Unicode (lone surrogates from
``\\ud800`` escapes) is refused on its row, before it reaches a tokenizer or a writer.

Result files are only ever appended to, one complete line per write, flushed and fsynced, so an
interrupted run leaves every finished record intact and a re-run skips the ids already scored: an
id counts as done when it has a successful record, or an error record and no success
(:func:`read_results`). Manifests and result files must be regular files: a device or FIFO given by
mistake would be read forever or block.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from firm_lite.errors import ManifestError, PairError, UserError
from firm_lite.records import EditPair, check_text, record_line

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


def require_regular_file(path: Path, what: str, must_exist: bool = True) -> bool:
    """True if ``path`` is a regular file, False if it does not exist (and ``must_exist`` is off);
    any other kind of file (folder, device, FIFO, socket) is a UserError naming it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if must_exist:
            raise UserError(f"{what} {path}: file not found") from None
        return False
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path}: is a folder; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path}: not a regular file (a device, FIFO or socket); give a file")
    return True


def _pair_id(obj: dict[str, Any], fallback: str) -> str:
    """The row's id as a string (see the module docstring for the rule)."""
    if "id" not in obj:
        return fallback
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ManifestError(f"id must be a string or an integer (got {json.dumps(value)[:40]})")
    if isinstance(value, int):
        return str(value)
    try:
        check_text(value, "id")
    except PairError as exc:
        raise ManifestError(str(exc)) from None
    if not value.strip():
        raise ManifestError("id is empty")
    return value


def read_manifest(path: str | Path) -> Iterator[ManifestRow]:
    """Yield every line of a JSONL manifest as a row (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        require_regular_file(path, "manifest")
    except UserError as exc:
        raise ManifestError(str(exc)) from None
    base = path.resolve().parent
    seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
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
            try:
                pair_id = _pair_id(obj, fallback_id)
            except ManifestError as exc:
                yield ManifestRow(lineno, fallback_id, None, f"{path}:{lineno}: {exc}")
                continue
            if pair_id in seen:
                yield ManifestRow(lineno, pair_id, None, f"{path}:{lineno}: duplicate id {pair_id!r} (first on "
                                  f"line {seen[pair_id]}; integer and string ids with the same digits are the "
                                  "same id)")
                continue
            seen[pair_id] = lineno
            try:
                instruction = _field(obj, "instruction")
                if not isinstance(instruction, str):
                    raise ManifestError("missing 'instruction' (or 'prompt') string")
                requirement = obj.get("requirement") or ""
                if not isinstance(requirement, str):
                    raise ManifestError("'requirement' must be a string")
                for text, what in ((instruction, "instruction"), (requirement, "requirement")):
                    try:
                        check_text(text, what)
                    except PairError as exc:
                        raise ManifestError(str(exc)) from None
                pair = EditPair(id=pair_id, source=_resolve(base, _field(obj, "source"), "source"),
                                edited=_resolve(base, obj.get("edited"), "edited"),
                                instruction=instruction, requirement=requirement)
            except ManifestError as exc:
                yield ManifestRow(lineno, pair_id, None, f"{path}:{lineno}: {exc}")
                continue
            extra = {k: v for k, v in obj.items() if k not in _KNOWN} or None
            yield ManifestRow(lineno, pair_id, pair, None, extra)


class ResultIndex(dict):
    """``{id: record}`` of a result file (see :func:`read_results`), plus ``errors``: every
    ``(id, error message)`` recorded, so a manifest's error row (a duplicate id, a bad line) is
    written once even when its id also has a successful record."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: set[tuple[str, str]] = set()


def label_of(extra: dict[str, Any] | None, mode: str) -> int | None:
    """A manifest row's label for ``mode`` (from ``ManifestRow.extra``), or None if it has none."""
    labels = (extra or {}).get("labels") or {}
    value = labels.get(mode)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None



def read_results(path: str | Path) -> ResultIndex:
    """Records already in a result file, one per id: the last successful record, else the last
    error record (a success is never hidden by a later error row for the same id, e.g. a
    duplicate manifest line). Broken lines (a crash mid-write) are ignored, never rewritten."""
    path = Path(path)
    done = ResultIndex()
    if not require_regular_file(path, "--out", must_exist=False):
        return done
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, ValueError, RecursionError):
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                continue
            if rec.get("error") is not None:
                done.errors.add((rec["id"], str(rec["error"])))
            prev = done.get(rec["id"])
            if prev is None or rec.get("error") is None or prev.get("error") is not None:
                done[rec["id"]] = rec
    return done


class ResultWriter:
    """Append-only JSONL writer: one whole line per record, flushed and fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        require_regular_file(self.path, "--out", must_exist=False)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: TextIO = self.path.open("a", encoding="utf-8")
            # A previous crash may have left a partial last line: start ours on a fresh line.
            if self.path.stat().st_size > 0:
                with self.path.open("rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        self._fh.write("\n")
                        self._fh.flush()
        except OSError as exc:
            raise UserError(f"--out {self.path}: cannot write there ({exc.strerror or exc}); pick a writable "
                            "file path") from None

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(record_line(record))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
