"""`firm-lite score` end to end on the offline tiny critic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from firm_lite.cli import main

RECORD_KEYS = {"id", "model", "variant", "image_budget", "execution", "consistency", "cme", "cme_expected", "error"}
MODE_KEYS = {"score", "expected", "probs", "reasoning", "parse_ok", "raw"}


def _run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def _manifest(folder: Path, rows: list[dict]) -> Path:
    m = folder / "pairs.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


def test_demo_pair_prints_both_modes_cme_and_probabilities(tiny_critic) -> None:
    code, out, err = _run(["score", "--model", "tiny", "--device", "cpu", "--demo"])
    assert code == 0, err
    assert "execution: score" in out and "consistency: score" in out and "P(score) 1:" in out
    assert "1 scored, 0 failed" in out


def test_single_pair_json_shape(tiny_critic, pairs_dir: Path) -> None:
    code, out, err = _run(["score", "--model", "tiny", "--device", "cpu", "--source", str(pairs_dir / "src0.png"),
                           "--edited", str(pairs_dir / "edt0.png"), "--instruction", "paint a red square", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    rec = doc["records"][0]
    assert set(rec) == RECORD_KEYS
    for mode in ("execution", "consistency"):
        assert set(rec[mode]) == MODE_KEYS
        assert rec[mode]["parse_ok"] and rec[mode]["score"] in range(1, 6)
        assert len(rec[mode]["probs"]) == 5 and abs(sum(rec[mode]["probs"]) - 1) < 1e-6
        assert 1 <= rec[mode]["expected"] <= 5
    assert rec["image_budget"]["min_pixels"] > 0 and rec["variant"]
    assert doc["summary"] == {"scored": 1, "failed": 0, "skipped": 0}
    assert doc["provenance"]["prompt_sha256"]


def test_manifest_with_corrupt_row_then_resume(tiny_critic, pairs_dir: Path) -> None:
    (pairs_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows = [{"id": f"p{i}", "source": f"src{i}.png", "edited": f"edt{i}.png", "instruction": "add a red square"}
            for i in range(3)]
    rows.insert(1, {"id": "bad", "source": "src0.png", "edited": "broken.jpg", "instruction": "x"})
    m = _manifest(pairs_dir, rows)
    out = pairs_dir / "scores.jsonl"
    code, stdout, err = _run(["score", "--model", "tiny", "--device", "cpu", "--manifest", str(m), "--out", str(out)])
    assert code == 1, err
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {r["id"]: r for r in recs}
    assert set(by_id) == {"p0", "p1", "p2", "bad"}
    assert "broken.jpg" in by_id["bad"]["error"] and by_id["bad"]["execution"] is None
    assert all(by_id[f"p{i}"]["error"] is None and by_id[f"p{i}"]["execution"]["score"] for i in range(3))
    before = out.read_text()

    code, stdout, err = _run(["score", "--model", "tiny", "--device", "cpu", "--manifest", str(m), "--out", str(out),
                              "--json"])
    assert code == 0
    assert json.loads(stdout)["summary"] == {"scored": 0, "failed": 0, "skipped": 4}
    assert out.read_text() == before  # nothing rescored, nothing truncated


def test_usage_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    code, out, err = _run(["score", "--model", "tiny", "--source", "a.png"])
    assert code == 2 and err.strip().startswith("error: missing --edited") and "Traceback" not in err
    code, out, err = _run(["score", "--model", "tiny", "--manifest", str(tmp_path / "none.jsonl")])
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    code, out, err = _run(["score", "--model", str(tmp_path / "nomodel"), "--demo"])
    assert code == 2 and "no such folder" in err
    code, out, err = _run(["score", "--model", "tiny", "--device", "tpu", "--demo"])
    assert code == 2 and "--device" in err


def test_missing_single_image_exits_1_with_error_record(tiny_critic, tmp_path: Path) -> None:
    code, out, err = _run(["score", "--model", "tiny", "--device", "cpu", "--source", str(tmp_path / "x.png"),
                           "--edited", str(tmp_path / "y.png"), "--instruction", "add a hat", "--json"])
    assert code == 1
    assert "file not found" in json.loads(out)["records"][0]["error"]


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from click.testing import CliRunner; from firm_lite.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "[CliRunner().invoke(main, [c, '--help']) for c in main.list_commands(None)]; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_hub_model_not_available_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _run(["score", "--model", "VisionXLab/FIRM-Edit-8B", "--device", "cpu", "--demo"])
    assert code == 2
    assert "VisionXLab/FIRM-Edit-8B" in err and "--model" in err and len(err.strip().splitlines()) == 1
