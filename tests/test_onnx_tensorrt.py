"""``firm-lite export tensorrt`` and the TensorRT opt-in at load, without TensorRT or a GPU.

The runtime is ONNX Runtime's TensorRT provider. These tests pin down what it is given: one
explicit profile per graph sized to the batch and image size (decode-tuned), the engine cache in the
folder, the settings file the loader reads back into provider options, the refusals, and what a
load asks for and records when TensorRT does or does not start (stand-in sessions). No engine has
been built on hardware.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm_lite.errors import UserError
from firm_lite.export.onnx.tensorrt import EngineLimits, plan_profiles, prepare_tensorrt
from firm_lite.onnx.layout import EMBED_INPUTS, GRAPH_FILES, VISION_INPUTS, GraphLayout
from firm_lite.onnx.providers import CPU, CUDA, TENSORRT, TENSORRT_CACHE, TENSORRT_CONFIG, folder_tensorrt_options

LAYOUT = GraphLayout(num_layers=3, num_kv_heads=2, head_dim=8, hidden_size=32, vocab_size=100, num_deepstack=2,
                     patch_dim=1536, spatial_merge_size=2, num_grid_per_side=8, interpolation_mode="bilinear",
                     interpolation_align_corners=True, image_token_id=90, video_token_id=91)
LIMITS = EngineLimits(max_batch=6, opt_batch=2, max_image_tokens=64, max_text_tokens=100, max_new_tokens=30)


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


def test_one_decode_tuned_profile_per_graph_sized_to_the_limits():
    plan = plan_profiles(LAYOUT, LIMITS)
    assert set(plan) == set(GRAPH_FILES)
    max_prompt, max_past = 2 * 64 + 100, 2 * 64 + 100 + 30
    decoder = plan["decoder"]
    assert set(decoder) == set(LAYOUT.decoder_inputs())
    assert decoder["inputs_embeds"] == ((1, 1, 32), (2, 1, 32), (6, max_prompt, 32))  # opt: one token per row
    assert decoder["past_key.0"] == ((1, 2, 0, 8), (2, 2, max_past // 2, 8), (6, 2, max_past, 8))  # prefill: 0
    assert decoder["attention_mask"] == ((1, 1), (2, 1 + max_past // 2), (6, max_past))
    for k in range(3):
        assert decoder["deepstack_embeds"][k] == (2, *decoder["inputs_embeds"][k][:2], 32)
        assert decoder["position_ids"][k] == (3, *decoder["inputs_embeds"][k][:2])
    assert set(plan["embed"]) == set(EMBED_INPUTS) and plan["embed"]["input_ids"][2] == (6, max_prompt)
    vision = plan["vision"]
    assert set(vision) == set(VISION_INPUTS)
    assert vision["pixel_values"] == ((4, 1536), (128, 1536), (256, 1536))  # patches = 4 x image tokens
    assert vision["cu_seqlens"] == ((2,), (2,), (2,))  # one image per call


def test_default_limits_are_a_24gb_plan_not_the_processor_maximum():
    limits = EngineLimits()
    assert (limits.max_batch, limits.max_image_tokens, limits.max_new_tokens) == (4, 1024, 256)
    assert limits.max_prompt < 4096  # the old default allowed 2 x 16,384 image tokens per prompt at batch 8
    with pytest.raises(UserError):
        EngineLimits(max_batch=2, opt_batch=4)


def test_settings_are_written_and_read_back_as_provider_options(tmp_path):
    folder = onnx_folder(tmp_path)
    record = prepare_tensorrt(folder, limits=LIMITS, build=False, workspace_gb=2)
    saved = json.loads((folder / TENSORRT_CONFIG).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["engines_built"] is False and saved["verified_on_hardware"] is False
    assert (folder / TENSORRT_CACHE).is_dir()
    options = folder_tensorrt_options(folder)
    assert set(options) == set(GRAPH_FILES)
    decoder = options["decoder"]
    assert decoder["trt_engine_cache_enable"] == "True"
    assert decoder["trt_engine_cache_path"] == str(folder / TENSORRT_CACHE)
    assert decoder["trt_max_workspace_size"] == str(2 << 30) and decoder["trt_fp16_enable"] == "True"
    assert "inputs_embeds:6x228x32" in decoder["trt_profile_max_shapes"]
    assert "past_key.0:1x2x0x8" in decoder["trt_profile_min_shapes"]
    assert options["embed"]["trt_profile_opt_shapes"] == "input_ids:2x1"
    with pytest.raises(UserError, match="--overwrite"):
        prepare_tensorrt(folder, limits=LIMITS, build=False)
    prepare_tensorrt(folder, limits=EngineLimits(), build=False, overwrite=True)
    assert "input_ids:4x" in folder_tensorrt_options(folder)["embed"]["trt_profile_max_shapes"]


def test_building_here_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot build TensorRT engines here: no CUDA device") as err:
        prepare_tensorrt(onnx_folder(tmp_path), limits=LIMITS, build=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "onnx" / "tensorrt").exists()


def test_quantized_folders_are_refused(tmp_path):
    with pytest.raises(UserError, match="unquantized export"):
        prepare_tensorrt(onnx_folder(tmp_path, quantize="int4"), limits=LIMITS, build=False)


class Session:
    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return self.providers


@pytest.mark.requires_extra("onnx")
@pytest.mark.parametrize("trt_starts", [True, False])
def test_an_opted_in_folder_asks_for_tensorrt_and_records_what_ran(tmp_path, monkeypatch, capsys, trt_starts):
    import onnxruntime

    import firm_lite.device
    from firm_lite.onnx.runtime import OrtGraphs

    folder = onnx_folder(tmp_path)
    prepare_tensorrt(folder, limits=LIMITS, build=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    monkeypatch.setattr(firm_lite.device, "tensorrt_libraries_present", lambda: True)
    calls = []

    def factory(path, sess_options=None, providers=(), provider_options=()):
        calls.append((Path(path).name, list(providers), [dict(o) for o in provider_options]))
        if TENSORRT in providers and not trt_starts:
            print("*************** EP Error ***************")
            return Session([CUDA, CPU])
        return Session(list(providers))

    graphs = OrtGraphs(folder, LAYOUT, device="cuda:1", session_factory=factory, io_binding=False)
    assert capsys.readouterr().out == ""
    first = {name: (providers, options) for name, providers, options in calls if TENSORRT in providers}
    assert set(first) == set(GRAPH_FILES.values())
    _, options = first["decoder.onnx"]
    assert options[0]["device_id"] == "1" and options[0]["trt_engine_cache_path"] == str(folder / TENSORRT_CACHE)
    record = graphs.provenance
    if trt_starts:
        assert record["providers"]["decoder"] == [TENSORRT, CUDA, CPU] and record["provider_notes"] == []
    else:
        assert record["providers"]["decoder"] == [CUDA, CPU]
        assert calls[-1][1:] == ("decoder.onnx", [CUDA, CPU], [{"device_id": "1"}, {}])[1:]
        assert len(record["provider_notes"]) == 3  # one line per graph
    assert graphs.kv_device == ("cuda", 1)


@pytest.mark.requires_extra("onnx")
def test_tensorrt_opt_out_and_missing_libraries_fall_to_cuda(tmp_path, monkeypatch):
    import onnxruntime

    import firm_lite.device
    from firm_lite.onnx.runtime import OrtGraphs

    folder = onnx_folder(tmp_path)
    prepare_tensorrt(folder, limits=LIMITS, build=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    factory = lambda path, sess_options=None, providers=(), provider_options=(): Session(list(providers))  # noqa: E731
    assert OrtGraphs(folder, LAYOUT, device="cuda", tensorrt=False, session_factory=factory
                     ).provenance["providers"]["vision"] == [CUDA, CPU]
    monkeypatch.setattr(firm_lite.device, "tensorrt_libraries_present", lambda: False)
    record = OrtGraphs(folder, LAYOUT, device="cuda", session_factory=factory).provenance
    assert record["providers"]["decoder"] == [CUDA, CPU] and "pip install tensorrt" in record["provider_notes"][0]
