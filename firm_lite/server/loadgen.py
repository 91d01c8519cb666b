"""Load test for the reward server: batching on vs off, same critic, same run, loopback only.

:func:`loadtest` starts the real app (uvicorn, :class:`~firm_lite.server.runner.BackgroundServer`)
twice on one loaded critic, once with ``max_batch=1`` (every item its own forward pass) and once
with micro-batching, and drives each with ``clients`` threads that talk the way RL trainers do
(``requests`` + pickled JPEG batches, :func:`post_reference`). It reports requests/s, items/s
and latency percentiles per run, the server's own batch statistics, and whether both runs gave
the same scores. ``bench/serve_load.py`` is the command-line front; the numbers go to
``bench/results/serve_load.json``.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from typing import Any

from firm_lite.server.metrics import percentile
from firm_lite.server.safe_pickle import safe_loads


def demo_jpeg_items(n: int) -> list[tuple[bytes, bytes, str]]:
    """``n`` (original JPEG, edited JPEG, instruction) items from the bundled demo pair; odd items
    are mirrored so a batch holds more than one distinct input."""
    from PIL import ImageOps

    from firm_lite.data import demo_pair
    from firm_lite.images import encode_jpeg, load_image

    pair = demo_pair()
    src, edt = load_image(pair.source), load_image(pair.edited)
    variants = [(encode_jpeg(src), encode_jpeg(edt)),
                (encode_jpeg(ImageOps.mirror(src)), encode_jpeg(ImageOps.mirror(edt)))]
    return [(*variants[k % 2], pair.instruction) for k in range(n)]


def reference_body(items: list[tuple[bytes, bytes, str]], requirement: str = "") -> bytes:
    """A request body exactly as the reference trainer client builds it (client side: pickle.dumps)."""
    return pickle.dumps({"ref_images": [s for s, _, _ in items], "images": [e for _, e, _ in items],
                         "prompts": [p for _, _, p in items],
                         "metadatas": [{"requirement": requirement} for _ in items]})


def post_reference(session: Any, url: str, mode: str, body: bytes, timeout: float = 120.0) -> tuple[int, Any]:
    """POST a reference body; returns (status, decoded response or error text)."""
    response = session.post(f"{url}/mode/score_{mode}", data=body, timeout=timeout)
    if response.status_code == 200:
        return 200, safe_loads(response.content)
    return response.status_code, response.text


def _drive(url: str, clients: int, requests_per_client: int, body: bytes, items_per_request: int,
           timeout: float) -> dict[str, Any]:
    import requests

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    scores: dict[str, set[tuple[int, ...]]] = {"execution": set(), "consistency": set()}
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            for r in range(requests_per_client):
                mode = ("execution", "consistency")[r % 2]  # like trainer ranks: same route at the same step
                t0 = time.perf_counter()
                status, data = post_reference(session, url, mode, body, timeout)
                dt = time.perf_counter() - t0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(dt)
                        scores[mode].add(tuple(data["scores"]))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(timeout * requests_per_client)
    wall = time.perf_counter() - start
    ok = statuses.get(200, 0)
    return {
        "wall_s": round(wall, 3), "requests_ok": ok, "statuses": {str(k): v for k, v in statuses.items()},
        "requests_per_s": round(ok / wall, 3), "items_per_s": round(ok * items_per_request / wall, 3),
        "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": max(latencies) if latencies else None,
        "_scores": scores,
    }


def loadtest(*, model: str = "tiny", variant: str = "default", device: str = "cpu", clients: int = 4,
             requests_per_client: int = 4, items_per_request: int = 2, max_batch: int = 8,
             max_wait_ms: float = 20.0, max_new_tokens: int = 256, timeout_s: float = 120.0) -> dict[str, Any]:
    """Measure the server with batching off (max_batch=1) and on (max_batch), same critic and load."""
    import requests

    from firm_lite.critic import load_critic
    from firm_lite.scoring import run_provenance
    from firm_lite.server.app import ServeConfig, create_app
    from firm_lite.server.runner import BackgroundServer

    load_before = os.getloadavg()[0]  # other work on the machine makes every number here slower
    critic = load_critic(model=model, variant=variant, device=device, max_new_tokens=max_new_tokens)
    body = reference_body(demo_jpeg_items(items_per_request))
    queue = max(256, clients * items_per_request * 2)
    runs: dict[str, Any] = {}
    all_scores: dict[str, set[tuple[int, ...]]] = {"execution": set(), "consistency": set()}
    for label, batch, wait in (("batching_off", 1, 0.0), ("batching_on", max_batch, max_wait_ms)):
        config = ServeConfig(max_batch=batch, max_wait_ms=wait, max_queue=queue,
                             max_items=max(64, items_per_request))
        with BackgroundServer(create_app(critic, config)) as server:
            with requests.Session() as warm:  # first call pays one-off costs (processor, allocator)
                post_reference(warm, server.url, "execution", body, timeout_s)
                post_reference(warm, server.url, "consistency", body, timeout_s)
            result = _drive(server.url, clients, requests_per_client, body, items_per_request, timeout_s)
            stats = requests.get(f"{server.url}/metrics", timeout=10).json()
        for mode, seen in result.pop("_scores").items():
            all_scores[mode] |= seen
        result["server_batches"] = stats["batches"]
        result["settings"] = {"max_batch": batch, "max_wait_ms": wait}
        runs[label] = result
    off, on = runs["batching_off"], runs["batching_on"]
    return {
        "load": {"clients": clients, "requests_per_client": requests_per_client,
                 "items_per_request": items_per_request, "transport": "loopback HTTP, pickled JPEG batches"},
        "runs": runs,
        "speedup_items_per_s": round(on["items_per_s"] / off["items_per_s"], 3) if off["items_per_s"] else None,
        "same_scores_on_and_off": all(len(v) == 1 for v in all_scores.values()),
        "host": {"cpus": os.cpu_count(), "loadavg_1m_before": round(load_before, 2),
                 "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "provenance": run_provenance(critic),
    }
