"""Full-size speed on a GPU without the real weights: random-weight checkpoints of the exact
Qwen3-VL-8B shape (speed does not depend on weight values) scored on synthetic 1024x1024 pairs.

Used by ``bench/gpu_8b.py`` and ``bench/gpu_check.py``. Three rules keep a 24 GB card usable:

- the random model is built **in a child process** (on CUDA when asked, directly in bf16), so
  its ~17 GB and the caching allocator that held them are returned to the driver when the child
  exits; the parent, which then starts one bench worker per variant, never touches CUDA;
- a checkpoint is written into a hidden staging folder, gets a completion record
  (``firm_lite_random.json``: config hash and every file's size) last, and is renamed into place:
  a half-written folder is never reused, and a folder whose files no longer match is rebuilt;
- the GPTQ variant is written directly in the standard GPTQ layout (random ``qweight``, fixed
  zero points, small random scales) from the random bf16 checkpoint: no calibration, seconds
  instead of an hour, and the same tensors transformers and vLLM load from a real export.

Random weights never close the JSON answer, so every row decodes ``max_new_tokens``: a worst case
for decode time, identical for every variant.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
                   "preprocessor_config.json", "video_preprocessor_config.json", "special_tokens_map.json")
DONE = "firm_lite_random.json"  # written last: its presence (and matching sizes) means complete
SHARD_BYTES = 2 << 30
GPTQ_ZERO_4BIT = 0x77777777  # symmetric 4-bit: zero point 8, stored minus one in every nibble (GPTQ v1)


def shipped_8b_config() -> dict[str, Any]:
    return json.loads((resources.files("firm_lite.configs") / "qwen3_vl_8b.json").read_text("utf-8"))


def _config_sha(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def checkpoint_complete(folder: Path, config: dict[str, Any] | None = None) -> bool:
    """A folder holds a finished random checkpoint (of ``config``, when given): its completion
    record exists and every file it lists has the recorded size."""
    record_path = Path(folder) / DONE
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    if config is not None and record.get("config_sha256") != _config_sha(config):
        return False
    files = record.get("files") or {}
    return bool(files) and all((Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == size
                               for name, size in files.items())


def _finish(stage: Path, folder: Path, record: dict[str, Any]) -> Path:
    """Record every file's size, then move the staged folder into place (replacing a stale one)."""
    record["files"] = {p.name: p.stat().st_size for p in sorted(stage.iterdir()) if p.is_file()}
    (stage / DONE).write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    stage.rename(folder)
    return folder


