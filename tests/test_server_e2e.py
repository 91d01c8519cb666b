"""The reward server on the offline tiny critic, over real loopback sockets: a trainer's client
gets the CLI's scores, the JSON API round-trips, and every refusal is the documented one."""

from __future__ import annotations

import base64
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'firm-lite[serve]'")
import requests
from click.testing import CliRunner
from PIL import Image
from requests.adapters import HTTPAdapter, Retry

from firm_lite.images import encode_jpeg
from firm_lite.server.app import ServeConfig, create_app
from firm_lite.server.runner import BackgroundServer
from firm_lite.server.safe_pickle import safe_loads
from firm_lite.settings import CriticSettings

MODES = ("execution", "consistency")
INSTRUCTIONS = ["paint a red square in the corner", "make it brighter", "add a blue stripe"]


def _jpeg_pair(seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    edited = base.copy()
    edited[8:32, 8 + 4 * seed:32 + 4 * seed] = (250, 30, 30)
    return encode_jpeg(Image.fromarray(base)), encode_jpeg(Image.fromarray(edited))


@pytest.fixture(scope="module")
def items() -> list[tuple[bytes, bytes, str]]:
    return [(*_jpeg_pair(k), text) for k, text in enumerate(INSTRUCTIONS)]


@pytest.fixture(scope="module")
def cli_records(tiny_critic, items, tmp_path_factory) -> list[dict]:
    """What `firm-lite score --manifest` says about the same JPEG files."""
    from firm_lite.scoring import score

    folder = tmp_path_factory.mktemp("jpegs")
    rows = []
    for k, (src, edt, text) in enumerate(items):
        (folder / f"s{k}.jpg").write_bytes(src)
        (folder / f"e{k}.jpg").write_bytes(edt)
        rows.append({"id": str(k), "source": f"s{k}.jpg", "edited": f"e{k}.jpg", "instruction": text})
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return score(CriticSettings(model="tiny", device="cpu"), manifest=manifest).records


@pytest.fixture(scope="module")
def server(tiny_critic):
    with BackgroundServer(create_app(tiny_critic, ServeConfig(max_batch=4, max_wait_ms=5))) as srv:
        yield srv


def trainer_reward(reward_server: str, mode: str, items: list[tuple[bytes, bytes, str]]) -> tuple[list, dict]:
    """Written the way RL trainers write it (requests + pickle, JPEG bytes, batches, retry on 500)."""
    url = f"http://{reward_server}/mode/{mode}"
    sess = requests.Session()
    sess.mount("http://", HTTPAdapter(max_retries=Retry(total=3, backoff_factor=1, status_forcelist=[500],
                                                        allowed_methods=False)))
    scores, last = [], {}
    for start in range(0, len(items), 2):
        batch = items[start:start + 2]
        data = {"ref_images": [s for s, _, _ in batch], "images": [e for _, e, _ in batch],
                "prompts": [p for _, _, p in batch], "metadatas": [{"requirement": ""} for _ in batch]}
        response = sess.post(url, data=pickle.dumps(data), timeout=60)
        last = pickle.loads(response.content)  # the trainer trusts its own server's answer
        scores += last["scores"]
    return scores, last


def reward_server(srv: BackgroundServer, auth: str = "") -> str:
    return f"{auth}{srv.host}:{srv.port}"


def test_trainer_client_gets_the_same_scores_as_the_cli(server, items, cli_records) -> None:
    for mode in MODES:
        scores, last = trainer_reward(reward_server(server), f"score_{mode}", items)
        assert scores == [r[mode]["score"] for r in cli_records], mode
        assert last["reasonings"] == [cli_records[2][mode]["reasoning"] or ""]
        assert last["parse_failures"] == []
    assert all(isinstance(s, int) and 1 <= s <= 5 for s in scores)


def test_json_api_round_trip_matches_the_cli_record(server, items, cli_records) -> None:
    b64 = [(base64.b64encode(s).decode(), base64.b64encode(e).decode()) for s, e, _ in items]
    pairs = [{"id": str(k), "source": s, "edited": e, "instruction": items[k][2]} for k, (s, e) in enumerate(b64)]
    pairs.append({"id": "broken", "source": b64[0][0], "edited": base64.b64encode(b"not a jpeg").decode(),
                  "instruction": "x"})
    response = requests.post(f"{server.url}/v1/score", json={"pairs": pairs}, timeout=60)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["summary"] == {"scored": 3, "failed": 1, "skipped": 0}
    records = doc["records"]
    assert set(records[0]) == set(cli_records[0])
    for got, want in zip(records, cli_records, strict=False):
        assert got["id"] == want["id"] and got["cme"] == want["cme"]
        for mode in MODES:
            assert got[mode]["score"] == want[mode]["score"] and got[mode]["raw"] == want[mode]["raw"]
            if want[mode]["probs"]:
                assert got[mode]["probs"] == pytest.approx(want[mode]["probs"], abs=1e-4)
    assert records[3]["error"].startswith("pair broken: edited:") and records[3]["execution"] is None

    src, edt, text = items[1]
    upload = requests.post(f"{server.url}/v1/score", files={"source": ("s.jpg", src), "edited": ("e.jpg", edt)},
                           data={"instruction": text, "id": "up"}, timeout=60)
    assert upload.status_code == 200, upload.text
    record = upload.json()["records"][0]
    assert record["id"] == "up" and record["execution"]["score"] == cli_records[1]["execution"]["score"]
    assert requests.post(f"{server.url}/v1/score", json={"pairz": []}, timeout=10).status_code == 400


def test_corrupt_jpeg_in_a_batch_is_a_400_naming_the_index(server, items) -> None:
    src, edt, text = items[0]
    data = {"ref_images": [src, src, src], "images": [edt, edt[: len(edt) // 3], edt], "prompts": [text] * 3}
    response = requests.post(f"{server.url}/mode/score_execution", data=pickle.dumps(data), timeout=60)
    assert response.status_code == 400
    assert response.text.startswith("item 1: images[1] (edited):") and "truncated" in response.text
    assert trainer_reward(reward_server(server), "score_execution", items[:1])[0][0] in range(1, 6)  # still serving


def test_mismatched_lengths_are_400(server, items) -> None:
    src, edt, text = items[0]
    data = {"ref_images": [src, src], "images": [edt], "prompts": [text, text]}
    response = requests.post(f"{server.url}/mode/score_consistency", data=pickle.dumps(data), timeout=10)
    assert response.status_code == 400 and "list lengths differ" in response.text


class Exploit:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_code_carrying_pickle_is_refused_and_never_runs(server, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"images": [Exploit(marker)], "ref_images": [b""], "prompts": ["x"]})
    response = requests.post(f"{server.url}/mode/score_execution", data=payload, timeout=10)
    assert response.status_code == 400 and "refused" in response.text and "system" in response.text
    assert not marker.exists()
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_oversize_bodies_are_413(tiny_critic, items) -> None:
    body = pickle.dumps({"ref_images": [b"x" * 150_000], "images": [b"x"], "prompts": ["p"]})
    with BackgroundServer(create_app(tiny_critic, ServeConfig(max_body_mb=0.1))) as srv:
        sized = requests.post(f"{srv.url}/mode/score_execution", data=body, timeout=10)
        chunked = requests.post(f"{srv.url}/mode/score_execution", timeout=10,
                                data=(body[i:i + 16384] for i in range(0, len(body), 16384)))
        as_json = requests.post(f"{srv.url}/v1/score", data=b"{" + b" " * 150_000 + b"}", timeout=10,
                                headers={"content-type": "application/json"})
        ok = requests.post(f"{srv.url}/mode/score_execution", timeout=60, data=pickle.dumps(
            {"ref_images": [items[0][0]], "images": [items[0][1]], "prompts": [items[0][2]]}))
    assert sized.status_code == 413 and "limit of 104,857 bytes" in sized.text
    assert chunked.status_code == 413 and as_json.status_code == 413 and "error" in as_json.json()
    assert ok.status_code == 200


def test_token_is_checked_on_every_request(tiny_critic, items) -> None:
    with BackgroundServer(create_app(tiny_critic, ServeConfig(token="s3cret"))) as srv:
        assert requests.get(f"{srv.url}/health", timeout=10).status_code == 401
        assert requests.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10
                            ).status_code == 401
        refused = requests.post(f"{srv.url}/mode/score_execution", data=b"junk", timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert requests.get(f"{srv.url}/health", headers={"Authorization": "Bearer s3cret"}, timeout=10
                            ).status_code == 200
        # a trainer that can only change REWARD_SERVER puts the token in it
        scores, _ = trainer_reward(reward_server(srv, "firm:s3cret@"), "score_execution", items[:1])
        assert scores[0] in range(1, 6)
        with pytest.raises(pickle.UnpicklingError):  # a 401 text body is not a pickle
            trainer_reward(reward_server(srv, "firm:wrong@"), "score_execution", items[:1])


def test_concurrent_clients_every_answer_accounted_for(server, items, cli_records) -> None:
    before = requests.get(f"{server.url}/metrics", timeout=10).json()["requests"]["total"]
    answers: list[tuple[str, list[int], list[int]]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with requests.Session() as sess:
            for r in range(3):
                mode = MODES[(k + r) % 2]
                picked = [(k + r) % 3, (k + 2 * r + 1) % 3][: 1 + (k + r) % 2]
                data = {"ref_images": [items[i][0] for i in picked], "images": [items[i][1] for i in picked],
                        "prompts": [items[i][2] for i in picked]}
                response = sess.post(f"{server.url}/mode/score_{mode}", data=pickle.dumps(data), timeout=60)
                assert response.status_code == 200, response.text
                with lock:
                    answers.append((mode, picked, safe_loads(response.content)["scores"]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 12
    for mode, picked, scores in answers:
        assert scores == [cli_records[i][mode]["score"] for i in picked]
    snapshot = requests.get(f"{server.url}/metrics", timeout=10).json()
    assert snapshot["requests"]["total"] - before == 13  # 12 scored + the first /metrics
    assert snapshot["queue"]["depth"] == 0 and snapshot["batches"]["count"] >= 1


def test_parse_failures_go_out_as_zero_listed_and_counted() -> None:
    from firm_lite.critic import load_critic

    short = load_critic(model="tiny", device="cpu", max_new_tokens=2)  # no answer fits in 2 tokens
    src, edt = _jpeg_pair(0)
    with BackgroundServer(create_app(short, ServeConfig())) as srv:
        data = {"ref_images": [src, src], "images": [edt, edt], "prompts": ["a", "b"]}
        response = requests.post(f"{srv.url}/mode/score_execution", data=pickle.dumps(data), timeout=60)
        snapshot = requests.get(f"{srv.url}/metrics", timeout=10).json()
    answer = safe_loads(response.content)
    assert response.status_code == 200 and answer["scores"] == [0, 0] and answer["parse_failures"] == [0, 1]
    assert snapshot["parse_failures"] == {"total": 2, "execution": 2}


def test_cli_refuses_an_open_host_without_token_before_loading_anything() -> None:
    from firm_lite.cli import main

    result = CliRunner().invoke(main, ["serve", "--model", "tiny", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: --host 0.0.0.0 can be reached from other machines")


@pytest.mark.slow  # a fresh interpreter imports torch and loads the critic again
def test_firm_lite_serve_command_answers_both_apis_and_stops_cleanly(items, tmp_path: Path) -> None:
    """`firm-lite serve --model tiny` as a user runs it; Ctrl-C ends it with exit code 0."""
    import re
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", "from firm_lite.cli import main; main()", "serve",
                                 "--model", "tiny", "--device", "cpu", "--port", "0", "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, url = time.monotonic() + 90, None
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            found = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
            url = f"127.0.0.1:{found.group(1)}" if found else None
            time.sleep(0.1)
        while requests.get(f"http://{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert trainer_reward(url, "score_consistency", items[:1])[0][0] in range(1, 6)
        src, edt, text = items[0]
        doc = requests.post(f"http://{url}/v1/score", timeout=60, json={"pairs": [
            {"source": base64.b64encode(src).decode(), "edited": base64.b64encode(edt).decode(),
             "instruction": text}]}).json()
        assert doc["records"][0]["execution"]["score"] in range(1, 6)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, log.read_text()
    assert "access: loopback only" in log.read_text() and "Traceback" not in log.read_text()
