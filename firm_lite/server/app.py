"""The ASGI app: reference routes, the JSON API, health and metrics, on one batching worker.

Routes (all behind the token check and the body limit, see :mod:`firm_lite.server.access`):

- ``POST /mode/score_execution``, ``POST /mode/score_consistency``: the reference protocol,
  pickled in and out (:mod:`~firm_lite.server.protocol`, decoded only by
  :func:`~firm_lite.server.safe_pickle.safe_loads`). 200 with the reference body; 400 text for a
  body that is not plain data, has mismatched lists or an unusable image (the message names the
  index); 404 for an unknown mode; 413 over the body limit; 503 + Retry-After when the queue is
  full (the reference client retries that); 500 text when scoring itself fails (retried, as the
  reference's 500s are).
- ``POST /v1/score``: JSON (base64 images) or multipart uploads; both modes; answers the
  ``firm-lite score --json`` document. A pair with an unusable image becomes an error record.
- ``GET /health`` and ``GET /metrics``.

Decoding (pickle, JSON, images) runs in the thread pool so the event loop stays free to take
requests while the worker thread scores. (fastapi is imported at module level because it reads
the handlers' annotations; this module is only imported to serve.)
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from firm_lite.errors import PairError, UserError
from firm_lite.prompts import MODES
from firm_lite.records import build_record
from firm_lite.server.access import BodyLimitMiddleware, RequestMetricsMiddleware, TokenMiddleware, refusal_response
from firm_lite.server.batching import BatchWorker, QueueFull, ShuttingDown
from firm_lite.server.metrics import ServerMetrics
from firm_lite.server.protocol import (
    ROUTE_MODES,
    RequestRefused,
    parse_json_request,
    parse_multipart_request,
    parse_reference_request,
    prepare_pair,
    prepare_reference,
    reference_response,
)
from firm_lite.server.safe_pickle import UnsafePickleError, dumps_plain, safe_loads

CLIENT_GONE = 499  # nginx's code for "client closed request"; nobody reads it


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limit settings of one server (the ``firm-lite serve`` options)."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_items: int = 64
    max_body_mb: float = 128.0
    token: str | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_items < 1 or self.max_queue < 1:
            raise UserError("--max-batch, --max-items and --max-queue must be >= 1")
        if self.max_queue < self.max_items:
            raise UserError(f"--max-queue {self.max_queue} is smaller than --max-items {self.max_items}: "
                            "a full-size request could never be queued")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0:
            raise UserError("--max-wait-ms must be >= 0 and --max-body-mb > 0")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_pickle_opcodes(self) -> int:
        # a plain request needs ~15 opcodes per edit; metadata dicts may carry extra fields
        return 1_000 + 1_000 * self.max_items

    def public(self) -> dict[str, Any]:
        """Settings safe to show on /health and /metrics (no token)."""
        out = asdict(self)
        out.pop("token")
        out["auth"] = bool(self.token)
        return out


async def _wait_disconnect(request: Any) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone(Exception):
    pass


async def score_items(worker: BatchWorker, request: Any, modes: tuple[str, ...], items: list[Any]
                      ) -> list[dict[str, Any]]:
    """Queue ``items`` on the worker and await one ``{mode: ModeScore}`` per item; the work is
    dropped if the client disconnects first."""
    try:
        job = worker.submit(modes, items)
    except QueueFull as exc:
        worker.metrics.count("rejected_queue_full")
        raise RequestRefused(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except ShuttingDown as exc:
        raise RequestRefused(503, str(exc), {"Retry-After": "5"}) from None
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if job.future not in done:
            worker.metrics.count("disconnects")
            raise _ClientGone
        try:
            return job.future.result()
        except Exception as exc:  # noqa: BLE001 - a scoring failure becomes the reference's 500 text
            raise RequestRefused(500, f"scoring failed: {type(exc).__name__}: {exc}") from exc
    finally:
        watcher.cancel()
        if not job.future.done():
            worker.cancel(job)


def create_app(critic: Any, config: ServeConfig | None = None, worker: BatchWorker | None = None) -> Any:
    """The FastAPI app serving ``critic``; the worker thread starts and stops with the app's lifespan."""
    config = config or ServeConfig()
    metrics = worker.metrics if worker else ServerMetrics()
    worker = worker or BatchWorker(critic, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0,
                                   max_queue=config.max_queue, metrics=metrics)
    provenance: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        worker.start()
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; this drains anything still queued.
            await run_in_threadpool(worker.stop)

    app = FastAPI(title="firm-lite reward server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.worker, app.state.metrics, app.state.config = worker, metrics, config

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> Response:
        return refusal_response(request.url.path, exc.status, exc.message, exc.headers)

    @app.post("/mode/{route}")
    async def reference_route(route: str, request: Request) -> Response:
        mode = ROUTE_MODES.get(route)
        if mode is None:
            raise RequestRefused(404, f"unknown mode {route!r}: use /mode/score_execution or /mode/score_consistency")
        body = await request.body()
        try:
            payload = await run_in_threadpool(safe_loads, body, config.max_pickle_opcodes)
        except UnsafePickleError as exc:
            raise RequestRefused(400, str(exc)) from None
        pairs = parse_reference_request(payload, config.max_items)
        items = await run_in_threadpool(prepare_reference, critic, pairs)
        try:
            scored = await score_items(worker, request, (mode,), items)
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
        return Response(dumps_plain(reference_response([s[mode] for s in scored])),
                        media_type="application/octet-stream")

    @app.post("/v1/score")
    async def json_score(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            async with request.form(max_files=2 * config.max_items, max_fields=4 * config.max_items + 8,
                                    max_part_size=config.max_body_bytes) as form:
                pairs = await parse_multipart_request(form, config.max_items)
        elif content_type.startswith("application/json"):
            try:
                payload = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestRefused(400, f"body is not valid JSON ({exc})") from None
            pairs = await run_in_threadpool(parse_json_request, payload, config.max_items)
        else:
            raise RequestRefused(415, "send application/json ({\"pairs\": [...]}) or multipart/form-data")
        prepared, errors = await run_in_threadpool(_prepare_all, critic, pairs)
        ready = [item for item in prepared if item is not None]
        try:
            scored = await score_items(worker, request, MODES, ready) if ready else []
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
        records, k = [], 0
        for i, pair in enumerate(pairs):
            if prepared[i] is None:
                records.append(build_record(pair.id, critic.context, None, None, critic.weights, error=errors[i]))
            else:
                records.append(build_record(pair.id, critic.context, scored[k]["execution"],
                                            scored[k]["consistency"], critic.weights))
                k += 1
        if not provenance:
            from firm_lite.scoring import run_provenance

            provenance.update(run_provenance(critic))
        from firm_lite.scoring import ScoreRun

        return JSONResponse(ScoreRun(records=records, provenance=provenance).as_json())

    @app.get("/health")
    async def health() -> Response:
        ok = worker.running
        return JSONResponse({"status": "ok" if ok else "stopping", "model": critic.model_id,
                             "variant": critic.variant, "queue_depth": worker.depth, "in_flight": worker.in_flight,
                             "limits": config.public()}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return JSONResponse({**metrics.snapshot(), "limits": config.public()})

    # Added last = outermost: metrics see every answer, the token is checked before any body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(TokenMiddleware, token=config.token)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def _prepare_all(critic: Any, pairs: list[Any]) -> tuple[list[Any], dict[int, str]]:
    """Decode every pair; an unusable pair becomes an error message instead of an item."""
    prepared: list[Any] = []
    errors: dict[int, str] = {}
    for i, pair in enumerate(pairs):
        try:
            prepared.append(prepare_pair(critic, pair))
        except PairError as exc:
            prepared.append(None)
            errors[i] = f"pair {pair.id}: {exc}"
    return prepared, errors
