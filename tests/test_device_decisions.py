"""Every accelerator decision is a pure function of what the machine reports, so a CPU box can test
what a GPU run would choose: the default dtype per compute capability, the memory a capped process
may still use, ``--variant auto`` for the batch actually run and within a cap, and peak memory from
its readings (the sampler that takes them runs here on a fake reading)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from firm_lite.device import (
    PeakMemory,
    default_dtype_name,
    resolve_dtype,
    summarize_peak,
    usable_bytes,
)
from firm_lite.errors import UserError
from firm_lite.plan import GIB, choose_variant
from firm_lite.settings import CriticSettings

GPU = torch.device("cuda", 0)  # planning and dtype decisions only: nothing touches CUDA
MODEL = "VisionXLab/FIRM-Edit-8B"


@pytest.mark.parametrize("capability, expected", [
    ((7, 5), "fp16"),  # Turing: T4, RTX 20xx (bf16 emulated, no flash attention, Marlin refuses bf16)
    ((7, 0), "fp16"),  # Volta
    ((8, 0), "bf16"), ((8, 6), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16"), ((12, 0), "bf16"),
    (None, "fp16"),  # unknown capability: the safe choice
])
def test_auto_dtype_follows_compute_capability(capability, expected) -> None:
    assert default_dtype_name("cuda", capability) == expected
    if capability is not None:
        assert resolve_dtype("auto", GPU, capability=capability) == {"fp16": torch.float16,
                                                                     "bf16": torch.bfloat16}[expected]


def test_cpu_stays_fp32_and_explicit_dtypes_win() -> None:
    assert default_dtype_name("cpu", (9, 0)) == "fp32"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", GPU, capability=(7, 5)) == torch.bfloat16  # asked for: honoured
    with pytest.raises(UserError):
        resolve_dtype("int3", GPU, capability=(8, 0))


def test_usable_memory_honours_the_process_cap() -> None:
    total = 80 * GIB
    assert usable_bytes(free=70 * GIB, total=total) == 70 * GIB
    # a 24 GiB cap (set_per_process_memory_fraction or --cap-gib) on an 80 GiB card with 2 GiB held
    assert usable_bytes(70 * GIB, total, reserved=2 * GIB, fraction=0.3) == int(0.3 * total) - 2 * GIB
    assert usable_bytes(70 * GIB, total, reserved=2 * GIB, cap_bytes=24 * GIB) == 22 * GIB
    assert usable_bytes(10 * GIB, total, cap_bytes=24 * GIB) == 10 * GIB  # the card is fuller than the cap
    assert usable_bytes(10 * GIB, total, reserved=30 * GIB, cap_bytes=24 * GIB) == 0


def test_auto_plans_for_the_batch_actually_used() -> None:
    # 24 GiB free: one 1024x1024 pair in bf16 needs ~18.7 GiB, four need ~24.4 GiB
    assert choose_variant(MODEL, GPU, free_bytes=24 * GIB, pairs=1, dtype="bf16")[0] == "bf16"
    name, reason = choose_variant(MODEL, GPU, free_bytes=24 * GIB, pairs=4, dtype="bf16")
    assert name == "int8" and "a batch of 4" in reason
    assert choose_variant(MODEL, GPU, free_bytes=16 * GIB, pairs=4, dtype="bf16")[0] == "nf4"
    with pytest.raises(UserError, match="lower --batch-size"):
        choose_variant(MODEL, GPU, free_bytes=12 * GIB, pairs=8, dtype="bf16")


def test_auto_honours_a_memory_cap() -> None:
    name, reason = choose_variant(MODEL, GPU, free_bytes=140 * GIB, pairs=4, cap_gib=24, dtype="bf16")
    assert name == "int8" and "capped at 24 GiB" in reason
    assert choose_variant(MODEL, GPU, free_bytes=140 * GIB, pairs=4, dtype="bf16")[0] == "bf16"


def test_auto_on_turing_never_picks_emulated_bf16() -> None:
    assert choose_variant(MODEL, GPU, free_bytes=40 * GIB, dtype="fp16")[0] == "fp16"
    assert choose_variant(MODEL, GPU, free_bytes=40 * GIB, dtype="bf16")[0] == "bf16"


def test_tiny_auto_load_respects_the_cap_and_the_batch(caplog) -> None:
    from firm_lite.critic import load_critic

    with pytest.raises(UserError, match=r"nothing fits .*capped at 0.001 GiB.* a batch of 4"):
        load_critic(model="tiny", variant="auto", device="cpu", memory_cap_gib=0.001)
    critic = load_critic(model="tiny", variant="auto", device="cpu", batch_size=2)
    assert critic.provenance["variant_choice"].startswith("variant auto -> fp32")
    assert "for a batch of 2" in critic.provenance["variant_choice"]


def test_batch_size_only_keys_the_cache_for_auto() -> None:
    a, b = CriticSettings(model="tiny", batch_size=1), CriticSettings(model="tiny", batch_size=8)
    assert a.load_key == b.load_key
    assert a.replace(variant="auto").load_key != b.replace(variant="auto").load_key
    with pytest.raises(UserError):
        CriticSettings(batch_size=0)
    with pytest.raises(UserError):
        CriticSettings(memory_cap_gib=0)


def test_score_plans_auto_for_its_own_batch_size(monkeypatch) -> None:
    import firm_lite.critic
    from firm_lite.data import demo_pair
    from firm_lite.scoring import score

    seen = []

    def fake_load(settings):
        seen.append(settings)
        raise UserError("stop here")

    monkeypatch.setattr(firm_lite.critic, "load_critic", fake_load)
    pair = demo_pair()
    with pytest.raises(UserError, match="stop here"):
        score(CriticSettings(model="tiny", variant="auto"), source=pair.source, edited=pair.edited,
              instruction=pair.instruction, batch_size=7)
    assert seen[0].batch_size == 7


def test_peak_is_the_larger_of_device_rise_and_torch_reserved() -> None:
    # ONNX Runtime / vLLM: torch's allocator saw nothing; the device-level rise is the truth
    ort = summarize_peak([5 * GIB, 9 * GIB, 7 * GIB], baseline=1 * GIB, torch_reserved=0, torch_allocated=0)
    assert ort["peak_bytes"] == 8 * GIB and ort["device_used_rise"] == 8 * GIB
    # torch: reserved (what the caching allocator holds) above allocated, and above a coarse sample
    pt = summarize_peak([3 * GIB], baseline=1 * GIB, torch_reserved=6 * GIB, torch_allocated=4 * GIB)
    assert pt["peak_bytes"] == 6 * GIB and pt["torch_allocated_peak"] == 4 * GIB
    assert summarize_peak([], None, None)["peak_bytes"] is None


def test_peak_sampler_catches_a_short_spike() -> None:
    level = {"bytes": 1 * GIB}
    lock = threading.Lock()

    def reader() -> int:
        with lock:
            return level["bytes"]

    with PeakMemory(torch.device("cpu"), interval_s=0.005, reader=reader, method="fake") as peak:
        time.sleep(0.03)
        with lock:
            level["bytes"] = 5 * GIB
        time.sleep(0.05)
        with lock:
            level["bytes"] = 2 * GIB
        time.sleep(0.03)
    report = peak.report()
    assert report["device_used_baseline"] == 1 * GIB and report["device_used_peak"] == 5 * GIB
    assert report["peak_bytes"] == 4 * GIB and report["samples"] >= 3 and report["method"] == "fake"


def test_cpu_peak_is_the_process_peak_rss() -> None:
    with PeakMemory(torch.device("cpu")) as peak:
        block = bytearray(64 * 2**20)
    del block
    report = peak.report()
    assert report["peak_bytes"] >= 64 * 2**20 and "RSS" in report["method"]
