"""The remote backend against a real vLLM OpenAI server of the tiny critic, on loopback.

The server is started once for this module with firm-lite's own server command
(:func:`firm_lite.remote.vllm_serve_command`, the in-process engine's arguments as flags) and an
API key, and stopped afterwards whatever happens (its whole process group). On the 80 held-out
pairs its answers, read by the remote client, must be the in-process vLLM engine's: the same raw
answers and integer scores, digit probabilities within 1e-3, for the full and the fast protocol.
Last, the server is stopped in the middle of a run: what was scored stays scored, and what was not
raises within the client's timeout instead of hanging.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

from firm_lite.prompts import MODES  # noqa: E402
from firm_lite.remote import RemoteEngine, RemoteError, vllm_serve_command  # noqa: E402
from firm_lite.settings import RemoteOptions  # noqa: E402

PROB_TOLERANCE = 1e-3
START_TIMEOUT_S = 600
API_KEY = "firm-lite-test-key"
SERVED_NAME = "tiny-critic"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A vLLM OpenAI server in its own process group."""

    def __init__(self, tiny_critic, log: Path) -> None:
        from firm_lite.sources import tiny_critic_dir
        from tests.vllm.conftest import engine_options

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = vllm_serve_command(tiny_critic_dir(), tiny_critic.budget, tiny_critic.decoding, dtype="fp32",
                                          options=engine_options(), on_cpu=True, port=self.port,
                                          served_model_name=SERVED_NAME, python=sys.executable)
        self.log = log
        env = {**os.environ, **self.command.env, "VLLM_API_KEY": API_KEY}
        start = time.monotonic()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(self.command.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - start

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        pytest.fail(f"the vLLM server did not start within {START_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text("utf-8", errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 30) -> None:
        """Stop the server and every process it started (engine core, workers)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        try:  # children that outlived the leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def inprocess_answers(vllm_answers):
    """The in-process engine's answers (the session's, computed before the server starts: one vLLM
    busy at a time)."""
    return vllm_answers


@pytest.fixture(scope="module")
def server(tiny_critic, inprocess_answers, tmp_path_factory):
    srv = Server(tiny_critic, tmp_path_factory.mktemp("vllm-server") / "server.log")
    print(f"\nvLLM server started in {srv.start_s:.1f} s: {srv.command.shell()}")
    try:
        yield srv
    finally:
        srv.stop()
        assert srv.proc.poll() is not None


def _engine(server: Server, tiny_critic, **options) -> RemoteEngine:
    options = {"api_key": API_KEY, "timeout_s": 120.0, "retries": 2, **options}
    return RemoteEngine(RemoteOptions(endpoints=(server.url,), **options), tiny_critic.processor,
                        tiny_critic.render, tiny_critic.budget, tiny_critic.decoding)


@pytest.fixture(scope="module")
def remote(server, tiny_critic):
    engine = _engine(server, tiny_critic)
    yield engine
    engine.close()


def _compare(items, want, got) -> tuple[list[str], list[tuple[float, str]]]:
    mismatches, worst = [], []
    for (pair, _, _), a_pair, b_pair in zip(items, want, got, strict=True):
        for mode in MODES:
            a, b = a_pair[mode], b_pair[mode]
            if (a.raw, a.score, a.parse_ok, a.reasoning) != (b.raw, b.score, b.parse_ok, b.reasoning):
                mismatches.append(f"{pair.id}/{mode}: in-process {a.score} {a.raw!r}\n    remote {b.score} {b.raw!r}")
                continue
            assert (a.probs is None) == (b.probs is None), f"{pair.id}/{mode}: read-out on one side only"
            if a.probs is not None:
                worst.append((max(abs(x - y) for x, y in zip(a.probs, b.probs, strict=True)), f"{pair.id}/{mode}"))
    return mismatches, sorted(worst, reverse=True)


def test_probe_sees_firm_lites_prompt_and_exact_probabilities(remote, server) -> None:
    assert remote.served_model == SERVED_NAME and remote.probs_exact
    record = remote.provenance
    assert record["probs"] == "exact" and record["prompt_check"] == ["token ids equal"]
    assert record["server_version"].startswith("0.32") and API_KEY not in str(record)


def test_a_wrong_key_is_refused(server, tiny_critic) -> None:
    from firm_lite.errors import UserError

    with pytest.raises(UserError, match="refused the API key"):
        _engine(server, tiny_critic, api_key="wrong")


@pytest.mark.parametrize("protocol", ["full", "fast"])
def test_heldout_answers_equal_the_inprocess_engine(protocol, remote, heldout_items, inprocess_answers) -> None:
    timings: dict = {}
    start = time.perf_counter()
    out = remote.score_modes(heldout_items, protocol=protocol, timings=timings)
    elapsed = time.perf_counter() - start
    got = [{m: out[m][k] for m in MODES} for k in range(len(heldout_items))]
    mismatches, worst = _compare(heldout_items, inprocess_answers[protocol], got)
    print(f"\nremote {protocol}: {2 * len(heldout_items)} requests in {elapsed:.1f} s, "
          f"{2 * len(heldout_items) - len(mismatches)} identical, worst prob diff {worst[0][0]:.1e} ({worst[0][1]}), "
          f"timings {timings}")
    assert not mismatches, f"{len(mismatches)} of {2 * len(heldout_items)} answers differ:\n" + "\n".join(
        mismatches[:10])
    assert worst and worst[0][0] <= PROB_TOLERANCE, f"largest digit-probability differences: {worst[:5]}"


def test_server_stopped_mid_run(server, tiny_critic, heldout_items, inprocess_answers) -> None:
    """Pairs are scored one call at a time (as a scoring run's batches); the server is stopped after
    a few: those stay scored and equal, every later call raises, none hangs."""
    timeout_s = 20.0
    engine = _engine(server, tiny_critic, timeout_s=timeout_s, retries=2)
    items = heldout_items[:24]
    results: list = []
    finished_at: list[float] = []

    def run() -> None:
        for item in items:
            try:
                out = engine.score_modes([item])
                results.append({m: out[m][0] for m in MODES})
            except Exception as exc:  # noqa: BLE001 - what a scoring run turns into an error row
                results.append(exc)
        finished_at.append(time.monotonic())

    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        while len(results) < 4 and worker.is_alive():
            time.sleep(0.05)
        server.stop()
        stopped_at = time.monotonic()
        worker.join(timeout=(engine.options.retries + 1) * timeout_s + 60)
        assert not worker.is_alive(), "scoring hung after the server stopped"
    finally:
        engine.close()
    scored = [r for r in results if not isinstance(r, Exception)]
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(results) == len(items) and len(scored) >= 4 and failed, (len(scored), len(failed))
    assert all(isinstance(r, Exception) for r in results[len(scored):]), "a pair scored after the server stopped"
    assert all(isinstance(e, RemoteError) for e in failed), {type(e).__name__ for e in failed}
    mismatches, _ = _compare(items[:len(scored)], inprocess_answers["full"][:len(scored)], scored)
    assert not mismatches, mismatches
    print(f"\nserver stopped after {len(scored)} pairs; {len(failed)} raised within "
          f"{finished_at[0] - stopped_at:.1f} s: {type(failed[0]).__name__}: {failed[0]}")
