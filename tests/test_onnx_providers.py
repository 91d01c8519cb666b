"""ONNX Runtime providers on a GPU machine, decided and checked without one: the choice is a pure
function of the device, the providers onnxruntime offers and whether TensorRT's libraries exist,
and the session opener is run against stand-in sessions that do what onnxruntime does when a
provider fails (print an "EP Error" banner on stdout and fall back without provider options)."""

from __future__ import annotations

import logging

import pytest

from firm_lite.errors import UserError
from firm_lite.onnx.providers import (
    CPU,
    CUDA,
    TENSORRT,
    choose_providers,
    open_session,
    shape_list,
    tensorrt_options,
)

ALL = [TENSORRT, CUDA, CPU]
TRT_OPTS = {"trt_engine_cache_enable": "True", "trt_profile_min_shapes": "input_ids:1x1"}


class Session:
    def __init__(self, providers: list[str]) -> None:
        self.providers = providers

    def get_providers(self) -> list[str]:
        return self.providers


class OnnxRuntimeLike:
    """Stands in for ``onnxruntime.InferenceSession``: ``broken`` providers fail to start; like
    onnxruntime's Python wrapper, it then prints on stdout and retries its fallback providers
    (CUDA, CPU) with no options at all."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken
        self.calls: list[tuple[list[str], list[dict]]] = []

    def __call__(self, path, sess_options=None, providers=(), provider_options=()) -> Session:
        self.calls.append((list(providers), list(provider_options)))
        working = [p for p in providers if p not in self.broken]
        if len(working) < len(providers) and TENSORRT in self.broken and TENSORRT in providers:
            print("*************** EP Error ***************")
            print(f"EP Error libnvinfer.so.10: cannot open shared object file when using {providers}")
            print("Falling back to ['CUDAExecutionProvider', 'CPUExecutionProvider'] and retrying.")
            return Session([p for p in (CUDA, CPU) if p not in self.broken])
        return Session(working)


def test_cpu_and_cuda_choices() -> None:
    assert choose_providers("cpu", ALL).providers == (CPU,)
    plan = choose_providers("cuda:1", ALL)
    assert plan.providers == (CUDA, CPU) and plan.options[0] == {"device_id": "1"}  # TensorRT is opt-in
    with pytest.raises(UserError, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_both_onnxruntimes_installed_names_the_fix() -> None:
    with pytest.raises(UserError, match="both installed") as err:
        choose_providers("cuda", [CPU], installed=("onnxruntime", "onnxruntime-gpu"))
    assert 'pip install "firm-lite[gpu]"' in str(err.value) and "\n" not in str(err.value)
    assert choose_providers("cpu", [CPU], installed=("onnxruntime", "onnxruntime-gpu")).providers == (CPU,)


def test_the_gpu_extra_replaces_the_onnx_extra() -> None:
    """[gpu] brings everything [onnx] does, with onnxruntime-gpu instead of onnxruntime, and the
    two are declared conflicting (uv) rather than installed over each other."""
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text("utf-8"))
    extras = project["project"]["optional-dependencies"]
    names = {e: {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in extras[e]} for e in ("onnx", "gpu")}
    assert names["gpu"] == names["onnx"] - {"onnxruntime"} | {"onnxruntime-gpu"}
    assert [{"extra": "onnx"}, {"extra": "gpu"}] in project["tool"]["uv"]["conflicts"]


def test_tensorrt_only_when_asked_offered_and_installed() -> None:
    plan = choose_providers("cuda:1", ALL, TRT_OPTS, tensorrt_libs=True)
    assert plan.providers == (TENSORRT, CUDA, CPU)
    assert plan.options[0] == {"device_id": "1", **TRT_OPTS} and plan.options[1] == {"device_id": "1"}
    missing_libs = choose_providers("cuda:1", ALL, TRT_OPTS, tensorrt_libs=False)
    assert missing_libs.providers == (CUDA, CPU) and "pip install tensorrt" in missing_libs.notes[0]
    no_provider = choose_providers("cuda", [CUDA, CPU], TRT_OPTS)
    assert no_provider.providers == (CUDA, CPU) and "no TensorRT provider" in no_provider.notes[0]


def test_tensorrt_failing_to_start_keeps_stdout_clean_and_the_device(tmp_path, capsys, caplog) -> None:
    ort = OnnxRuntimeLike(broken={TENSORRT})
    plan = choose_providers("cuda:1", ALL, TRT_OPTS, tensorrt_libs=True)
    with caplog.at_level(logging.WARNING):
        session, actual, notes = open_session(tmp_path / "decoder.onnx", None, plan, ort)
    assert capsys.readouterr().out == ""  # the banner went to stderr, not into `score --json`
    assert actual == [CUDA, CPU] and session.get_providers() == actual  # what ran is what is recorded
    assert ort.calls[-1] == ([CUDA, CPU], [{"device_id": "1"}, {}])  # reopened on GPU 1, not onnxruntime's GPU 0
    assert notes == ["decoder.onnx: the TensorRT provider did not start; running on CUDA device 1"]
    assert [r.getMessage() for r in caplog.records] == notes


def test_a_lost_cuda_provider_is_an_error_not_a_cpu_run(tmp_path) -> None:
    with pytest.raises(UserError, match="could not start its CUDA provider") as err:
        open_session(tmp_path / "vision.onnx", None, choose_providers("cuda", ALL), OnnxRuntimeLike(broken={CUDA}))
    assert "\n" not in str(err.value)


def test_tensorrt_profiles_become_provider_options(tmp_path) -> None:
    profile = {"input_ids": ((1, 1), (4, 1), (4, 2300)), "x": ((0,), (2,), (9,))}
    opts = tensorrt_options(profile, tmp_path / "cache", fp16=True, workspace_bytes=8 << 30)
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,x:0"
    assert opts["trt_profile_opt_shapes"] == "input_ids:4x1,x:2"
    assert opts["trt_profile_max_shapes"] == "input_ids:4x2300,x:9"
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert opts["trt_fp16_enable"] == "True" and opts["trt_max_workspace_size"] == str(8 << 30)
    assert shape_list({}) == ""
