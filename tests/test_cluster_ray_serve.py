"""``firm-lite serve --ray local --replicas 2`` as a user runs it (a subprocess: one Ray session
for the module, 2 CPUs, tiny critic): a trainer's reference-protocol client gets the single-process
scores, a malicious pickle is refused without its side effect, bad input is the single-process
path's error records, /metrics adds up both replicas, and Ctrl-C lets the in-flight request
finish and leaves no Ray process behind."""

from __future__ import annotations

import base64
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from firm_lite.scoring import score
from firm_lite.settings import CriticSettings

pytest.importorskip("ray")
requests = pytest.importorskip("requests")
from tests.test_server_e2e import _jpeg_pair, trainer_reward  # noqa: E402 - after the skips

TOKEN = "s3cret-ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT_S = 300  # ray.init, the Serve controller and proxy, two replicas importing torch on 2 busy cores
INSTRUCTIONS = ["paint a red square in the corner", "make it brighter", "add a blue stripe", "crop the left side"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_processes(marker: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _settled_metrics(url: str) -> dict:
    """/metrics once the cluster view has caught up: the answering replica adds the other replicas'
    last heartbeats, which may be a beat behind a request that just ended (on 2 busy cores, more
    than one). Settled = both replicas reporting and the same item counts over two heartbeats."""
    from firm_lite.cluster.serving import HEARTBEAT_S

    deadline = time.monotonic() + 30
    last = None
    while True:
        now = requests.get(f"{url}/metrics", headers=AUTH, timeout=10).json()
        counts = (now["replicas"]["reporting"], now["items"])  # not requests: each /metrics call is one
        if counts == last and now["replicas"]["reporting"] == 2:
            return now
        assert time.monotonic() < deadline, f"/metrics never settled: {now}"
        last = counts
        time.sleep(2 * HEARTBEAT_S + 0.2)


@pytest.fixture(scope="module")
def items() -> list[tuple[bytes, bytes, str]]:
    return [(*_jpeg_pair(k), text) for k, text in enumerate(INSTRUCTIONS)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The command, started once; yields (base url, process, log path, Ray temp folder)."""
    temp = tempfile.mkdtemp(prefix="flray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    log = tmp_path_factory.mktemp("rayserve") / "serve.log"
    port = _free_port()
    env = {**os.environ, "RAY_TMPDIR": temp, "OMP_NUM_THREADS": "1", "FIRM_LITE_TOKEN": TOKEN}
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", "from firm_lite.cli import main; main()", "serve", "--ray",
                                 "local", "--replicas", "2", "--model", "tiny", "--device", "cpu", "--port", str(port),
                                 "--max-batch", "4", "--max-wait-ms", "5", "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"2 replicas not up in {START_TIMEOUT_S} s:\n{log.read_text()}"
            try:
                health = requests.get(f"{url}/health", headers=AUTH, timeout=5)
                if health.status_code == 200 and health.json()["replicas"]["up"] == 2:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield url, proc, log, temp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
        for leftover in _ray_processes(temp):  # only the processes of this test's Ray (its own temp folder)
            leftover.kill()


@pytest.fixture(scope="module")
def single_process(tiny_critic, items, tmp_path_factory) -> list[dict]:
    """What `firm-lite score --manifest` says about the same JPEG files."""
    import json

    folder = tmp_path_factory.mktemp("rayjpegs")
    rows = []
    for k, (src, edt, text) in enumerate(items):
        (folder / f"s{k}.jpg").write_bytes(src)
        (folder / f"e{k}.jpg").write_bytes(edt)
        rows.append({"id": str(k), "source": f"s{k}.jpg", "edited": f"e{k}.jpg", "instruction": text})
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return score(CriticSettings(model="tiny", device="cpu"), manifest=manifest).records


def test_reference_client_gets_the_single_process_scores(server, items, single_process) -> None:
    url, *_ = server
    reward_server = f"trainer:{TOKEN}@{url.removeprefix('http://')}"  # the token rides in REWARD_SERVER
    for mode in ("execution", "consistency"):
        scores, last = trainer_reward(reward_server, f"score_{mode}", items)
        assert scores == [r[mode]["score"] for r in single_process], mode
        assert last["parse_failures"] == []
    assert requests.get(f"{url}/health", timeout=10).status_code == 401  # the token is checked behind Ray too


def test_a_malicious_pickle_is_refused_and_never_runs(server, tmp_path: Path) -> None:
    url, *_ = server
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    body = pickle.dumps({"ref_images": [Exploit()], "images": [b""], "prompts": ["x"]})
    response = requests.post(f"{url}/mode/score_execution", data=body, headers=AUTH, timeout=30)
    assert response.status_code == 400 and "pickle body refused: it references the global io.open" in response.text
    time.sleep(0.5)
    assert not marker.exists()
    assert requests.get(f"{url}/health", headers=AUTH, timeout=10).json()["replicas"]["up"] == 2


def test_bad_input_becomes_the_single_process_error_records(server, items, tiny_critic) -> None:
    from firm_lite.server.app import ServeConfig, create_app
    from firm_lite.server.runner import BackgroundServer

    url, *_ = server
    b64 = [(base64.b64encode(s).decode(), base64.b64encode(e).decode()) for s, e, _ in items[:2]]
    pairs = [{"id": str(k), "source": s, "edited": e, "instruction": items[k][2]} for k, (s, e) in enumerate(b64)]
    pairs += [{"id": "truncated", "source": b64[0][0], "edited": b64[0][1][: len(b64[0][1]) // 3],
               "instruction": "x"},
              {"id": "not-an-image", "source": b64[0][0], "edited": base64.b64encode(b"not a jpeg").decode(),
               "instruction": "x"},
              {"id": "empty-instruction", "source": b64[0][0], "edited": b64[0][1], "instruction": "  "}]
    on_ray = requests.post(f"{url}/v1/score", json={"pairs": pairs}, headers=AUTH, timeout=120)
    with BackgroundServer(create_app(tiny_critic, ServeConfig(max_batch=4, max_wait_ms=5))) as srv:
        alone = requests.post(f"{srv.url}/v1/score", json={"pairs": pairs}, timeout=120)
    assert on_ray.status_code == alone.status_code == 200, on_ray.text
    got, want = on_ray.json(), alone.json()
    assert got["summary"] == want["summary"] == {"scored": 2, "failed": 3, "skipped": 0}
    assert got["records"] == want["records"]


def test_metrics_add_up_over_both_replicas(server, items) -> None:
    url, *_ = server
    before = _settled_metrics(url)  # the earlier tests' counters, once every replica has reported them
    body = pickle.dumps({"ref_images": [s for s, _, _ in items[:2]], "images": [e for _, e, _ in items[:2]],
                         "prompts": [t for _, _, t in items[:2]]})

    def post(_: int) -> int:
        return requests.post(f"{url}/mode/score_consistency", data=body, headers=AUTH, timeout=120).status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(8))) == [200] * 8
    after = _settled_metrics(url)
    replicas = after["replicas"]
    assert replicas["target"] == 2 and replicas["reporting"] == 2 and len(replicas["per_replica"]) == 2
    assert after["items"]["consistency"] - before["items"].get("consistency", 0) == 16
    assert sum(r["items"] for r in replicas["per_replica"].values()) == after["items"]["total"]
    assert all(r["items"] > 0 for r in replicas["per_replica"].values()), replicas  # Ray spread the load
    assert after["requests"]["by_route_status"]["/mode/score_consistency"]["200"] >= 8


def test_ctrl_c_finishes_in_flight_requests_and_leaves_no_ray_process(server, items) -> None:
    url, proc, log, temp = server
    assert _ray_processes(temp), "the check below would prove nothing"
    many = [items[k % len(items)] for k in range(32)]
    body = pickle.dumps({"ref_images": [s for s, _, _ in many], "images": [e for _, e, _ in many],
                         "prompts": [t for _, _, t in many]})
    answer: dict = {}

    def in_flight() -> None:
        response = requests.post(f"{url}/mode/score_execution", data=body, headers=AUTH, timeout=180)
        answer.update(status=response.status_code, body=response.content)

    client = threading.Thread(target=in_flight)
    client.start()
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/metrics", headers=AUTH, timeout=10).json()["queue"]["depth"] == 0:
        assert client.is_alive() and time.monotonic() < deadline, "the request never reached a replica's queue"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    client.join(180)
    assert answer.get("status") == 200, answer
    assert len(pickle.loads(answer["body"])["scores"]) == 32
    assert proc.wait(120) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    deadline = time.monotonic() + 30
    while _ray_processes(temp) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _ray_processes(temp), [p.info["cmdline"][:2] for p in _ray_processes(temp)]
