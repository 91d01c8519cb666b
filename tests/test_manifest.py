"""Manifests in, result files out: bad lines are recorded, files are only appended to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm_lite.errors import ManifestError
from firm_lite.manifest import ResultWriter, read_manifest, read_results


def test_rows_aliases_relative_paths_and_errors(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    lines = [
        json.dumps({"id": "a", "source": "sub/s.png", "edited": "e.png", "instruction": "x"}),
        json.dumps({"id": "b", "image": "/abs/s.png", "edited": "e.png", "prompt": "y", "labels": {"execution": 5}}),
        "{not json",
        json.dumps({"id": "c", "source": "s.png", "edited": "e.png"}),
        json.dumps({"id": "a", "source": "s.png", "edited": "e.png", "instruction": "dup"}),
        json.dumps(["a", "list"]),
        "",
        "# a comment",
        json.dumps({"id": 7, "source": "", "edited": "e.png", "instruction": "z"}),
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(lines) + "\n")
    rows = list(read_manifest(m))
    assert [r.id for r in rows] == ["a", "b", "line-3", "c", "a", "line-6", "7"]
    assert rows[0].pair.source == tmp_path / "sub/s.png"
    assert rows[1].pair.source == Path("/abs/s.png") and rows[1].pair.instruction == "y"
    assert rows[1].extra == {"labels": {"execution": 5}}
    assert "not valid JSON" in rows[2].error and ":3:" in rows[2].error
    assert "instruction" in rows[3].error
    assert "duplicate id" in rows[4].error
    assert "JSON object" in rows[5].error
    assert "source" in rows[6].error


def test_missing_manifest_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        list(read_manifest(tmp_path / "none.jsonl"))


def test_writer_appends_and_repairs_partial_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "old", "error": None}) + "\n" + '{"id": "half')  # crash mid-write
    with ResultWriter(out) as w:
        w.write({"id": "new", "error": None})
    text = out.read_text()
    assert text.startswith(json.dumps({"id": "old", "error": None}))  # never truncated
    assert set(read_results(out)) == {"old", "new"}
