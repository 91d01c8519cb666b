"""``firm_lite.merge_results``: what ``firm-lite merge`` does. Result files written by separate
processes (``--shard`` runs, the part files of a ``--ray`` run, resumed runs) become one file.

Which records are kept, given the inputs read in order (files as given, a folder's ``*.jsonl`` in
name order, lines in file order):

- per id, the **latest successful record**;
- an **error record is kept unless a success for its id comes later** (a retried failure is
  dropped, the duplicate-id error row written after its original is kept), once per distinct
  message (the latest);
- with ``manifest``, records come out in manifest order, exactly as one ``firm-lite score`` run over
  that manifest writes them: each scorable row gets its id's latest success (else its latest
  scoring error), each row that could not be read (bad JSON, duplicate id, ...) gets its own error
  row. Records whose id is not in the manifest follow, in input order; manifest rows without a
  record yet are counted (shards not finished).

Records that came from different critics are never mixed: every record's ``model``, ``variant``
(which carries ``+fast`` for the fast protocol) and ``image_budget`` must agree, else the merge is
refused naming the field and the two places that differ. (``max_new_tokens`` and the CME weights
are not in records, so they cannot be checked here.) Lines that are not JSON records (a process
killed mid-write) are skipped, as resuming skips them. The output is written whole to a temporary
file and renamed over ``out``, so a reader never sees half a merge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.manifest import read_manifest, require_regular_file
from firm_lite.records import record_line
from firm_lite.settings import FAST_SUFFIX

PROVENANCE_FIELDS = ("model", "variant", "image_budget")


@dataclass
class MergeRun:
    """Outcome of a merge: the records written, what was dropped and what is still missing."""

    records: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    read: int = 0  # records read from the inputs
    missing: list[str] = field(default_factory=list)  # manifest ids with no record yet
    out: str | None = None

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.get("error"))

    @property
    def dropped(self) -> int:
        return self.read - len(self.records)

    def as_json(self) -> dict[str, Any]:
        return {"out": self.out, "inputs": self.inputs,
                "summary": {"records": len(self.records), "failed": self.failed, "read": self.read,
                            "dropped": self.dropped, "missing": len(self.missing)},
                "missing": self.missing}


@dataclass
class _Read:
    record: dict[str, Any]
    where: str  # file:line, for messages


def result_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The result files named by ``inputs``: files as given, a folder's ``*.jsonl`` in name order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.jsonl") if p.is_file())
            if not found:
                raise UserError(f"{path}: no *.jsonl result files in this folder")
            files += found
        else:
            require_regular_file(path, "result file")
            files.append(path)
    if not files:
        raise UserError("give at least one result file or folder to merge")
    return files


def read_records(path: Path) -> Iterator[_Read]:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, ValueError, RecursionError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                yield _Read(rec, f"{path}:{lineno}")


def check_same_critic(reads: list[_Read]) -> None:
    """UserError naming the first field where two records' critics differ."""
    if not reads:
        return
    first = reads[0]
    for other in reads[1:]:
        for name in PROVENANCE_FIELDS:
            a, b = first.record.get(name), other.record.get(name)
            if a == b:
                continue
            what, a, b = _difference(name, a, b)
            raise UserError(f"cannot merge records of different critics: {what} is {a} ({first.where}) but {b} "
                            f"({other.where}); score every part with the same settings, or merge them separately")


def _difference(name: str, a: Any, b: Any) -> tuple[str, str, str]:
    if name == "variant" and isinstance(a, str) and isinstance(b, str) and \
            a.removesuffix(FAST_SUFFIX) == b.removesuffix(FAST_SUFFIX):
        return "protocol", *("fast" if v.endswith(FAST_SUFFIX) else "full" for v in (a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{name}.{key}", json.dumps(a.get(key)), json.dumps(b.get(key))
    return name, json.dumps(a), json.dumps(b)


def _kept(reads: list[_Read]) -> list[int]:
    """Positions kept by the rule in the module docstring, in input order."""
    last_success: dict[str, int] = {}
    latest: dict[tuple[str, Any], int] = {}
    for pos, item in enumerate(reads):
        rec = item.record
        latest[(rec["id"], rec.get("error"))] = pos
        if rec.get("error") is None:
            last_success[rec["id"]] = pos
    return [pos for pos, item in enumerate(reads)
            if latest[(item.record["id"], item.record.get("error"))] == pos
            and (item.record.get("error") is None or pos > last_success.get(item.record["id"], -1))]


def _in_manifest_order(reads: list[_Read], kept: list[int], manifest: Path) -> tuple[list[int], list[str]]:
    """Kept positions reordered as one run over ``manifest`` writes them, and the ids still missing."""
    by_id: dict[str, list[int]] = {}
    for pos in kept:
        by_id.setdefault(reads[pos].record["id"], []).append(pos)
    rows = list(read_manifest(manifest))
    prefix = len(str(manifest))  # an error row says "MANIFEST:LINE: why"; match it whatever the path spelling
    row_errors: dict[str, list[str]] = {}
    for r in rows:
        if r.pair is None and r.error:
            row_errors.setdefault(r.id, []).append(r.error[prefix:])

    def is_row_error(pos: int) -> bool:
        rec = reads[pos].record
        err = rec.get("error")
        return err is not None and any(str(err).endswith(e) for e in row_errors.get(rec["id"], ()))

    order: list[int] = []
    used: set[int] = set()
    missing: list[str] = []
    for row in rows:
        candidates = [p for p in by_id.get(row.id, []) if p not in used]
        if row.pair is None:
            suffix = (row.error or "")[prefix:]
            pick = [p for p in candidates if str(reads[p].record.get("error") or "").endswith(suffix)] \
                if row.error else []
        else:
            success = [p for p in candidates if reads[p].record.get("error") is None]
            pick = success or [p for p in candidates if not is_row_error(p)]
        if pick:
            order.append(pick[-1])
            used.add(pick[-1])
        else:
            missing.append(row.id)
    manifest_ids = {r.id for r in rows}
    order += [p for p in kept if reads[p].record["id"] not in manifest_ids]
    return order, missing


def merge_results(inputs: Iterable[str | Path], *, out: str | Path | None = None,
                  manifest: str | Path | None = None) -> MergeRun:
    """Combine result files (or folders of them) into ``out``; see the module docstring."""
    files = result_files(inputs)
    target = Path(out) if out is not None else None
    if target is not None:
        for f in files:
            if f.resolve() == target.resolve():
                raise UserError(f"--out {target} is also an input: write the merged file elsewhere")
        if target.resolve().parent in {Path(i).resolve() for i in inputs if Path(i).is_dir()}:
            raise UserError(f"--out {target} is inside an input folder (the next merge would read it back): "
                            "write it elsewhere")
        if target.exists():
            require_regular_file(target, "--out")
    reads = [item for f in files for item in read_records(f)]
    check_same_critic(reads)
    kept = _kept(reads)
    missing: list[str] = []
    if manifest is not None:
        kept, missing = _in_manifest_order(reads, kept, Path(manifest))
    run = MergeRun(records=[reads[p].record for p in kept], inputs=[str(f) for f in files], read=len(reads),
                   missing=missing, out=str(target) if target else None)
    if target is not None:
        _write_whole(target, run.records)
    return run


def _write_whole(target: Path, records: list[dict[str, Any]]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(record_line(rec))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--out {target}: cannot write there ({exc.strerror or exc}); pick a writable path") from None
