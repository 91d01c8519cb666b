"""Cluster options that cannot work are refused in one line before anything starts (no Ray session
needed), and replicas' metrics add up by hand-checked rules."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from firm_lite.cli import main
from firm_lite.server.metrics import ServerMetrics, combine_snapshots


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_replicas_or_workers_without_ray_installed_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as on a machine without it
    line = _one_line_error(["serve", "--model", "tiny", "--replicas", "2"])
    assert "needs Ray" in line and 'pip install "firm-lite[ray]"' in line
    (tmp_path / "m.jsonl").write_text("")
    line = _one_line_error(["score", "--model", "tiny", "--manifest", str(tmp_path / "m.jsonl"), "--workers", "2",
                            "--out", str(tmp_path / "out")])
    assert 'pip install "firm-lite[ray]"' in line


def test_ray_http_binding_follows_the_token_rule() -> None:
    line = _one_line_error(["serve", "--model", "tiny", "--ray", "--host", "0.0.0.0"])
    assert "--host 0.0.0.0 can be reached from other machines: pass --token" in line
    assert "Ray's proxy needs a fixed port" in _one_line_error(["serve", "--model", "tiny", "--ray", "--port", "0"])


def test_an_address_where_nothing_listens_is_one_line_in_seconds(tmp_path) -> None:
    pytest.importorskip("ray")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "source": "s.png", "edited": "e.png", "instruction": "x"}\n')
    with __import__("socket").socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = _one_line_error(["score", "--model", "tiny", "--manifest", str(tmp_path / "m.jsonl"), "--out",
                            str(tmp_path / "out"), "--ray", f"127.0.0.1:{port}"])
    assert f"--ray 127.0.0.1:{port}: nothing answers there" in line and "ray start --head" in line
    line = _one_line_error(["serve", "--model", "tiny", "--ray", "no-such-host.invalid:6379", "--port", str(port)])
    assert "cannot resolve host 'no-such-host.invalid'" in line
    assert "expected auto, local, HOST:PORT" in _one_line_error(["serve", "--model", "tiny", "--ray", "head-node"])


def test_replica_snapshots_add_up() -> None:
    from firm_lite.records import ModeScore

    a, b = ServerMetrics(), ServerMetrics()
    ok = ModeScore(4, 3.9, [0.1, 0.1, 0.1, 0.2, 0.5], "r", True, "{}")
    a.batch_done([{"execution": ok}] * 4, 0.5)
    a.request_done("/mode/score_execution", 200, 0.2)
    b.batch_done([{"execution": ok}] * 2, 0.25)
    b.batch_done([{"execution": ModeScore(None, None, None, None, False, "?")}], 0.1)
    b.request_done("/mode/score_execution", 200, 0.9)
    b.request_done("/mode/score_execution", 503, 0.01)
    b.count("rejected_queue_full")
    b.note_depth(7)
    total = combine_snapshots([a.snapshot(), b.snapshot()])
    assert total["items"] == {"total": 7, "execution": 7}
    assert total["parse_failures"]["total"] == 1
    assert total["batches"]["count"] == 3 and total["batches"]["size_histogram"] == {"4": 1, "2": 1, "1": 1}
    assert total["batches"]["mean_size"] == pytest.approx(7 / 3)
    assert total["requests"] == {"total": 3, "by_route_status": {"/mode/score_execution": {"200": 2, "503": 1}}}
    assert total["latency"]["/mode/score_execution"]["count"] == 3
    assert total["latency"]["/mode/score_execution"]["max_s"] == pytest.approx(0.9)  # the worst replica's
    assert total["queue"]["max_depth"] == 7 and total["queue"]["rejected_full"] == 1
    assert combine_snapshots([a.snapshot()])["items"] == a.snapshot()["items"]
