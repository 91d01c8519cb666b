"""What the vLLM backend refuses before starting vLLM (no vLLM needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firm_lite.errors import UserError
from firm_lite.sources import tiny_critic_dir
from firm_lite.vllm_backend.engine import check_supported, vllm_dtype


def _critic_with(tmp_path: Path, **config_changes) -> Path:
    folder = tmp_path / "critic"
    folder.mkdir()
    shutil.copy(tiny_critic_dir() / "config.json", folder / "config.json")
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_gptq_on_an_avx2_cpu_is_refused_in_one_line(tmp_path: Path, monkeypatch) -> None:
    import torch

    folder = _critic_with(tmp_path, quantization_config={"quant_method": "gptq", "bits": 4})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.raises(UserError, match=r"gptq int4 kernel on CPU needs AVX512 and this CPU has AVX2: .*--backend hf"):
        check_supported(folder, on_cpu=True)
    check_supported(folder, on_cpu=False)  # GPU: vLLM's gptq_marlin
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    check_supported(folder, on_cpu=True)


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="runs Qwen3-VL critics"):
        check_supported(_critic_with(tmp_path, architectures=["LlavaForConditionalGeneration"]), on_cpu=True)


def test_dtype_follows_firm_lites_policy() -> None:
    assert (vllm_dtype("auto", on_cpu=True), vllm_dtype("auto", on_cpu=False)) == ("float32", "bfloat16")
    assert vllm_dtype("fp16", on_cpu=False) == "float16"
    with pytest.raises(UserError, match="takes auto, fp32, bf16, fp16"):
        vllm_dtype("int8", on_cpu=True)
