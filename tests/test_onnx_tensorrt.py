"""``firm-lite export tensorrt`` up to the builder call, with a fake ``tensorrt`` module.

TensorRT cannot be installed here, so these tests pin down everything around it: which graphs
are built, every optimization profile (each input's min/opt/max shape), builder flags, the file
layout and manifest, and the one-line errors. The real build is not verified on hardware.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from firm_lite.errors import UserError
from firm_lite.export.onnx.tensorrt import ENGINE_MANIFEST, EngineLimits, build_tensorrt, plan_profiles
from firm_lite.onnx.layout import EMBED_INPUTS, GRAPH_FILES, VISION_INPUTS, GraphLayout

LAYOUT = GraphLayout(num_layers=3, num_kv_heads=2, head_dim=8, hidden_size=32, vocab_size=100, num_deepstack=2,
                     patch_dim=1536, spatial_merge_size=2, num_grid_per_side=8, interpolation_mode="bilinear",
                     interpolation_align_corners=True, image_token_id=90, video_token_id=91)
LIMITS = EngineLimits(max_batch=6, opt_batch=2, max_image_tokens=64, max_text_tokens=100, max_new_tokens=30)
INPUTS = {"embed.onnx": list(EMBED_INPUTS), "vision.onnx": list(VISION_INPUTS),
          "decoder.onnx": LAYOUT.decoder_inputs()}


def fake_tensorrt(calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self):
            self.inputs: list[str] = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return Tensor(self.inputs[i])

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.inputs = INPUTS[Path(path).name]
            calls.append(("parse", Path(path).name))
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools = [], [], {}

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", list(network.inputs), config))
            return b"engine:" + ",".join(network.inputs).encode()

    trt.Logger, trt.OnnxParser, trt.Builder = Logger, OnnxParser, Builder
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    return trt


def onnx_folder(root: Path, quantize: str = "none") -> Path:
    folder = root / "onnx"
    folder.mkdir()
    for file in GRAPH_FILES.values():
        (folder / file).write_bytes(b"graph")
    manifest = {"format": 1, "backend": "onnx", "recipe": {"quantize": quantize}, "source": {"model_id": "x"},
                "onnx": {"layout_version": 1, "layout": LAYOUT.as_record()},
                "weights": {f: {"sha256": "0" * 64, "bytes": 5} for f in GRAPH_FILES.values()}}
    (folder / "firm_lite_variant.json").write_text(json.dumps(manifest))
    return folder


def test_profiles_cover_prefill_decode_and_vision():
    plan = plan_profiles(LAYOUT, LIMITS)
    assert [n for n, _ in plan["decoder"]] == ["prefill", "decode"]
    assert [n for n, _ in plan["embed"]] == ["prefill", "decode"]
    prefill, decode = dict(plan["decoder"])["prefill"], dict(plan["decoder"])["decode"]
    max_prompt = 2 * 64 + 100
    assert prefill["inputs_embeds"] == ((1, 1, 32), (2, max_prompt // 2, 32), (6, max_prompt, 32))
    assert prefill["past_key.0"] == ((1, 2, 0, 8), (2, 2, 0, 8), (6, 2, 0, 8))  # prefill: empty cache
    assert decode["inputs_embeds"] == ((1, 1, 32), (2, 1, 32), (6, 1, 32))  # one token per row
    assert decode["past_value.2"][2] == (6, 2, max_prompt + 30, 8)
    for profile in (prefill, decode):
        assert set(profile) == set(LAYOUT.decoder_inputs())
        for k in range(3):  # the mask spans past + new tokens at min, opt and max
            assert profile["attention_mask"][k][1] == profile["inputs_embeds"][k][1] + profile["past_key.0"][k][2]
            assert profile["deepstack_embeds"][k] == (2, *profile["inputs_embeds"][k][:2], 32)
            assert profile["position_ids"][k] == (3, *profile["inputs_embeds"][k][:2])
    vision = dict(plan["vision"])["image"]
    assert set(vision) == set(VISION_INPUTS)
    assert vision["pixel_values"] == ((4, 1536), (128, 1536), (256, 1536))  # patches = 4 x image tokens
    assert vision["cu_seqlens"] == ((2,), (2,), (2,))  # one image per call


def test_builds_one_engine_per_graph_with_fp16_and_profiles(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    folder = onnx_folder(tmp_path)
    record = build_tensorrt(folder, limits=LIMITS, workspace_gb=2)
    out = folder / "tensorrt"
    assert sorted(p.name for p in out.iterdir()) == sorted(["embed.engine", "vision.engine", "decoder.engine",
                                                             ENGINE_MANIFEST])
    assert [c[1] for c in calls if c[0] == "parse"] == list(GRAPH_FILES.values())
    assert all(c[1] == 0 for c in calls if c[0] == "network_flags")  # TensorRT 10: explicit batch is implicit
    builds = {tuple(c[1]): c[2] for c in calls if c[0] == "build"}
    decoder_config = builds[tuple(LAYOUT.decoder_inputs())]
    assert decoder_config.flags == ["FP16"] and decoder_config.pools == {"WORKSPACE": 2 << 30}
    assert len(decoder_config.profiles) == 2 and len(builds[tuple(VISION_INPUTS)].profiles) == 1
    assert decoder_config.profiles[1].shapes["inputs_embeds"][2] == (6, 1, 32)
    saved = json.loads((out / ENGINE_MANIFEST).read_text())
    assert saved["verified_on_hardware"] is False and saved["fp16"] is True
    assert saved["engines"]["decoder"]["profiles"][0]["name"] == "prefill"
    assert saved == json.loads(json.dumps(record))
    with pytest.raises(UserError, match="not empty"):
        build_tensorrt(folder, limits=LIMITS)


def test_missing_tensorrt_is_one_line_with_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(UserError, match="pip install tensorrt") as err:
        build_tensorrt(onnx_folder(tmp_path), limits=LIMITS)
    assert "\n" not in str(err.value)


def test_quantized_folders_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([]))
    with pytest.raises(UserError, match="unquantized export"):
        build_tensorrt(onnx_folder(tmp_path, quantize="int4"), limits=LIMITS)
