"""``firm_lite.score``: what ``firm-lite score`` does, as a function.

Scores a single pair or a JSONL manifest with one loaded critic, appends records to ``out``
(resuming: ids already there are skipped), records failing rows as error records and carries on.
``shard="K/N"`` scores only the manifest rows of that shard (:mod:`firm_lite.shards`).
:func:`pending_rows` (what is left to do) and :func:`score_rows` (rows -> records) are shared with
the Ray Data path (:mod:`firm_lite.cluster.batch`), so both write the same records.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm_lite.data import demo_pair
from firm_lite.errors import PairError
from firm_lite.manifest import ManifestRow, ResultIndex, ResultWriter, read_manifest, read_results
from firm_lite.records import EditPair, build_record, check_text
from firm_lite.settings import CriticSettings
from firm_lite.shards import Shard

if TYPE_CHECKING:
    from firm_lite.critic import Critic


@dataclass
class ScoreRun:
    """Outcome of a scoring run: the new records, counts, and what produced them."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.get("error"))

    @property
    def scored(self) -> int:
        return len(self.records) - self.failed

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_json(self) -> dict[str, Any]:
        return {"records": self.records,
                "summary": {"scored": self.scored, "failed": self.failed, "skipped": self.skipped},
                "provenance": self.provenance}


def run_provenance(critic: Any) -> dict[str, Any]:
    """Versions and settings that decide a score, for outputs and caches."""
    import torch
    import transformers

    from firm_lite import __version__
    from firm_lite.prompts import prompt_hash

    return {
        "firm_lite": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "model": critic.provenance.get("source"), "variant": critic.variant,
        "device": str(critic.device), "backend": critic.provenance.get("backend"),
        "image_budget": critic.budget.as_record(),
        "decoding": critic.decoding.as_record(), "protocol": critic.protocol, "prompt_sha256": prompt_hash(),
        "cme_weights": {"w1": critic.weights.w1, "w2": critic.weights.w2},
    }


def score(settings: CriticSettings | None = None, *, source: str | Path | None = None,
          edited: str | Path | None = None, instruction: str | None = None, requirement: str = "",
          pair_id: str = "pair", manifest: str | Path | None = None, demo: bool = False,
          out: str | Path | None = None, batch_size: int = 4, retry_errors: bool = False,
          progress: bool = False, shard: str | Shard | None = None) -> ScoreRun:
    """Score one pair (``source``/``edited``/``instruction``), the bundled ``demo`` pair, or a
    ``manifest`` with the critic ``settings`` describe; see the module docstring."""
    from firm_lite.critic import load_critic
    from firm_lite.errors import UserError

    if demo:
        if manifest is not None or any(v is not None for v in (source, edited, instruction)):
            raise UserError("--demo scores the bundled pair: drop --source/--edited/--instruction/--manifest")
        pair = demo_pair()
        source, edited, instruction, pair_id = pair.source, pair.edited, pair.instruction, pair.id
    if manifest is not None and any(v is not None for v in (source, edited, instruction)):
        raise UserError("give either --manifest or --source/--edited/--instruction, not both")
    if manifest is None:
        missing = [n for n, v in (("--source", source), ("--edited", edited), ("--instruction", instruction))
                   if v is None]
        if missing:
            raise UserError(f"missing {', '.join(missing)} (or pass --manifest FILE.jsonl)")
        try:
            check_text(pair_id, "--id")
        except PairError as exc:
            raise UserError(str(exc)) from None
        rows = [ManifestRow(0, pair_id, EditPair(pair_id, Path(source), Path(edited), instruction, requirement))]
    else:
        rows = list(read_manifest(manifest))
    if shard is not None:
        if manifest is None:
            raise UserError("--shard splits a --manifest: give one (a single pair is not split)")
        shard = Shard.parse(shard)
        rows = [row for row in rows if shard.holds(row.id)]
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    settings = (settings or CriticSettings()).replace(batch_size=batch_size)  # --variant auto plans for it

    run = ScoreRun()
    todo, run.skipped = pending_rows(rows, read_results(out) if out else ResultIndex(), retry_errors)

    writer = ResultWriter(out) if out else None  # a bad --out fails here, before minutes of loading
    try:
        critic = load_critic(settings)
        run.provenance = run_provenance(critic)
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="pair", file=sys.stderr, desc="scoring")

        def emit(record: dict[str, Any]) -> None:
            run.records.append(record)
            if writer:
                writer.write(record)
            if bar:
                bar.update(1)

        try:
            for record in score_rows(critic, todo, batch_size):
                emit(record)
        finally:
            if bar:
                bar.close()
    finally:
        if writer:
            writer.close()
    return run


def pending_rows(rows: list[ManifestRow], done: ResultIndex, retry_errors: bool = False
                 ) -> tuple[list[ManifestRow], int]:
    """The rows not yet in ``done`` (a result index), and how many were skipped: an id with a
    record is done (with ``retry_errors``, only when that record is a success); a row that cannot
    be scored is done once its error is recorded."""
    todo = []
    for row in rows:
        if row.pair is None:  # a row that cannot be scored: record its error once
            already = (row.id, row.error) in done.errors
        else:
            prev = done.get(row.id)
            already = prev is not None and not (retry_errors and prev.get("error"))
        if not already:
            todo.append(row)
    return todo, len(rows) - len(todo)


def score_rows(critic: Critic, rows: list[ManifestRow], batch_size: int) -> Iterator[dict[str, Any]]:
    """One record per row, in row order: pairs scored ``batch_size`` at a time, rows that are not
    pairs as their error records (a duplicate's error row never precedes its original)."""
    for chunk in _chunks(rows, batch_size):
        scored = iter(critic.score([r.pair for r in chunk if r.pair is not None], batch_size))
        for row in chunk:
            yield (next(scored) if row.pair is not None
                   else build_record(row.id, critic.context, None, None, critic.weights, error=row.error))


def _chunks(rows: list[ManifestRow], batch_size: int) -> Iterator[list[ManifestRow]]:
    """Rows in order, cut after every ``batch_size`` scorable pairs (error rows ride along)."""
    chunk: list[ManifestRow] = []
    pairs = 0
    for row in rows:
        chunk.append(row)
        pairs += row.pair is not None
        if pairs == batch_size:
            yield chunk
            chunk, pairs = [], 0
    if chunk:
        yield chunk