def _stage_for(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"


def make_random_checkpoint(folder: Path, device: str = "cuda", config: dict[str, Any] | None = None,
                           in_subprocess: bool = True) -> Path:
    """A random-weight Qwen3-VL checkpoint (``config``: the shipped 8B shape by default) with the
    tiny critic's tokenizer and processor, at ``folder``; reused only when complete. Built in a
    child process unless ``in_subprocess`` is False (tests, CPU)."""
    folder = Path(folder)
    config = config or shipped_8b_config()
    if checkpoint_complete(folder, config):
        return folder
    stage = _stage_for(folder)
    try:
        if in_subprocess:
            stage.mkdir()
            (stage / "requested_config.json").write_text(json.dumps(config), "utf-8")
            subprocess.run([sys.executable, "-m", "firm_lite.bench.synthetic", str(stage), device], check=True)
            (stage / "requested_config.json").unlink()
        else:
            build_random_checkpoint(stage, device, config)
        return _finish(stage, folder, {"kind": "random bf16", "config_sha256": _config_sha(config)})
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def build_random_checkpoint(out: Path, device: str, config: dict[str, Any]) -> None:
    """The child's work: build the model directly in bf16 on ``device`` and save it to ``out``."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from firm_lite.sources import tiny_critic_dir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = tiny_critic_dir()
    for name in PROCESSOR_FILES:
        if (tiny / name).exists():
            shutil.copy(tiny / name, out / name)
    tok = AutoTokenizer.from_pretrained(tiny)
    raw = dict(config)
    # placeholders must be the ids this tokenizer gives them (the vocabulary size is the config's)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        raw[key] = tok.convert_tokens_to_ids(token)
    qconfig = Qwen3VLConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(qconfig, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, max_shard_size="2GB")


# ---- a GPTQ checkpoint with random integer weights ---------------------------------------------

def _group_size(in_features: list[int], requested: int) -> int:
    """The recipe's group size, or the largest power of two below it dividing every input width
    (what ``firm-lite export gptq`` does on small models)."""
    size = requested
    while size > 8 and any(n % size for n in in_features):
        size //= 2
    return size


def _shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def make_random_gptq_checkpoint(bf16_folder: Path, folder: Path, recipe_name: str = "gptq-w4-g128",
                                seed: int = 0) -> Path:
    """A GPTQ checkpoint at ``folder`` holding ``bf16_folder``'s tensors, with every Linear of the
    recipe's quantized groups replaced by random GPTQ tensors, plus a firm-lite variant manifest
    (so it loads through the ``gptq`` backend like an export). Reused only when complete."""
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from firm_lite.artifact import hash_weights, now_iso, write_manifest
    from firm_lite.recipes import MODULE_GROUPS, load_recipe

    bf16_folder, folder = Path(bf16_folder), Path(folder)
    recipe = load_recipe(recipe_name)
    config = json.loads((bf16_folder / "config.json").read_text("utf-8"))
    identity = {"source": _config_sha(config), "recipe": recipe.name, "seed": seed}
    if checkpoint_complete(folder) and json.loads((folder / DONE).read_text("utf-8")).get("identity") == identity:
        return folder
    prefixes = tuple(MODULE_GROUPS[g] + "." for g in recipe.quantize)
    handles = [safe_open(str(p), "pt") for p in _shards(bf16_folder)]
    quantized = {k: h for h in handles for k in h.keys()
                 if k.startswith(prefixes) and k.endswith(".weight") and len(h.get_slice(k).get_shape()) == 2}
    group = _group_size([h.get_slice(k).get_shape()[1] for k, h in quantized.items()], recipe.group_size or 128)
    bits, pack = recipe.bits, 32 // recipe.bits
    rng = np.random.default_rng(seed)
    stage = _stage_for(folder)
    stage.mkdir()
    try:
        weight_map: dict[str, str] = {}
        shard: dict[str, Any] = {}

        def flush() -> None:
            name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(stage / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard.clear()

        for handle in handles:
            for key in handle.keys():
                if key in quantized:
                    out_f, in_f = handle.get_slice(key).get_shape()
                    base, groups = key[: -len(".weight")], math.ceil(in_f / group)
                    words = rng.integers(0, 2**32, size=(in_f // pack, out_f), dtype=np.uint32)
                    shard[base + ".qweight"] = torch.from_numpy(words.view(np.int32))
                    shard[base + ".qzeros"] = torch.full((groups, out_f * bits // 32), GPTQ_ZERO_4BIT if bits == 4
                                                         else 0x7F7F7F7F, dtype=torch.int32)
                    scales = rng.uniform(0.002, 0.006, size=(groups, out_f)).astype(np.float16)
                    shard[base + ".scales"] = torch.from_numpy(scales)
                    shard[base + ".g_idx"] = torch.arange(in_f, dtype=torch.int32) // group
                elif key.endswith(".bias") and key[: -len(".bias")] + ".weight" in quantized:
                    shard[key] = handle.get_tensor(key).to(torch.float16)
                else:
                    shard[key] = handle.get_tensor(key)
                if sum(t.numel() * t.element_size() for t in shard.values()) >= SHARD_BYTES:
                    flush()
        if shard:
            flush()
        (stage / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}),
                                                            "utf-8")
        for item in bf16_folder.iterdir():
            if item.is_file() and not item.name.endswith(".safetensors") and item.name not in (
                    DONE, "model.safetensors.index.json", "config.json"):
                shutil.copy2(item, stage / item.name)
        qconfig = {"bits": bits, "group_size": group, "desc_act": False, "sym": True, "lm_head": False,
                   "quant_method": "gptq", "checkpoint_format": "gptq", "format": "gptq", "method": "gptq",
                   "pack_dtype": "int32", "meta": {"quantizer": ["firm-lite random weights"]}}
        (stage / "config.json").write_text(json.dumps({**config, "quantization_config": qconfig}, indent=1), "utf-8")
        (stage / "quantize_config.json").write_text(json.dumps(qconfig, indent=1), "utf-8")
        write_manifest(stage, {"format": 1, "backend": "gptq", "variant": recipe.name, "created": now_iso(),
                               "source": {"model_id": f"random weights ({bf16_folder.name})", "revision": None},
                               "recipe": {"name": recipe.name, "settings": recipe.settings()},
                               "bits": bits, "group_size": group, "quantized": list(recipe.quantize),
                               "kept": list(recipe.keep), "weights": hash_weights(stage), "calibration": None,
                               "note": "random integer weights for speed and memory measurements only"})
        return _finish(stage, folder, {"kind": "random gptq", "identity": identity})
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def make_synthetic_manifest(folder: Path, pairs: int = 8, size: int = 1024, seed: int = 0) -> Path:
    """``pairs`` random-photo-like ``size`` x ``size`` edit pairs and their manifest."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(pairs):
        base = rng.integers(0, 255, (max(1, size // 16), max(1, size // 16), 3), dtype=np.uint8)
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
                  out: Path = Path("bench/results"), name: str = "gpu-8b-random", device: str = "cuda",
                  config: dict[str, Any] | None = None, timeout_s: int = 3600) -> dict[str, Any]:
    """Bench ``variants`` of a random-weight checkpoint (``gptq`` = a random GPTQ w4 folder)."""
    from firm_lite.bench.runner import bench
    from firm_lite.settings import CriticSettings

    scratch = Path(scratch)
    ckpt = make_random_checkpoint(scratch / "qwen3-vl-random", device=device, config=config)
    names = [str(make_random_gptq_checkpoint(ckpt, scratch / "qwen3-vl-random-gptq-w4")) if v == "gptq" else v
             for v in variants]
    manifest = make_synthetic_manifest(scratch / "pairs", pairs, image_size)
    pixels = image_size * image_size
    settings = CriticSettings(model=str(ckpt), device=device, max_new_tokens=max_new_tokens, min_pixels=pixels,
                              max_pixels=pixels, memory_cap_gib=memory_cap_gib)
    return bench(settings, variants=names, manifest=manifest, batch_sizes=batch_sizes, out=out, name=name,
                 timeout_s=timeout_s)


def main(argv: list[str] | None = None) -> None:
    """``python -m firm_lite.bench.synthetic STAGE DEVICE``: the child that builds a checkpoint."""
    stage, device = (sys.argv[1:] if argv is None else argv)[:2]
    config = json.loads((Path(stage) / "requested_config.json").read_text("utf-8"))
    build_random_checkpoint(Path(stage), device, config)


if __name__ == "__main__":
    main()
