"""Micro-batching, back-pressure, disconnects and graceful shutdown of the real uvicorn stack.

A scripted stand-in critic (gated, so every interleaving is forced, not hoped for) lets these
tests assert exactly what was batched together; the tiny critic's tests check the scores.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'firm-lite[serve]'")
import requests
from PIL import Image
from requests.adapters import HTTPAdapter, Retry

from firm_lite.cme import CMEWeights
from firm_lite.images import encode_jpeg
from firm_lite.records import ModeScore
from firm_lite.server.app import ServeConfig, create_app
from firm_lite.server.runner import BackgroundServer
from firm_lite.server.safe_pickle import safe_loads

JPEG = encode_jpeg(Image.new("RGB", (16, 16), (40, 90, 200)))


class ScriptedCritic:
    """Answers score = 1 + len(instruction) % 5 and echoes the instruction as reasoning."""

    model_id, variant, max_image_pixels = "scripted", "none", 10**8
    weights = CMEWeights()
    context = {"model": "scripted", "variant": "none", "image_budget": None}

    def __init__(self, gated: bool = False, fail_on: str | None = None) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.busy = threading.Event()
        self.fail_on = fail_on
        self.batches: list[tuple[str, list[str]]] = []

    def prepare(self, pair):
        return pair.source, pair.edited

    def score_modes(self, items, modes):
        names = [p.instruction for p, _, _ in items]
        self.batches.append((tuple(modes), names))
        self.busy.set()
        assert self.gate.wait(20), "test never opened the gate"
        if self.fail_on in names:
            raise RuntimeError("boom")
        return {mode: [ModeScore(1 + len(n) % 5, None, None, n, True, n) for n in names] for mode in modes}


def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def body(names: list[str]) -> bytes:
    n = len(names)
    return pickle.dumps({"images": [JPEG] * n, "ref_images": [JPEG] * n, "prompts": names,
                         "metadatas": [{"requirement": ""}] * n})


def post(url: str, names: list[str], mode: str = "execution", timeout: float = 30.0) -> requests.Response:
    return requests.post(f"{url}/mode/score_{mode}", data=body(names), timeout=timeout)


def serve(critic: ScriptedCritic, **config: object) -> BackgroundServer:
    return BackgroundServer(create_app(critic, ServeConfig(**config)))


def test_concurrent_requests_are_merged_into_batches_and_answered_in_order() -> None:
    critic = ScriptedCritic(gated=True)
    results: dict[int, requests.Response] = {}
    requests_ = {k: [f"r{k}-{i}" + "x" * (k + i) for i in range(2)] for k in range(5)}
    requests_[5] = [f"big-{i}" for i in range(5)]  # bigger than max_batch: spread over batches
    with serve(critic, max_batch=4, max_wait_ms=20) as srv:
        def client(k: int) -> None:
            results[k] = post(srv.url, requests_[k])

        first = threading.Thread(target=client, args=(0,))
        first.start()
        until(critic.busy.is_set, "the first batch")  # worker now blocked on request 0
        threads = [threading.Thread(target=client, args=(k,)) for k in range(1, 6)]
        for t in threads:
            t.start()
        until(lambda: srv.app.state.worker.depth == 4 * 2 + 5, "all requests queued")
        critic.gate.set()
        for t in [first, *threads]:
            t.join(30)
        snapshot = requests.get(f"{srv.url}/metrics", timeout=5).json()
    for k, names in requests_.items():
        assert results[k].status_code == 200, results[k].text
        answer = safe_loads(results[k].content)
        assert answer["reasonings"] == names  # each answer holds its own items, in order
        assert answer["scores"] == [1 + len(n) % 5 for n in names] and answer["parse_failures"] == []
    sizes = [len(b) for _, b in critic.batches]
    assert max(sizes) == 4 and sizes[0] == 2 and sum(sizes) == 15
    assert any(len({n.split("-")[0] for n in b}) > 1 for _, b in critic.batches), "no batch mixed requests"
    assert snapshot["items"]["total"] == 15 and snapshot["batches"]["count"] == len(sizes)
    assert snapshot["requests"]["by_route_status"]["/mode/score_execution"] == {"200": 6}


def test_full_queue_answers_503_with_retry_after_and_a_trainer_client_retries() -> None:
    critic = ScriptedCritic(gated=True)
    with serve(critic, max_batch=1, max_queue=2, max_items=2, max_wait_ms=0) as srv:
        first = threading.Thread(target=post, args=(srv.url, ["a1", "a2"]))
        first.start()
        until(lambda: critic.busy.is_set() and srv.app.state.worker.depth == 1, "a1 in flight, a2 queued")
        refused = post(srv.url, ["b1", "b2"])
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "queue full" in refused.text

        # The reference trainer client: retries only 500 by its forcelist, but urllib3 also honours
        # Retry-After on 503, so it waits and gets its scores once there is room.
        session = requests.Session()
        session.mount("http://", HTTPAdapter(max_retries=Retry(total=1000, backoff_factor=1,
                                                               status_forcelist=[500], allowed_methods=False)))
        got: dict[str, requests.Response] = {}
        trainer = threading.Thread(target=lambda: got.update(r=session.post(
            f"{srv.url}/mode/score_execution", data=body(["b1", "b2"]), timeout=30)))
        trainer.start()
        until(lambda: srv.app.state.metrics.rejected_queue_full >= 2, "the trainer's first try refused")
        critic.gate.set()
        first.join(30)
        trainer.join(30)
    assert got["r"].status_code == 200
    assert safe_loads(got["r"].content)["reasonings"] == ["b1", "b2"]


def test_client_that_disconnects_is_dropped_without_stalling_the_worker() -> None:
    critic = ScriptedCritic(gated=True)
    with serve(critic, max_batch=1) as srv:
        first: dict[str, requests.Response] = {}
        t = threading.Thread(target=lambda: first.update(r=post(srv.url, ["a"])))
        t.start()
        until(critic.busy.is_set, "a in flight")
        with pytest.raises(requests.exceptions.ReadTimeout):
            post(srv.url, ["gone"], timeout=0.5)  # requests closes the connection on timeout
        until(lambda: srv.app.state.metrics.disconnects == 1, "the disconnect noticed")
        assert srv.app.state.worker.depth == 0  # its item left the queue
        critic.gate.set()
        t.join(30)
        after = post(srv.url, ["c"])
    assert first["r"].status_code == 200 and after.status_code == 200
    assert [b for _, b in critic.batches] == [["a"], ["c"]]  # "gone" was never scored


def test_scoring_failure_is_a_500_text_and_the_server_goes_on() -> None:
    critic = ScriptedCritic(fail_on="bad")
    with serve(critic) as srv:
        failed = post(srv.url, ["bad"], mode="consistency")
        ok = post(srv.url, ["good"], mode="consistency")
        snapshot = requests.get(f"{srv.url}/metrics", timeout=5).json()
    assert failed.status_code == 500 and "scoring failed: RuntimeError: boom" in failed.text
    assert ok.status_code == 200 and safe_loads(ok.content)["reasonings"] == ["good"]
    assert snapshot["worker_errors"] == 1


def test_graceful_shutdown_finishes_in_flight_work() -> None:
    critic = ScriptedCritic(gated=True)
    srv = serve(critic).__enter__()
    got: dict[str, requests.Response] = {}
    t = threading.Thread(target=lambda: got.update(r=post(srv.url, ["late"])))
    t.start()
    until(critic.busy.is_set, "request in flight")
    stopped: dict[str, bool] = {}
    stopper = threading.Thread(target=lambda: stopped.update(ok=srv.stop(timeout=30)))
    stopper.start()
    until(lambda: srv.server.should_exit, "shutdown requested")
    time.sleep(0.2)  # shutdown is under way while the batch is still being scored
    critic.gate.set()
    t.join(30)
    stopper.join(30)
    assert got["r"].status_code == 200 and safe_loads(got["r"].content)["reasonings"] == ["late"]
    assert stopped["ok"] and not srv.app.state.worker.running
