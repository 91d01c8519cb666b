"""Shared fixtures: the offline tiny critic (loaded once per session) and small edit pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tiny critic is latency-bound: on a 2-core box, intra-op threads cost up to ~10x
    (spin-waiting against the other core's work)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_critic():
    from firm_lite.critic import load_critic

    return load_critic(model="tiny", device="cpu")


def make_pair_images(folder: Path, seed: int, size: tuple[int, int] = (96, 64)) -> tuple[Path, Path]:
    """A random photo-like image and an edited copy (a bright square painted in)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    edited = base.copy()
    edited[8:32, 8:32] = (250, 30, 30)
    src, edt = folder / f"src{seed}.png", folder / f"edt{seed}.png"
    Image.fromarray(base).save(src)
    Image.fromarray(edited).save(edt)
    return src, edt


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    # 160 px on the long side like the edit set: the tiny critic's comparison heads are fitted to
    # it, and on 96x64 noise its answers sometimes leave the format (README, *Edit set and tiny critic*)
    for seed in range(3):
        make_pair_images(tmp_path, seed, size=(160, 128))
    return tmp_path
