"""Provenance manifests: hashes verified on load, calibration verdicts recorded, atomic folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm_lite.artifact import (
    VARIANT_MANIFEST,
    check_exported_folder,
    hash_weights,
    read_variant_manifest,
    record_calibration,
    verify_weights,
    write_manifest,
)
from firm_lite.errors import UserError
from firm_lite.export.provenance import check_out_folder, staged_folder
from firm_lite.variants.registry import resolve_variant


def make_folder(folder: Path, backend: str = "gptq") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-00001.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "model-00002.safetensors").write_bytes(b"\x07" * 1000)
    (folder / "config.json").write_text("{}", "utf-8")
    write_manifest(folder, {"format": 1, "backend": backend, "weights": hash_weights(folder), "calibration": None})
    return folder


def test_intact_folder_verifies_and_resolves_to_its_backend(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "v")
    verify_weights(folder)
    spec, resolved = resolve_variant(str(folder))
    assert (spec.name, resolved) == ("gptq", folder)
    assert check_exported_folder(folder, "gptq")["backend"] == "gptq"
    with pytest.raises(UserError, match="not 'bnb'"):
        check_exported_folder(folder, "bnb")


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "v")
    path = folder / "model-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[4000] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model-00001.safetensors does not match its recorded sha256"):
        verify_weights(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model-00002.safetensors").write_bytes(b"\x07" * 999), "999 bytes, 1000 recorded"),
    (lambda f: (f / "model-00002.safetensors").unlink(), "is missing"),
    (lambda f: (f / "extra.safetensors").write_bytes(b"x"), "not in"),
])
def test_truncated_missing_or_extra_weights_are_refused(tmp_path: Path, damage, message: str) -> None:
    folder = make_folder(tmp_path / "v")
    damage(folder)
    with pytest.raises(UserError, match=message):
        verify_weights(folder)


def test_record_calibration_rewrites_only_the_manifest(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "v")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != VARIANT_MANIFEST}
    record_calibration(folder, {"passed": True, "failures": []})
    assert read_variant_manifest(folder)["calibration"] == {"passed": True, "failures": []}
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != VARIANT_MANIFEST} == before
    verify_weights(folder)  # the verdict does not invalidate the weights
    assert not list(folder.glob(".*tmp"))


def test_the_calibration_gate_uses_record_calibration(tmp_path: Path) -> None:
    from firm_lite.artifact import calibration_warning
    from firm_lite.calibration.gate import record_verdict

    folder = make_folder(tmp_path / "v")
    assert "never calibrated" in calibration_warning(folder)
    record_verdict(folder, {"passed": False, "failures": ["kl too high"], "created": "2026-01-01"})
    assert "FAILED calibration" in calibration_warning(folder)


def test_staged_folder_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_folder(out) as stage:
        (stage / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    (out).mkdir()
    (out / "old.txt").write_text("old")
    with staged_folder(out) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_out_folder_rules(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    assert check_out_folder(tmp_path / "new", overwrite=False) == (tmp_path / "new").resolve()
    with pytest.raises(UserError, match="pass --overwrite"):
        check_out_folder(src, overwrite=False)
    with pytest.raises(UserError, match="source model folder"):
        check_out_folder(src, overwrite=True, source=src)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        check_out_folder(tmp_path / "file", overwrite=True)


def test_a_folder_without_manifest_is_not_a_variant(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="not an exported variant folder"):
        resolve_variant(str(tmp_path / "x"))
    manifest = json.loads((make_folder(tmp_path / "v") / VARIANT_MANIFEST).read_text())
    assert manifest["calibration"] is None
