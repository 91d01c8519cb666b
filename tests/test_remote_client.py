"""The remote backend's client against a fake OpenAI server that misbehaves on demand.

The fake answers with completions made of the tiny critic's real token ids (an answer, then text
the server generated past firm-lite's stop rule), and with digit log-probabilities chosen here, so
every score, probability and raw text below is known exactly. What it checks is what a user of
``--endpoint`` would notice: the request carries firm-lite's turn, pixels, budget and decoding;
retries happen where they can help (5xx, 429 after Retry-After, timeouts) and not where they
cannot (400, malformed answers); a dead server raises instead of hanging; the key is sent; the
load is spread with both modes of a pair on one server; a server without ``logprob_token_ids``
gives probabilities renormalised over the digits it returned, and says so.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("httpx")

from firm_lite.engine import FAST_ANSWER_PREFIX  # noqa: E402
from firm_lite.errors import UserError  # noqa: E402
from firm_lite.generation import digit_token_ids  # noqa: E402
from firm_lite.prompts import MODES, render_prompt  # noqa: E402
from firm_lite.records import EditPair  # noqa: E402
from firm_lite.remote import EndpointUnreachable, RemoteEngine, RemoteError, vllm_serve_command  # noqa: E402
from firm_lite.remote import http as remote_http  # noqa: E402
from firm_lite.remote.wire import RemoteResponseError  # noqa: E402
from firm_lite.settings import RemoteOptions  # noqa: E402

ANSWER_HEAD = '{\n"reasoning" : "fine",\n"score" : ['
SCORE = 4
ANSWER_TAIL = "]\n}"
PAST_THE_ANSWER = "\n\nmore"  # what the server generated after the answer closed (firm-lite cuts it)
DIGIT_LOGPROBS = [-3.0, -2.0, -1.5, -0.2, -4.0]  # at the score step, for digits 1..5
PARTIAL_DIGITS = (3, 4)  # the digits a server without logprob_token_ids has in its top log-probs


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


class FakeServer:
    """A threaded stdlib HTTP server speaking just enough of vLLM's OpenAI dialect.

    ``behaviours`` (a deque) scripts the next chat requests: ``"ok"``, ``"500"``, ``("429", s)``,
    ``("sleep", s)``, ``"malformed"``, ``"400"``; when empty, requests are answered ``"ok"``."""

    def __init__(self, tokenizer, model: str = "critic", exact: bool = True, key: str | None = None,
                 prompt_ids: list[int] | None = None, refuse_mm_kwargs: bool = False) -> None:
        self.model, self.exact, self.key, self.prompt_ids = model, exact, key, prompt_ids
        self.refuse_mm_kwargs = refuse_mm_kwargs
        self.digits = digit_token_ids(tokenizer)
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.answer_ids = encode(ANSWER_HEAD) + [self.digits[SCORE - 1]] + encode(ANSWER_TAIL)
        self.score_step = len(encode(ANSWER_HEAD))
        self.completion_ids = self.answer_ids + encode(PAST_THE_ANSWER)
        self.behaviours: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake._record(self, None)
                if not fake._authorized(self):
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                elif self.path == "/version":
                    self._send(200, {"version": "fake-0.1"})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake._record(self, body)
                if not fake._authorized(self):
                    return
                with fake.lock:
                    behaviour = fake.behaviours.popleft() if fake.behaviours else "ok"
                kind, arg = behaviour if isinstance(behaviour, tuple) else (behaviour, None)
                if kind == "sleep":
                    time.sleep(arg)
                    kind = "ok"
                if fake.refuse_mm_kwargs and "mm_processor_kwargs" in body:  # vLLM's default
                    kind = "mm-kwargs"
                if kind == "mm-kwargs":
                    self._send(400, {"error": {"message": "Per-request mm_processor_kwargs are disabled by default "
                                                          "... (parameter=mm_processor_kwargs)"}})
                    return
                if kind == "500":
                    self._send(500, {"error": {"message": "engine hiccup"}})
                elif kind == "429":
                    self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": str(arg)})
                elif kind == "400":
                    self._send(400, {"error": {"message": "This model's maximum context length is 4096 tokens. "
                                                          "However, you requested 9999 tokens."}})
                elif kind == "malformed":
                    self._send_raw(200, b'{"choices": [{"message": ')
                else:
                    self._send(200, fake.completion(body))

            def _send(self, status: int, data: dict, headers: dict | None = None) -> None:
                self._send_raw(status, json.dumps(data).encode(), headers)

            def _send_raw(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, handler, body) -> None:
        with self.lock:
            self.requests.append({"path": handler.path, "auth": handler.headers.get("Authorization"), "body": body,
                                  "t": time.monotonic()})

    def _authorized(self, handler) -> bool:
        if self.key is None or handler.headers.get("Authorization") == f"Bearer {self.key}":
            return True
        payload = json.dumps({"error": {"message": "Unauthorized"}}).encode()
        handler.send_response(401)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        return False

    def step(self, token: int, digit_logprobs: list[float]) -> dict:
        named = lambda t: f"token_id:{t}"  # noqa: E731
        tops = [{"token": named(token), "logprob": -0.1}]
        tops += [{"token": named(d), "logprob": lp} for d, lp in zip(self.digits, digit_logprobs, strict=True)
                 if d != token]
        return {"token": named(token), "logprob": -0.1, "top_logprobs": tops}

    def completion(self, body: dict) -> dict:
        exact = self.exact and body.get("logprob_token_ids") == self.digits
        ids = self.completion_ids[: body["max_tokens"]]
        steps = []
        for k, token in enumerate(ids):
            digits = DIGIT_LOGPROBS if (k == self.score_step or body["max_tokens"] == 1) else [-9.0] * 5
            if token in self.digits:  # the sampled digit's own log-probability
                digits = [lp if d != token else -0.1 for d, lp in zip(self.digits, digits, strict=True)]
            step = self.step(token, digits)
            if not exact:  # a server that ignores logprob_token_ids: top entries hold only some digits
                step["top_logprobs"] = [e for e in step["top_logprobs"] if int(e["token"][9:]) not in
                                        [d for n, d in enumerate(self.digits, 1) if n not in PARTIAL_DIGITS]]
            steps.append(step)
        data = {"id": "x", "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."},
                             "logprobs": {"content": steps}, "finish_reason": "length", "token_ids": ids}]}
        if self.prompt_ids is not None:
            data["prompt_token_ids"] = self.prompt_ids
        return data

    def chat_requests(self) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(remote_http, "BACKOFF_BASE_S", 0.01)


@pytest.fixture
def servers(tiny_critic):
    made: list[FakeServer] = []

    def make(**kwargs) -> FakeServer:
        made.append(FakeServer(tiny_critic.processor.tokenizer, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def engines(tiny_critic):
    made: list[RemoteEngine] = []

    def make(*urls: str, **options) -> RemoteEngine:
        options = {"timeout_s": 5.0, "retries": 2, "concurrency": 2, **options}
        made.append(RemoteEngine(RemoteOptions(endpoints=urls, **options), tiny_critic.processor, tiny_critic.render,
                                 tiny_critic.budget, tiny_critic.decoding))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def _items(n: int, seed: int = 0) -> list[tuple[EditPair, Image.Image, Image.Image]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        src = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
        edt = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
        out.append((EditPair(id=f"p{k}", source=src, edited=edt, instruction=f"Make thing {k} red."), src, edt))
    return out


def _pixels(data_url: str) -> np.ndarray:
    head, payload = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))


def test_request_and_answer_are_firm_lites_protocol(servers, engines, tiny_critic) -> None:
    server = servers()
    engine = engines(server.url + "/v1/")  # a base URL with /v1 and a trailing slash works too
    assert engine.served_model == "critic" and engine.probs_exact
    assert engine.provenance["probs"] == "exact" and engine.provenance["server_version"] == "fake-0.1"
    items = _items(2)
    timings: dict = {}
    out = engine.score_modes(items, timings=timings)
    want_probs = _softmax(DIGIT_LOGPROBS[:SCORE - 1] + [-0.1] + DIGIT_LOGPROBS[SCORE:])
    for mode in MODES:
        for answer in out[mode]:
            assert answer.raw == ANSWER_HEAD + str(SCORE) + ANSWER_TAIL  # cut where the answer closes
            assert (answer.score, answer.reasoning, answer.parse_ok) == (SCORE, "fine", True)
            assert answer.probs == pytest.approx(want_probs, abs=1e-12)
            assert answer.expected == pytest.approx(sum((k + 1) * p for k, p in enumerate(want_probs)))
    answer_len = len(server.answer_ids)
    assert timings["decode_tokens"] == 4 * answer_len
    assert timings["wasted_decode_tokens"] == 4 * (len(server.completion_ids) - answer_len) and timings["generate"] > 0

    sent = server.chat_requests()[1:]  # after the probe
    assert len(sent) == 4
    by_turn = {(r["body"]["messages"][0]["content"][2]["text"]): r["body"] for r in sent}
    for pair, src, edt in items:
        for mode in MODES:
            body = by_turn[render_prompt(mode, pair.instruction, pair.requirement)]
            content = body["messages"][0]["content"]
            assert [c["type"] for c in content] == ["image_url", "image_url", "text"] and len(body["messages"]) == 1
            assert np.array_equal(_pixels(content[0]["image_url"]["url"]), np.asarray(src))  # ORIGINAL first
            assert np.array_equal(_pixels(content[1]["image_url"]["url"]), np.asarray(edt))
            assert body["mm_processor_kwargs"] == tiny_critic.budget.processor_kwargs()
            assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.0, 256, 0)
            assert body["stop_token_ids"] == [1093, 1095] and body["logprob_token_ids"] == server.digits
            assert body["return_token_ids"] and body["add_generation_prompt"] and not body["continue_final_message"]
            assert body["model"] == "critic" and "top_logprobs" not in body


def test_fast_protocol_continues_the_forced_prefix(servers, engines) -> None:
    server = servers()
    engine = engines(server.url)
    out = engine.score_modes(_items(1), protocol="fast")
    want = _softmax(DIGIT_LOGPROBS)
    for mode in MODES:
        (answer,) = out[mode]
        assert answer.probs == pytest.approx(want, abs=1e-12) and answer.score == 4
        assert answer.raw == f"{FAST_ANSWER_PREFIX}4]\n}}" and answer.reasoning is None
    for request in server.chat_requests()[1:]:
        body = request["body"]
        assert body["messages"][-1] == {"role": "assistant", "content": FAST_ANSWER_PREFIX}
        assert body["continue_final_message"] and not body["add_generation_prompt"] and body["max_tokens"] == 1


def test_5xx_is_retried_then_succeeds(servers, engines, fast_backoff) -> None:
    server = servers()
    engine = engines(server.url, concurrency=1)
    server.behaviours.extend(["500", "500"])
    out = engine.score_modes(_items(1))
    assert [a.score for m in MODES for a in out[m]] == [SCORE, SCORE]
    assert len(server.chat_requests()) == 1 + 4  # probe, 2 failures, 2 answers


def test_5xx_beyond_the_retries_raises_with_the_servers_text(servers, engines, fast_backoff) -> None:
    server = servers()
    engine = engines(server.url, concurrency=1, retries=1)
    server.behaviours.extend(["500"] * 2)
    with pytest.raises(RemoteError, match="HTTP 500 after 2 tries: engine hiccup"):
        engine.score_modes(_items(1), modes=["execution"])


def test_429_waits_for_retry_after(servers, engines, fast_backoff) -> None:
    server = servers()
    engine = engines(server.url, concurrency=1)
    server.behaviours.append(("429", 1))
    out = engine.score_modes(_items(1), modes=["execution"])
    assert out["execution"][0].score == SCORE
    first, second = server.chat_requests()[1:]
    assert second["t"] - first["t"] >= 0.95  # the backoff alone would have been ~0.01 s


def test_retry_after_forms() -> None:
    assert remote_http.retry_after_s("3") == 3.0
    assert remote_http.retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert remote_http.retry_after_s("99999") == remote_http.RETRY_AFTER_MAX_S
    assert remote_http.retry_after_s("soon") is None and remote_http.retry_after_s(None) is None


def test_timeout_is_retried(servers, engines, fast_backoff) -> None:
    server = servers()
    engine = engines(server.url, concurrency=1, timeout_s=0.5)
    server.behaviours.append(("sleep", 1.5))
    out = engine.score_modes(_items(1), modes=["execution"])
    assert out["execution"][0].score == SCORE and len(server.chat_requests()) == 3


def test_timeouts_on_every_try_raise(servers, engines, fast_backoff) -> None:
    server = servers()
    engine = engines(server.url, concurrency=1, timeout_s=0.3, retries=1)
    server.behaviours.extend([("sleep", 1.0)] * 2)
    start = time.monotonic()
    with pytest.raises(EndpointUnreachable, match="ReadTimeout"):
        engine.score_modes(_items(1), modes=["execution"])
    assert time.monotonic() - start < 3


def test_connection_refused_at_start_is_one_line(engines, fast_backoff) -> None:
    with pytest.raises(UserError, match=r"http://127\.0\.0\.1:9: cannot use the server .*ConnectError") as info:
        engines("http://127.0.0.1:9")
    assert "\n" not in str(info.value)


def test_server_gone_mid_run_raises_then_fails_fast(servers, engines, fast_backoff) -> None:
    server = servers()
    engine = engines(server.url)
    assert engine.score_modes(_items(1))["execution"][0].score == SCORE
    server.stop()
    with pytest.raises(EndpointUnreachable, match="ConnectError"):
        engine.score_modes(_items(2))
    start = time.monotonic()  # marked down: the next call fails at once, not after its own retries
    with pytest.raises(EndpointUnreachable, match="no endpoint is reachable"):
        engine.score_modes(_items(1))
    assert time.monotonic() - start < 0.5


def test_malformed_answer_is_an_error_not_retried(servers, engines) -> None:
    server = servers()
    engine = engines(server.url)
    server.behaviours.append("malformed")
    with pytest.raises(RemoteResponseError, match="not a chat completion"):
        engine.score_modes(_items(1), modes=["execution"])
    assert len(server.chat_requests()) == 2


def test_400_is_not_retried_and_carries_the_message(servers, engines) -> None:
    server = servers()
    engine = engines(server.url)
    server.behaviours.append("400")
    with pytest.raises(RemoteError, match="HTTP 400 .*maximum context length is 4096 tokens") as info:
        engine.score_modes(_items(1), modes=["execution"])
    assert "\n" not in str(info.value) and len(server.chat_requests()) == 2


def test_a_failed_batch_keeps_its_answers_for_the_item_by_item_rescore(servers, engines) -> None:
    server = servers()
    engine = engines(server.url, concurrency=1)  # one slot: the 400 hits the first request (pair 0)
    server.behaviours.append("400")
    items = _items(3)
    with pytest.raises(RemoteError, match="1 of 6 requests failed, first pair p0/execution"):
        engine.score_modes(items)
    sent = len(server.chat_requests())
    server.behaviours.append("400")
    with pytest.raises(RemoteError, match="HTTP 400"):  # the guilty item alone: sent again
        engine.score_modes(items[:1])
    assert len(server.chat_requests()) == sent + 1
    for item in items[1:]:  # the others: answered from the failed batch, nothing sent
        assert engine.score_modes([item])["consistency"][0].score == SCORE
    assert len(server.chat_requests()) == sent + 1


def test_api_key_is_sent_as_bearer(servers, engines) -> None:
    server = servers(key="s3cret")
    with pytest.raises(UserError, match="refused the API key"):
        engines(server.url)
    engine = engines(server.url, api_key="s3cret")
    engine.score_modes(_items(1))
    good = [r for r in server.requests if r["auth"] == "Bearer s3cret"]
    assert len(good) >= 5 and {r["path"] for r in good} >= {"/v1/models", "/v1/chat/completions"}
    assert "s3cret" not in json.dumps(engine.provenance)


def test_endpoints_share_the_load_and_keep_a_pairs_modes_together(servers, engines) -> None:
    a, b = servers(), servers()
    engine = engines(a.url, b.url, concurrency=2)
    a.behaviours.extend([("sleep", 0.05)] * 40)  # both slow enough that neither takes everything
    b.behaviours.extend([("sleep", 0.05)] * 40)
    out = engine.score_modes(_items(12))
    assert all(s.score == SCORE for m in MODES for s in out[m])
    served = {}
    for server in (a, b):
        for r in server.chat_requests()[1:]:
            text = r["body"]["messages"][0]["content"][2]["text"]
            served.setdefault(text.split("Make thing ")[1].split(" ")[0], set()).add(server.url)
    assert len(served) == 12 and all(len(urls) == 1 for urls in served.values())  # modes on one server
    counts = [len(s.chat_requests()) - 1 for s in (a, b)]
    assert sum(counts) == 24 and min(counts) >= 4, counts


def test_without_logprob_token_ids_probabilities_are_partial(servers, engines) -> None:
    server = servers(exact=False)
    engine = engines(server.url)
    assert not engine.probs_exact and engine.provenance["probs"] == "partial-top-logprobs"
    out = engine.score_modes(_items(1))
    present = [-1.5, -0.1]  # digits 3 and the sampled 4: renormalised over what the server returned
    p3, p4 = _softmax(present)
    for mode in MODES:
        answer = out[mode][0]
        assert answer.score == SCORE and answer.probs == pytest.approx([0, 0, p3, p4, 0], abs=1e-12)
    body = server.chat_requests()[-1]["body"]
    assert body["top_logprobs"] == 20 and "logprob_token_ids" not in body


def test_endpoints_serving_different_models_are_refused(servers, engines) -> None:
    a, b = servers(model="critic"), servers(model="another")
    with pytest.raises(UserError, match="serve different models"):
        engines(a.url, b.url)


def test_a_server_rendering_another_prompt_is_refused(servers, engines) -> None:
    server = servers(prompt_ids=[1, 2, 3])
    with pytest.raises(UserError, match="the server's prompt is not firm-lite's"):
        engines(server.url)


def test_serve_command_carries_firm_lites_engine_settings(tiny_critic) -> None:
    from firm_lite.sources import tiny_critic_dir
    from firm_lite.vllm_backend.plugin import ARCHITECTURE

    cmd = vllm_serve_command(tiny_critic_dir(), tiny_critic.budget, on_cpu=True, port=8123, python="python")
    argv = cmd.argv
    flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    assert argv[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert json.loads(flag("--hf-overrides")) == {"architectures": [ARCHITECTURE]}
    assert json.loads(flag("--mm-processor-kwargs")) == tiny_critic.budget.processor_kwargs()
    assert json.loads(flag("--limit-mm-per-prompt")) == {"image": 2, "video": 0}
    assert flag("--dtype") == "float32" and flag("--port") == "8123" and "--enable-prefix-caching" in argv
    assert cmd.env == {"VLLM_USE_AOT_COMPILE": "0"} and cmd.shell().startswith("VLLM_USE_AOT_COMPILE=0 python -m")


def test_a_server_refusing_a_per_request_budget_is_held_to_it_on_every_answer(servers, engines, tiny_critic) -> None:
    server = servers(refuse_mm_kwargs=True)
    engine = engines(server.url)
    assert not engine.budget_per_request and "checked on every answer" in engine.provenance["image_budget"]
    probe, retried = server.chat_requests()
    assert "mm_processor_kwargs" in probe["body"] and "mm_processor_kwargs" not in retried["body"]
    items = _items(1)  # 80x48 images: 4 image tokens each at the tiny critic's budget
    assert tiny_critic.budget.tokens_for(80, 48) == 4
    image_pad = tiny_critic.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    server.prompt_ids = [7] + [image_pad] * 8 + [9]
    assert engine.score_modes(items)["execution"][0].score == SCORE
    assert "mm_processor_kwargs" not in server.chat_requests()[-1]["body"]
    server.prompt_ids = [7] + [image_pad] * 12 + [9]  # a server whose launch budget is another one
    with pytest.raises(RemoteError, match="12 image tokens where the critic's budget gives 8: start it with "
                                          "--mm-processor-kwargs"):
        engine.score_modes(items, modes=["execution"])
