"""Choosing a backend: settings, CLI flags and refusals that need no vLLM install (the vLLM
environment's own tests, tests/vllm, run the engines)."""

from __future__ import annotations

from dataclasses import asdict
from importlib.util import find_spec

import pytest
from click.testing import CliRunner

from firm_lite.cli import main
from firm_lite.errors import UserError
from firm_lite.settings import CriticSettings, RemoteOptions, VllmOptions, split_backend
from firm_lite.vllm_backend.parallel import rank_placements

HAS_VLLM = find_spec("vllm") is not None


def test_vllm_prefix_names_the_backend_like_fast_names_the_protocol() -> None:
    assert split_backend("vllm:fp32") == ("fp32", "vllm")
    assert split_backend("vllm:") == ("default", "vllm")
    assert split_backend("nf4", "vllm") == ("nf4", "vllm")
    assert split_backend("gptq:/some/dir") == ("gptq:/some/dir", "hf")
    key = CriticSettings(variant="vllm:bf16+fast").load_key
    assert (key.variant, key.backend, key.protocol) == ("bf16", "vllm", "full")
    # the same weights on two backends are two loaded critics
    assert CriticSettings(variant="fp32").load_key != CriticSettings(variant="vllm:fp32").load_key


def test_backend_options_are_validated_once() -> None:
    with pytest.raises(UserError, match="backend 'tgi'"):
        CriticSettings(backend="tgi")
    with pytest.raises(UserError, match="needs at least one endpoint"):
        CriticSettings(backend="remote")
    with pytest.raises(UserError, match="data parallel size must be >= 1"):
        VllmOptions(data_parallel_size=0)
    with pytest.raises(UserError, match="gpu_memory_utilization"):
        VllmOptions(gpu_memory_utilization=1.5)
    with pytest.raises(UserError, match="http"):
        RemoteOptions(endpoints=("localhost:8000",))


def test_settings_survive_a_trip_through_a_dict() -> None:
    """Ray workers get asdict(settings) and rebuild them: nested options must come back whole."""
    settings = CriticSettings(backend="vllm", vllm=VllmOptions(tensor_parallel_size=2, kv_cache_gib=3.0),
                              remote=RemoteOptions(endpoints=["http://a:1", "http://b:2"], api_key="k"))
    again = CriticSettings(**asdict(settings))
    assert again == settings
    assert again.remote.endpoints == ("http://a:1", "http://b:2")


def test_api_key_is_never_shown_or_recorded() -> None:
    remote = RemoteOptions(endpoints=("http://a:1",), api_key="s3cret")
    assert "s3cret" not in repr(remote) and "s3cret" not in repr(CriticSettings(backend="remote", remote=remote))
    assert "api_key" not in remote.as_record()


@pytest.mark.parametrize("args, message", [
    (["--tensor-parallel-size", "2"], "need --backend vllm"),
    (["--data-parallel-size", "2", "--backend", "hf"], "need --backend vllm"),
    (["--endpoint", "http://127.0.0.1:9", "--backend", "vllm"], "drop --backend vllm"),
    (["--endpoint", "127.0.0.1:9"], "must be an http(s) URL"),
    (["--endpoint", "http://127.0.0.1:9", "--variant", "nf4"], "the server decides the weights"),
])
def test_bad_backend_flags_are_one_line_errors(args, message, tmp_path) -> None:
    result = CliRunner().invoke(main, ["score", "--model", "tiny", "--demo", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("variant", ["int8", "noisy", "onnx:/nowhere"])
def test_variants_vllm_cannot_run_are_refused_before_any_engine_starts(variant) -> None:
    from firm_lite.critic import load_critic

    if variant.startswith("onnx:"):
        match = "does not run on vLLM"
    else:
        match = f"variant {variant} .* does not run on vLLM: use --backend hf"
    with pytest.raises(UserError, match=match):
        load_critic(CriticSettings(model="tiny", device="cpu", backend="vllm", variant=variant))


@pytest.mark.skipif(HAS_VLLM, reason="checks the message for a machine without vLLM")
def test_vllm_backend_without_vllm_says_how_to_install() -> None:
    result = CliRunner().invoke(main, ["score", "--model", "tiny", "--device", "cpu", "--demo", "--backend", "vllm"])
    assert result.exit_code == 2, result.output
    assert 'pip install "firm-lite[vllm]"' in result.output and "vllm_cpu_env.sh" in result.output


def test_data_parallel_ranks_get_their_own_devices() -> None:
    assert rank_placements(1, 1, on_cpu=False) == [{}]
    assert rank_placements(2, 1, on_cpu=False, visible_gpus=["0", "1", "2"]) == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    # each rank spans tensor_parallel GPUs, taken from this process's visible list
    assert rank_placements(2, 2, on_cpu=False, visible_gpus=["4", "5", "6", "7"]) == [
        {"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    with pytest.raises(UserError, match="needs 4 GPUs; 3 visible"):
        rank_placements(2, 2, on_cpu=False, visible_gpus=["0", "1", "2"])
    assert rank_placements(2, 1, on_cpu=True, cpus=[0, 1, 2, 3]) == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, {"VLLM_CPU_OMP_THREADS_BIND": "2-3"}]
    assert rank_placements(2, 1, on_cpu=True, cpus=[0, 1]) == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "1"}]
    assert rank_placements(2, 1, on_cpu=True, cpu_threads_bind="0-3|8-11") == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0-3"}, {"VLLM_CPU_OMP_THREADS_BIND": "8-11"}]
    with pytest.raises(UserError, match="one per engine"):
        rank_placements(3, 1, on_cpu=True, cpu_threads_bind="0-3|8-11")
    with pytest.raises(UserError, match="each engine needs at least one"):
        rank_placements(3, 1, on_cpu=True, cpus=[0, 1])
