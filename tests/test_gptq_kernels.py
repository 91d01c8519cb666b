"""GPTQ on CUDA: the kernel is chosen from what the machine reports, and a kernel that cannot be
built or used hands over to the next one with one line saying so. The choice is tested with the
machine's report faked; the hand-over runs for real on CPU, where Marlin cannot load."""

from __future__ import annotations

import logging

import pytest

from firm_lite.device import CudaDevice, MachineReport
from firm_lite.errors import UserError
from firm_lite.variants.gptq import MARLIN, TORCH, TRITON, gptq_kernel_plan, load_first_working


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    """A random-weight checkpoint of the tiny critic's shape and its random GPTQ w4 copy."""
    import json

    from firm_lite.bench.synthetic import make_random_checkpoint, make_random_gptq_checkpoint
    from firm_lite.sources import tiny_critic_dir

    root = tmp_path_factory.mktemp("random")
    config = json.loads((tiny_critic_dir() / "config.json").read_text("utf-8"))
    ckpt = make_random_checkpoint(root / "bf16", device="cpu", config=config, in_subprocess=False)
    return ckpt, make_random_gptq_checkpoint(ckpt, root / "gptq")


def report(capability: tuple[int, int], nvcc: bool = True, triton: bool = True, vllm: bool = False) -> MachineReport:
    return MachineReport(cuda=(CudaDevice(0, "fake", capability, 24 << 30),), nvcc="/usr/bin/nvcc" if nvcc else None,
                         triton=triton, vllm=vllm)


def kernels(rep: MachineReport, dtype: str) -> list[str]:
    return [k for k, _ in gptq_kernel_plan(rep, 0, dtype)[0]]


def test_ampere_with_a_compiler_tries_marlin_first() -> None:
    assert kernels(report((8, 6)), "bf16") == [MARLIN, TRITON, TORCH]
    assert kernels(report((9, 0)), "bf16") == [MARLIN, TRITON, TORCH]


def test_without_nvcc_no_kernel_needs_building() -> None:
    plan, notes = gptq_kernel_plan(report((8, 9), nvcc=False), 0, "bf16")
    assert [k for k, _ in plan] == [TRITON, TORCH]
    assert any("no nvcc" in n for n in notes)
    assert kernels(report((8, 9), nvcc=False, triton=False), "bf16") == [TORCH]


def test_turing_gets_marlin_only_in_fp16() -> None:
    assert kernels(report((7, 5)), "fp16") == [MARLIN, TRITON, TORCH]
    plan, notes = gptq_kernel_plan(report((7, 5)), 0, "bf16")
    assert [k for k, _ in plan] == [TRITON, TORCH] and "7.5 with bf16" in notes[0]
    assert kernels(report((7, 0)), "fp16") == [TORCH]  # Volta: neither Marlin nor Triton's GPTQ kernel


def test_vllm_installed_points_to_its_precompiled_marlin() -> None:
    _, notes = gptq_kernel_plan(report((8, 0), vllm=True), 0, "bf16")
    assert any("precompiled gptq_marlin" in n for n in notes)


def test_a_failed_kernel_hands_over_with_one_line(caplog) -> None:
    released = []

    def load(kernel: str) -> str:
        if kernel == MARLIN:
            raise RuntimeError("Error building extension 'marlin_bf16'\nnvcc fatal: unsupported gpu architecture")
        return f"model via {kernel}"

    with caplog.at_level(logging.WARNING, logger="firm_lite.variants.gptq"):
        model, kernel, failures = load_first_working(gptq_kernel_plan(report((8, 6)), 0, "bf16")[0], load,
                                                     lambda: released.append(1))
    assert (model, kernel) == ("model via gptq_triton", TRITON)
    assert failures == [{"kernel": MARLIN, "error": "RuntimeError: Error building extension 'marlin_bf16'"}]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["GPTQ kernel gptq_marlin unavailable (RuntimeError: Error building extension 'marlin_bf16'); "
                     "using gptq_triton instead"]
    assert released == [1]


def test_no_working_kernel_is_one_user_error() -> None:
    def load(kernel: str) -> None:
        raise ImportError(f"{kernel} missing")

    with pytest.raises(UserError, match="no GPTQ kernel could load") as err:
        load_first_working([(MARLIN, ""), (TORCH, "")], load)
    assert "\n" not in str(err.value)


def test_a_programming_error_is_not_taken_for_a_missing_kernel() -> None:
    def load(kernel: str) -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        load_first_working([(MARLIN, ""), (TORCH, "")], load)


@pytest.mark.requires_extra("gptq")
def test_marlin_refused_on_cpu_falls_back_for_real(random_tiny) -> None:
    """A random-weight GPTQ checkpoint in the standard layout, loaded by gptqmodel with Marlin
    first: Marlin cannot load on CPU, the torch kernel then does, and the record says so."""
    import torch

    from firm_lite.critic import Critic
    from firm_lite.data import demo_pair
    from firm_lite.images import ImageBudget
    from firm_lite.sources import resolve_model
    from firm_lite.variants.registry import LoadRequest, backend_record, registry

    ckpt, gptq = random_tiny
    request = LoadRequest(source=resolve_model(str(ckpt)), device=torch.device("cpu"), dtype=torch.bfloat16,
                          folder=gptq, options={"gptq_kernels": [MARLIN, TORCH]})
    model, processor = registry()["gptq"].load(request)
    record = backend_record(model)
    assert record["gptq_kernel"] == TORCH and record["failed_kernels"][0]["kernel"] == MARLIN
    critic = Critic(model=model, processor=processor, model_id="random", variant="gptq", device=torch.device("cpu"),
                    budget=ImageBudget.from_processor(processor))
    critic.decoding = critic.decoding.__class__(max_new_tokens=4)
    record = critic.score([demo_pair()])[0]
    assert record["execution"] is not None and record["error"] is None  # random weights: any answer, no crash
