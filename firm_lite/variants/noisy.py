"""``noisy``: the reference checkpoint with seeded Gaussian noise on its weight matrices.

A negative control for calibration: a variant that is damaged on purpose and by a known amount
must fail the drift gate, and the harness must name where it diverges. Every floating-point
weight with two or more dimensions gets ``N(0, (NOISE_SCALE * std(W))^2)`` noise from a CPU
generator seeded per tensor, so the damage is the same on every machine and every run. Norms and
biases are left alone (noise there mostly breaks the answer format rather than the scores).
Never use it to score.
"""

from __future__ import annotations

from typing import Any

from firm_lite.variants.registry import LoadRequest, VariantSpec, register

NOISE_SCALE = 1.0
NOISE_SEED = 1234


def add_weight_noise(model: Any, scale: float = NOISE_SCALE, seed: int = NOISE_SEED) -> int:
    """Add seeded relative Gaussian noise to ``model``'s weight matrices in place; returns how
    many tensors were touched."""
    import torch

    touched = 0
    with torch.no_grad():
        for index, (_name, param) in enumerate(sorted(model.named_parameters())):
            if not param.is_floating_point() or param.dim() < 2:
                continue
            gen = torch.Generator(device="cpu").manual_seed(seed + index)
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            std = float(param.detach().float().std())
            param.add_((noise * (scale * std)).to(device=param.device, dtype=param.dtype))
            touched += 1
    return touched


def load_noisy(request: LoadRequest) -> tuple[Any, Any]:
    from firm_lite.variants.reference import load_reference

    model, processor = load_reference(request)
    add_weight_noise(model, NOISE_SCALE, NOISE_SEED)
    return model, processor


register(VariantSpec("noisy", "noisy", f"NEGATIVE CONTROL: checkpoint at --dtype with seeded Gaussian noise "
                     f"(scale {NOISE_SCALE} x std per weight matrix, seed {NOISE_SEED}); must fail calibration",
                     load_noisy, weight_bits=32, accuracy_rank=99))
