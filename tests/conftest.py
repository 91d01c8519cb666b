"""Shared fixtures: the offline tiny critic (loaded once per session) and small edit pairs; the
``gpu`` and ``requires_extra`` markers.

``@pytest.mark.requires_extra("gptq", ...)`` skips a test, with the install command as the reason,
unless every named optional extra of pyproject.toml is installed (checked with ``find_spec``, so a
skipped test never pays for importing gptqmodel). A test module that imports an extra at its top
uses ``pytest.importorskip`` instead; a test that can run without the extra carries neither.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Import names that are not the distribution's name.
MODULE_OF = {"scikit-image": "skimage", "python-multipart": "multipart", "onnxruntime-gpu": "onnxruntime"}
# What the tests of an extra need besides the extra itself: the server tests are HTTP clients.
TEST_CLIENTS = {"serve": ("requests",)}


@cache
def extra_modules() -> dict[str, tuple[str, ...]]:
    """Each optional extra of pyproject.toml -> the modules its packages install (``firm-lite[x]``
    in an extra stands for the modules of extra ``x``)."""
    extras = tomllib.loads(PYPROJECT.read_text("utf-8"))["project"]["optional-dependencies"]

    def modules(extra: str) -> tuple[str, ...]:
        found: list[str] = []
        for requirement in extras[extra]:
            name, included = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", requirement).groups("")
            if name == "firm-lite":
                found += [m for x in included.split(",") for m in modules(x.strip())]
            else:
                found.append(MODULE_OF.get(name, name.replace("-", "_")))
        return tuple(dict.fromkeys(found + list(TEST_CLIENTS.get(extra, ()))))

    return {extra: modules(extra) for extra in extras}


def missing_extra(extra: str) -> str | None:
    """Why ``extra`` cannot be used here (the skip reason), or None when all of it is installed."""
    modules = extra_modules().get(extra)
    if modules is None:
        raise ValueError(f"requires_extra({extra!r}): pyproject.toml has no such extra; "
                         f"one of {', '.join(extra_modules())}")
    absent = [m for m in modules if find_spec(m) is None]
    if not absent:
        return None
    return f"needs the {extra} extra ({', '.join(absent)} not installed): pip install 'firm-lite[{extra}]'"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("requires_extra"):
            reasons = [r for r in map(missing_extra, marker.args) if r]
            if reasons:
                item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))

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
