"""``firm-lite score --ray``: a manifest scored by a Ray Data pipeline, on this machine or a cluster.

The driver (this process) reads the manifest with firm-lite's own rules
(:func:`~firm_lite.manifest.read_manifest`: ``#`` header lines, id rules, duplicates as error rows;
``ray.data.read_json`` knows none of them), skips what ``--out DIR`` already holds
(:func:`~firm_lite.scoring.pending_rows`, the rule a single run resumes by) and hands the rest to
``map_batches`` over a pool of ``workers`` actors. Each actor loads the critic once
(:func:`~firm_lite.critic.load_critic`, any backend or variant) and turns rows into records with
:func:`~firm_lite.scoring.score_rows`, the single-process path's own function, so a row gets the
same record (byte for byte) either way, error rows included.

Records stream back to the driver, which appends them to a part file of its own in ``DIR``
(``part-00001.jsonl``, the next free number per run) through
:class:`~firm_lite.manifest.ResultWriter`: one whole line per record, flushed and fsynced, so a
driver killed at any moment loses nothing already written, and a re-run skips it. Order within a
part file is completion order; ``firm-lite merge DIR --manifest M --out FILE`` puts the records in
manifest order, as one run writes them. An actor that dies is restarted by Ray and its batch
retried (Ray Data's default for actor pools); an exception in the scoring code fails the run.

Image paths are read by the workers: on a multi-node cluster the manifest's images must be on a
filesystem every node sees at the same path (as firm-lite itself must be installed on every node).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.manifest import ManifestRow, ResultIndex, ResultWriter, read_manifest, read_results
from firm_lite.records import EditPair
from firm_lite.scoring import ScoreRun, pending_rows
from firm_lite.settings import CriticSettings

PART_PREFIX = "part-"
BLOCKS_PER_WORKER = 64  # blocks are the unit of streaming and retry; many small ones keep all workers busy


def part_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"{PART_PREFIX}*.jsonl") if p.is_file())


def read_folder(folder: Path) -> ResultIndex:
    """The records of every part file in ``folder`` as one index, by the rule of
    :func:`~firm_lite.manifest.read_results` (the latest success per id, else the latest error)."""
    done = ResultIndex()
    for path in part_files(folder):
        part = read_results(path)
        done.errors |= part.errors
        for pair_id, rec in part.items():
            prev = done.get(pair_id)
            if prev is None or rec.get("error") is None or prev.get("error") is not None:
                done[pair_id] = rec
    return done


def claim_part(folder: Path) -> Path:
    """A new, empty part file of this run (created exclusively: two drivers never share one)."""
    existing = [int(p.stem.removeprefix(PART_PREFIX)) for p in part_files(folder)
                if p.stem.removeprefix(PART_PREFIX).isdigit()]
    number = max(existing, default=0) + 1
    while True:
        path = folder / f"{PART_PREFIX}{number:05d}.jsonl"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            number += 1


def _out_folder(out: str | Path) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder}: with --ray, --out is a folder of part files (one per run); this is a "
                        "file. Give a folder, and merge it afterwards with firm-lite merge")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {folder}: cannot create this folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out {folder}: not writable; pick another folder")
    return folder


def _row_json(row: ManifestRow) -> str:
    pair = row.pair
    return json.dumps({"line": row.line, "id": row.id, "error": row.error,
                       "pair": None if pair is None else {"source": str(pair.source), "edited": str(pair.edited),
                                                          "instruction": pair.instruction,
                                                          "requirement": pair.requirement}},
                      ensure_ascii=False)


def _row_from_json(text: str) -> ManifestRow:
    obj = json.loads(text)
    pair = obj["pair"]
    return ManifestRow(obj["line"], obj["id"],
                       None if pair is None else EditPair(obj["id"], Path(pair["source"]), Path(pair["edited"]),
                                                          pair["instruction"], pair["requirement"]),
                       obj["error"])


class CriticWorker:
    """A Ray Data actor: loads the critic once, then scores batches of manifest rows."""

    def __init__(self, settings: dict[str, Any], batch_size: int) -> None:
        from firm_lite.critic import load_critic
        from firm_lite.scoring import run_provenance

        self.critic = load_critic(CriticSettings(**settings))
        self.batch_size = batch_size
        self.provenance = json.dumps(run_provenance(self.critic))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from firm_lite.scoring import score_rows

        rows = [_row_from_json(text) for text in batch["row"]]
        records = [json.dumps(rec, ensure_ascii=False) for rec in score_rows(self.critic, rows, self.batch_size)]
        provenance = [self.provenance] + [""] * (len(records) - 1)
        return {"record": np.array(records, dtype=object), "provenance": np.array(provenance, dtype=object)}


def score_on_ray(settings: CriticSettings | None = None, *, manifest: str | Path, out: str | Path,
                 ray: str = "auto", workers: int = 1, gpus_per_worker: float | None = None,
                 cpus_per_worker: float = 1.0, batch_size: int = 4, retry_errors: bool = False,
                 progress: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None) -> ScoreRun:
    """Score ``manifest`` on Ray into the folder ``out`` (see the module docstring).

    ``ray``: ``auto``, ``local`` or a cluster address (:mod:`~firm_lite.cluster.connect`);
    ``gpus_per_worker`` None: one GPU each when the cluster has GPUs, else CPU workers;
    ``on_record`` is called with each record after it is written (progress hooks, tests)."""
    from firm_lite.cluster.connect import firm_lite_error_in, ray_session, require_ray

    settings = settings or CriticSettings()
    if workers < 1 or batch_size < 1 or cpus_per_worker <= 0 or (gpus_per_worker or 0) < 0:
        raise UserError("--workers and --batch-size must be >= 1, --cpus-per-worker > 0, --gpus-per-worker >= 0")
    ray_api = require_ray()
    folder = _out_folder(out)  # a bad --out fails before Ray starts
    rows = list(read_manifest(manifest))
    run = ScoreRun()
    todo, run.skipped = pending_rows(rows, read_folder(folder), retry_errors)
    if not todo:
        return run
    with ray_session(ray) as session:
        gpus = session.default_gpus(gpus_per_worker)
        workers = min(workers, len(todo))
        session.check_fits(workers, cpus_per_worker, gpus, "worker")
        writer = ResultWriter(claim_part(folder))
        bar = None
        try:
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), unit="pair", file=sys.stderr, desc=f"scoring on {workers} Ray workers")
            for record, provenance in _stream(todo, settings, workers, cpus_per_worker, gpus, batch_size):
                writer.write(record)
                run.records.append(record)
                if provenance and not run.provenance:
                    run.provenance = provenance
                if bar:
                    bar.update(1)
                if on_record:
                    on_record(record)
        except ray_api.exceptions.RayError as exc:
            reason = firm_lite_error_in(str(exc))  # e.g. a worker that could not load the critic
            if reason is None:
                raise
            raise UserError(f"Ray workers could not score: {reason}") from None
        finally:
            writer.close()
            if bar:
                bar.close()
            if not run.records:
                writer.path.unlink(missing_ok=True)  # no empty part files left behind
    return run


def _stream(todo: list[ManifestRow], settings: CriticSettings, workers: int, cpus: float, gpus: float,
            batch_size: int) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    import ray.data

    blocks = max(1, min(math.ceil(len(todo) / batch_size), BLOCKS_PER_WORKER * workers))
    dataset = ray.data.from_items([{"row": _row_json(row)} for row in todo], override_num_blocks=blocks)
    ctx = dataset.context  # this dataset's own copy: the process's DataContext is left as it was
    ctx.execution_options.preserve_order = False  # records are written as they finish; merge orders them
    ctx.enable_progress_bars = False  # the driver shows its own bar, in pairs
    ctx.print_on_execution_start = False
    scored = dataset.map_batches(CriticWorker, fn_constructor_kwargs={"settings": asdict(settings),
                                                                        "batch_size": batch_size},
                                 batch_size=batch_size, batch_format="numpy",
                                 compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus,
                                 num_gpus=gpus or None)
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for text, provenance in zip(batch["record"], batch["provenance"], strict=True):
            yield json.loads(text), (json.loads(provenance) if provenance else None)
