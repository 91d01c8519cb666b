"""Cache keying: anything that decides a result changes the key, and a stale cache is never read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm_lite.calibration.cache import (
    FingerprintMemo,
    ResultCache,
    manifest_fingerprint,
    weights_fingerprint,
)
from firm_lite.records import EditPair
from tests.conftest import make_pair_images


def test_cache_round_trip_and_isolation(tmp_path: Path) -> None:
    a = ResultCache(tmp_path, "reference-fp32", {"x": 1})
    with a.writer() as w:
        w.write({"id": "p1", "record": {"cme": 0.5}})
    assert ResultCache(tmp_path, "reference-fp32", {"x": 1}).load() == {"p1": {"id": "p1", "record": {"cme": 0.5}}}
    other = ResultCache(tmp_path, "reference-fp32", {"x": 2})
    assert other.key != a.key and other.path != a.path and other.load() == {}


def test_foreign_or_stale_file_under_the_name_is_not_read(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, "variant-nf4", {"x": 1})
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text(json.dumps({"cache_key": "0" * 64}) + "\n" + json.dumps({"id": "p1"}) + "\n")
    assert cache.load() == {}
    with cache.writer() as w:  # replaced, not appended to
        w.write({"id": "p2"})
    assert set(cache.load()) == {"p2"}


def _manifest(folder: Path, n: int = 2, instruction: str = "make the square red") -> tuple[Path, list[EditPair]]:
    pairs, lines = [], []
    for i in range(n):
        src, edt = make_pair_images(folder, i)
        pairs.append(EditPair(f"p{i}", src, edt, instruction))
        lines.append(json.dumps({"id": f"p{i}", "source": src.name, "edited": edt.name, "instruction": instruction}))
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, pairs


def test_manifest_hash_follows_text_and_image_bytes(tmp_path: Path) -> None:
    path, pairs = _manifest(tmp_path)
    first = manifest_fingerprint(path, pairs)
    assert manifest_fingerprint(path, pairs) == first
    path.write_text(path.read_text().replace("make the square red", "make the square blue"))
    second = manifest_fingerprint(path, pairs)
    assert second != first
    # same manifest text, an image re-rendered under the same name
    from PIL import Image

    Image.new("RGB", (96, 64), (1, 2, 3)).save(pairs[0].edited)
    assert manifest_fingerprint(path, pairs) != second


def test_weights_fingerprint_follows_weights_not_the_calibration_record(tmp_path: Path) -> None:
    folder = tmp_path / "variant"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "firm_lite_variant.json").write_text(json.dumps({"backend": "x"}))
    memo = FingerprintMemo(tmp_path / "fp.json")
    first = weights_fingerprint(folder, memo)
    (folder / "firm_lite_variant.json").write_text(json.dumps({"backend": "x", "calibration": {"passed": True}}))
    assert weights_fingerprint(folder, memo) == first
    (folder / "model.safetensors").write_bytes(b"abd")
    assert weights_fingerprint(folder, FingerprintMemo(tmp_path / "fp.json")) != first


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory):
    from firm_lite.calibration.collect import base_key_parts
    from firm_lite.settings import CriticSettings

    memo = FingerprintMemo(tmp_path_factory.mktemp("memo") / "fp.json")

    def parts(**kw):
        return base_key_parts(CriticSettings(model="tiny", device="cpu", **kw), 4, "m" * 64, memo)
    return parts


def test_reference_key_changes_with_prompt_budget_decoding(tiny_base, monkeypatch: pytest.MonkeyPatch) -> None:
    from firm_lite.calibration.cache import digest

    base = digest(tiny_base())
    assert digest(tiny_base()) == base  # deterministic
    assert digest(tiny_base(max_pixels=64 * 64 * 2)) != base  # image budget
    assert digest(tiny_base(max_new_tokens=32)) != base  # decoding
    monkeypatch.setattr("firm_lite.prompts.prompt_hash", lambda: "edited-prompt")
    assert digest(tiny_base()) != base  # prompt templates


def test_side_caches_are_keyed_by_manifest_variant_and_reference(tiny_base, tmp_path: Path) -> None:
    from firm_lite.calibration.collect import base_key_parts, describe_side, side_cache
    from firm_lite.settings import CriticSettings

    memo = FingerprintMemo(tmp_path / "fp.json")
    settings = CriticSettings(model="tiny", device="cpu")
    fp32 = describe_side("fp32", settings, memo)
    noisy = describe_side("noisy", settings, memo)
    one = base_key_parts(settings, 4, "a" * 64, memo)
    ref = side_cache(str(tmp_path), one, fp32)
    assert side_cache(str(tmp_path), base_key_parts(settings, 4, "b" * 64, memo), fp32).key != ref.key  # manifest
    var = side_cache(str(tmp_path), one, noisy, ref.key)
    assert var.path.name.startswith("variant-noisy-")
    assert var.key != side_cache(str(tmp_path), one, fp32, ref.key).key
    assert var.key != side_cache(str(tmp_path), one, noisy, "another-reference").key
