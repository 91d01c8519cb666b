"""The random-weight checkpoints of the GPU benchmark: a half-written folder is never reused, a
finished one is, a failed build leaves nothing behind, and the random GPTQ copy is a standard GPTQ
checkpoint (the layout ``firm-lite export gptq`` writes) that the ``gptq`` backend verifies and
loads. Built here at the tiny critic's shape on CPU; on a GPU the same code builds the 8B shape in
a child process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import firm_lite.bench.synthetic as synthetic
from firm_lite.bench.synthetic import DONE, checkpoint_complete, make_random_checkpoint, make_random_gptq_checkpoint


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    from firm_lite.sources import tiny_critic_dir

    return json.loads((tiny_critic_dir() / "config.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_config) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("rand") / "ckpt", device="cpu", config=tiny_config,
                                  in_subprocess=False)


def test_half_written_folder_is_rebuilt_not_reused(tmp_path: Path, tiny_config, monkeypatch) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config))  # what the old check looked for
    (folder / "model-00001-of-00004.safetensors").write_bytes(b"truncated")
    calls = []
    real = synthetic.build_random_checkpoint
    monkeypatch.setattr(synthetic, "build_random_checkpoint", lambda *a: (calls.append(a), real(*a)))
    make_random_checkpoint(folder, device="cpu", config=tiny_config, in_subprocess=False)
    assert len(calls) == 1 and checkpoint_complete(folder, tiny_config)
    assert not (folder / "model-00001-of-00004.safetensors").exists()
    make_random_checkpoint(folder, device="cpu", config=tiny_config, in_subprocess=False)
    assert len(calls) == 1  # complete: reused
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left


def test_a_truncated_or_foreign_checkpoint_is_not_complete(built: Path, tiny_config, tmp_path: Path) -> None:
    assert checkpoint_complete(built, tiny_config)
    assert not checkpoint_complete(built, {**tiny_config, "vocab_size": 12})  # another shape asked for
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in built.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    shard = next(copy.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-10])
    assert not checkpoint_complete(copy)
    (copy / DONE).write_text("{broken")
    assert not checkpoint_complete(copy)


def test_a_failed_build_leaves_nothing(tmp_path: Path, tiny_config, monkeypatch) -> None:
    def boom(out, device, config):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "config.json").write_text("{}")
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(synthetic, "build_random_checkpoint", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        make_random_checkpoint(tmp_path / "ckpt", device="cpu", config=tiny_config, in_subprocess=False)
    assert list(tmp_path.iterdir()) == []


def test_random_gptq_is_a_standard_verified_gptq_folder(built: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from firm_lite.artifact import check_exported_folder

    folder = make_random_gptq_checkpoint(built, tmp_path / "gptq")
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (config["bits"], config["quant_method"], config["sym"], config["desc_act"]) == (4, "gptq", True, False)
    assert config["group_size"] == 64  # the tiny critic's 192-wide MLP: 128 does not divide it
    manifest = check_exported_folder(folder, "gptq")  # sha256 of every shard recorded and matching
    assert manifest["calibration"] is None and "random" in manifest["note"]
    keys = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            keys.update({k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()})
    q = "model.language_model.layers.0.mlp.down_proj"
    assert keys[q + ".qweight"] == ("I32", [192 // 8, 64]) and keys[q + ".scales"] == ("F16", [3, 64])
    assert keys[q + ".qzeros"] == ("I32", [3, 8]) and keys[q + ".g_idx"] == ("I32", [192])
    assert not any(k.startswith("model.visual") and k.endswith("qweight") for k in keys)  # vision kept
    assert keys["lm_head.weight"][0] == "BF16"
    assert make_random_gptq_checkpoint(built, tmp_path / "gptq") == folder  # complete: reused
