"""The ASGI app: reference routes, the JSON API, health and metrics, on one batching worker.

Routes (all behind the token check, the body limit and the in-flight budget, see
:mod:`firm_lite.server.access` and :mod:`firm_lite.server.admission`):

- ``POST /mode/score_execution``, ``POST /mode/score_consistency``: the reference protocol,
  pickled in and out (:mod:`~firm_lite.server.protocol`, decoded only by
  :func:`~firm_lite.server.safe_pickle.safe_loads`). 200 with the reference body; 400 text for a
  body that is not plain data, has mismatched lists, text that is not valid Unicode or an
  unusable image (the message names the index); 404 for an unknown mode; 413 over the body limit
  (or a request that could never fit the in-flight budget); 503 + Retry-After when the queue or
  the in-flight budget is full (the reference client retries that); 500 text when scoring the
  request's own item fails (retried, as the reference's 500s are; an item never fails another
  request, see :mod:`~firm_lite.server.batching`).
- ``POST /v1/score``: JSON (base64 images) or multipart uploads; both modes; answers the
  ``firm-lite score --json`` document. A pair whose image cannot be used, or whose scoring fails,
  becomes an error record; malformed requests and invalid text are a 400.
- ``GET /health`` and ``GET /metrics``. When the app is one of several replicas (Ray Serve,
  :mod:`firm_lite.cluster.serving`), ``cluster`` turns this replica's answer into the cluster's
  (replicas up; metrics summed over replicas).

Parsing (pickle, JSON) and image header checks run in the thread pool so the event loop stays
free to take requests; images are decoded by the worker, batch by batch. A client that hangs up
mid-body is logged in one line and counted under ``disconnects`` (status 499), not as a 500.
(fastapi is imported at module level because it reads the handlers' annotations; this module is
only imported to serve.)
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from firm_lite.errors import PairError
from firm_lite.prompts import MODES
from firm_lite.records import build_record
from firm_lite.server.access import RequestMetricsMiddleware, RequestRefused, TokenMiddleware, refusal_response
from firm_lite.server.admission import BODY_WEIGHT, BodyGuardMiddleware, InFlightBudget, over_budget
from firm_lite.server.batching import BatchWorker, ItemFailed, QueueFull, ShuttingDown
from firm_lite.server.config import ServeConfig
from firm_lite.server.metrics import ServerMetrics
from firm_lite.server.protocol import (
    ROUTE_MODES,
    QueuedPair,
    admit_pairs,
    decode_queued,
    pair_message,
    parse_json_body,
    parse_multipart_request,
    parse_reference_request,
    reference_response,
)
from firm_lite.server.safe_pickle import UnsafePickleError, dumps_plain, safe_loads

__all__ = ["ServeConfig", "create_app", "score_items"]

log = logging.getLogger("firm_lite.server.requests")  # per-request events; --log-level sets it
CLIENT_GONE = 499  # nginx's code for "client closed request"; nobody reads it


async def _wait_disconnect(request: Any) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone(Exception):
    pass


async def score_items(worker: BatchWorker, request: Any, modes: tuple[str, ...], items: list[Any],
                      fail_fast: bool = True) -> list[Any]:
    """Queue ``items`` on the worker and await one ``{mode: ModeScore}`` per item (see
    :meth:`BatchWorker.submit` for ``fail_fast``); the work is dropped if the client disconnects."""
    try:
        job = worker.submit(modes, items, fail_fast=fail_fast)
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
        except ItemFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker failure becomes the reference's 500 text
            raise RequestRefused(500, f"scoring failed: {type(exc).__name__}: {exc}") from exc
    finally:
        watcher.cancel()
        if not job.future.done():
            worker.cancel(job)


def _load_reference(body: bytes, config: ServeConfig) -> Any:
    try:
        payload = safe_loads(body, config.max_pickle_opcodes)
    except UnsafePickleError as exc:
        raise RequestRefused(400, str(exc)) from None
    return parse_reference_request(payload, config.max_items)


def create_app(critic: Any, config: ServeConfig | None = None, worker: BatchWorker | None = None,
               cluster: Any = None) -> Any:
    """The FastAPI app serving ``critic``; the worker thread starts and stops with the app's lifespan.
    ``cluster``: an object whose coroutines ``health(body)`` and ``metrics(body)`` widen this
    server's /health and /metrics answers to all replicas (None: one server)."""
    config = config or ServeConfig()
    metrics = worker.metrics if worker else ServerMetrics()
    worker = worker or BatchWorker(critic, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0,
                                   max_queue=config.max_queue, metrics=metrics,
                                   prepare=lambda queued: decode_queued(critic, queued))
    budget = InFlightBudget(config.max_inflight_bytes, metrics)
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
    app.state.worker, app.state.metrics, app.state.config, app.state.budget = worker, metrics, config, budget

    async def score_queued(request: Request, modes: tuple[str, ...], queued: list[QueuedPair], fail_fast: bool,
                           body_size: int) -> list[Any]:
        """Reserve the decoded size of ``queued`` from the in-flight budget, then score them."""
        cost = sum(q.cost for q in queued)
        if not budget.try_reserve(cost):
            raise over_budget(budget, cost + BODY_WEIGHT * body_size, "this request's decoded images",
                              worker.retry_after())
        try:
            return await score_items(worker, request, modes, queued, fail_fast=fail_fast)
        finally:
            budget.release(cost)

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> Response:
        return refusal_response(request.url.path, exc.status, exc.message, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        metrics.count("disconnects")
        client = request.client.host if request.client else "?"
        log.info("client %s hung up before sending its whole request body (%s); dropped", client, request.url.path)
        return Response(status_code=CLIENT_GONE)

    @app.post("/mode/{route}")
    async def reference_route(route: str, request: Request) -> Response:
        mode = ROUTE_MODES.get(route)
        if mode is None:
            raise RequestRefused(404, f"unknown mode {route!r}: use /mode/score_execution or /mode/score_consistency")
        body = await request.body()
        body_size = len(body)
        pairs = await run_in_threadpool(_load_reference, body, config)
        del body  # the pairs hold the image bytes now
        queued, _ = await run_in_threadpool(admit_pairs, critic, pairs, True)
        try:
            scored = await score_queued(request, (mode,), queued, True, body_size)
        except ItemFailed as exc:
            if isinstance(exc.cause, PairError):
                raise RequestRefused(400, f"item {exc.index}: {exc.cause}") from None
            raise RequestRefused(500, f"scoring failed: {type(exc.cause).__name__}: {exc.cause}") from None
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
        return Response(dumps_plain(reference_response([s[mode] for s in scored])),
                        media_type="application/octet-stream")

    @app.post("/v1/score")
    async def json_score(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        body_size = 0
        if content_type.startswith("multipart/form-data"):
            async with request.form(max_files=2 * config.max_items, max_fields=4 * config.max_items + 8,
                                    max_part_size=config.max_body_bytes) as form:
                pairs = await parse_multipart_request(form, config.max_items)
        elif content_type.startswith("application/json"):
            body = await request.body()
            body_size = len(body)
            pairs = await run_in_threadpool(parse_json_body, body, config.max_items)
            del body
        else:
            raise RequestRefused(415, "send application/json ({\"pairs\": [...]}) or multipart/form-data")
        queued, errors = await run_in_threadpool(admit_pairs, critic, pairs, False)
        try:
            scored = await score_queued(request, MODES, queued, False, body_size) if queued else []
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
        results = dict(zip((q.index for q in queued), scored, strict=True))
        records = []
        for i, pair in enumerate(pairs):
            result = results.get(i)
            if isinstance(result, dict):
                records.append(build_record(pair.id, critic.context, result["execution"], result["consistency"],
                                            critic.weights))
                continue
            if isinstance(result, PairError):
                error = pair_message(pair.id, result)
            elif result is not None:
                error = f"pair {pair.id}: scoring failed ({type(result).__name__}: {result})"
            else:
                error = errors[i]
            records.append(build_record(pair.id, critic.context, None, None, critic.weights, error=error))
        if not provenance:
            from firm_lite.scoring import run_provenance

            provenance.update(run_provenance(critic))
        from firm_lite.scoring import ScoreRun

        return JSONResponse(ScoreRun(records=records, provenance=provenance).as_json())

    @app.get("/health")
    async def health() -> Response:
        ok = worker.running
        body = {"status": "ok" if ok else "stopping", "model": critic.model_id, "variant": critic.variant,
                "queue_depth": worker.depth, "in_flight": worker.in_flight, "limits": config.public()}
        if cluster is not None:
            body = await cluster.health(body)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        body = {**metrics.snapshot(), "limits": config.public()}
        if cluster is not None:
            body = await cluster.metrics(body)
        return JSONResponse(body)

    # Added last = outermost: metrics see every answer, the token is checked before any body is read,
    # and a body is admitted (limit, budget, timeout) before the route reads it.
    app.add_middleware(BodyGuardMiddleware, max_bytes=config.max_body_bytes, budget=budget,
                       body_timeout_s=config.body_timeout_s, retry_after=worker.retry_after)
    app.add_middleware(TokenMiddleware, token=config.token)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
