"""Full-size speed on a GPU without the real weights: a random-weight model of the exact
Qwen3-VL-8B shape (speed does not depend on weight values) scored on synthetic 1024x1024 pairs.

Used by ``bench/gpu_8b.py``. The checkpoint is written once to a scratch folder (bf16, ~17 GB)
with the tiny critic's tokenizer and processor files, so every variant loads through the same
``load_critic`` path as the real model; the benchmark itself is :func:`firm_lite.bench.runner.bench`.
Random weights never close the JSON answer, so every row decodes ``max_new_tokens``: a worst
case for decode time, identical for every variant.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
                   "preprocessor_config.json", "video_preprocessor_config.json", "special_tokens_map.json")


def make_random_checkpoint(folder: Path, device: str = "cuda") -> Path:
    """Write a random-weight Qwen3-VL-8B-shaped checkpoint with the tiny critic's processor."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from firm_lite.sources import tiny_critic_dir

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tiny = tiny_critic_dir()
    for name in PROCESSOR_FILES:
        if (tiny / name).exists():
            shutil.copy(tiny / name, folder / name)
    tok = AutoTokenizer.from_pretrained(tiny)
    raw = json.loads((resources.files("firm_lite.configs") / "qwen3_vl_8b.json").read_text("utf-8"))
    # placeholders must be the ids this tokenizer gives them (vocab stays 151936)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        raw[key] = tok.convert_tokens_to_ids(token)
    config = Qwen3VLConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    del model
    return folder


def make_synthetic_manifest(folder: Path, pairs: int = 8, size: int = 1024, seed: int = 0) -> Path:
    """``pairs`` random-photo-like 1024x1024 edit pairs and their manifest."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(pairs):
        base = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        src = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        arr = np.asarray(src).copy()
        arr[size // 4: size // 2, size // 4: size // 2] = (240, 40, 40)
        src.save(folder / f"src{i}.jpg", quality=92)
        Image.fromarray(arr).save(folder / f"edt{i}.jpg", quality=92)
        rows.append({"id": f"syn{i}", "source": f"src{i}.jpg", "edited": f"edt{i}.jpg",
                     "instruction": "Add a red square in the upper left part of the picture."})
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return manifest


def run_gpu_bench(scratch: Path, variants: list[str], batch_sizes: list[int], pairs: int = 8,
                  image_size: int = 1024, memory_cap_gib: float | None = 24.0, max_new_tokens: int = 256,
                  out: Path = Path("bench/results"), name: str = "gpu-8b-random") -> dict[str, Any]:
    from firm_lite.bench.runner import bench
    from firm_lite.settings import CriticSettings

    ckpt = make_random_checkpoint(Path(scratch) / "qwen3-vl-8b-random")
    manifest = make_synthetic_manifest(Path(scratch) / "pairs", pairs, image_size)
    pixels = image_size * image_size
    settings = CriticSettings(model=str(ckpt), device="cuda", max_new_tokens=max_new_tokens, min_pixels=pixels,
                              max_pixels=pixels)
    return bench(settings, variants=variants, manifest=manifest, batch_sizes=batch_sizes, out=out, name=name,
                 memory_cap_gib=memory_cap_gib)
