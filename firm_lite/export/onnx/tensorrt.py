"""``firm-lite export tensorrt``: opt an ONNX folder in to ONNX Runtime's TensorRT provider.

The runtime is ONNX Runtime's TensorRT execution provider, not a separate engine loader: it runs
the folder's graphs, falls back to CUDA for anything TensorRT does not take, and keeps its built
engines in an engine cache. What this command adds is what that provider needs to be usable for
generation, written to ``DIR/tensorrt/firm_lite_tensorrt.json`` (read at load by
:mod:`firm_lite.onnx.providers`):

- **explicit optimization profiles** sized to the batch and image size you score with (not the
  processor's 16,384-token maximum): without them the provider rebuilds an engine whenever an
  input grows past the shapes it has seen, and the past length grows every decoded token. ONNX
  Runtime runs profile 0 of an engine only, so each graph gets one profile, tuned (``opt``) for
  decode: one new token per row against a half-full cache;
- **an engine and timing cache** in ``DIR/tensorrt/cache``: engines are built once (minutes for the
  8B) and loaded from the cache afterwards, as long as the graphs and profiles are unchanged;
- fp16 kernels allowed (``--fp16``, the provider's ``trt_fp16_enable``). For the 8B, export fp16
  graphs (``export onnx --dtype fp16``): half the memory, and precision then comes from the graph
  itself, which is how TensorRT 11 wants it (its ``BuilderFlag.FP16`` is gone).

On a machine with the TensorRT provider the engines are built right away (``build``), so the first
score does not wait for them; elsewhere the settings are written and the engines are built at the
first load on a GPU. Quantized folders are refused: their ``MatMulInteger``/``MatMulNBits`` ops are
ONNX Runtime's own, which TensorRT does not take.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.onnx.layout import GRAPH_FILES, GraphLayout
from firm_lite.onnx.providers import TENSORRT, TENSORRT_CACHE, TENSORRT_CONFIG

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)
FORMAT_VERSION = 2  # 1 was the stand-alone engine builder: its .engine files had no runtime


@dataclass(frozen=True)
class EngineLimits:
    """The largest request the engines must take, and the batch they are tuned for."""

    max_batch: int = 4  # rows per call: the ONNX critic runs one mode of --batch-size pairs per call
    opt_batch: int = 4
    max_image_tokens: int = 1024  # per image: 1024 at 1024x1024
    max_text_tokens: int = 1536  # prompt text around the two images (template + a 4000-character instruction)
    max_new_tokens: int = 256
    images_per_prompt: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise UserError(f"the batch to tune for must be in 1..{self.max_batch} (got {self.opt_batch})")
        for name in ("max_image_tokens", "max_text_tokens", "max_new_tokens", "images_per_prompt"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")

    @property
    def max_prompt(self) -> int:
        return self.images_per_prompt * self.max_image_tokens + self.max_text_tokens

    @property
    def max_past(self) -> int:
        return self.max_prompt + self.max_new_tokens


def text_token_budget() -> int:
    """Prompt text tokens besides the images: the longest template and the longest instruction
    the critic accepts, at the planner's characters-per-token."""
    from firm_lite.critic import MAX_INSTRUCTION_CHARS
    from firm_lite.plan import CHARS_PER_TOKEN, prompt_text_tokens

    return prompt_text_tokens() + math.ceil(MAX_INSTRUCTION_CHARS / CHARS_PER_TOKEN)


def plan_profiles(layout: GraphLayout, limits: EngineLimits) -> dict[str, Profile]:
    """Per graph, its one optimization profile: every input's (min, opt, max) shape. The decoder's
    covers prefill (whole prompt, empty cache) and decode (one token, cache up to prompt +
    answer) and is tuned for decode."""
    L, b, B = layout, limits.opt_batch, limits.max_batch
    h, hd, kv, d = L.hidden_size, L.head_dim, L.num_kv_heads, L.num_deepstack
    unit, taps = L.merge_unit, L.interpolation_taps
    patches = limits.max_image_tokens * unit
    mid = max(unit, patches // 2 // unit * unit)
    batch = (1, b, B)
    seq = (1, 1, limits.max_prompt)
    past = (0, max(1, limits.max_past // 2), limits.max_past)
    mask = (1, 1 + past[1], limits.max_past)
    decoder: Profile = {
        "inputs_embeds": tuple((n, s, h) for n, s in zip(batch, seq, strict=True)),
        "position_ids": tuple((3, n, s) for n, s in zip(batch, seq, strict=True)),
        "attention_mask": tuple((n, t) for n, t in zip(batch, mask, strict=True)),
        "deepstack_embeds": tuple((d, n, s, h) for n, s in zip(batch, seq, strict=True)),
    }
    for name in L.past_names():
        decoder[name] = tuple((n, kv, p, hd) for n, p in zip(batch, past, strict=True))
    return {
        "embed": {"input_ids": tuple((n, s) for n, s in zip(batch, seq, strict=True))},
        "vision": {
            "pixel_values": ((unit, L.patch_dim), (mid, L.patch_dim), (patches, L.patch_dim)),
            "interp_indices": ((unit, taps), (mid, taps), (patches, taps)),
            "interp_weights": ((unit, taps), (mid, taps), (patches, taps)),
            "rotary_position_ids": ((unit, 2), (mid, 2), (patches, 2)),
            "cu_seqlens": ((2,), (2,), (2,)),  # one image per call
        },
        "decoder": decoder,
    }


def image_tokens_for(folder: Path, image_size: tuple[int, int]) -> int:
    """Image tokens per image at ``image_size`` under the folder's processor budget."""
    from transformers import AutoProcessor

    from firm_lite.images import ImageBudget

    return ImageBudget.from_processor(AutoProcessor.from_pretrained(str(folder))).tokens_for(*image_size)


def budget_image_tokens(folder: Path) -> int:
    """Image tokens per image at the folder's processor ``max_pixels`` (the most it will feed)."""
    from transformers import AutoProcessor

    from firm_lite.images import ImageBudget

    budget = ImageBudget.from_processor(AutoProcessor.from_pretrained(str(folder)))
    return max(1, budget.max_pixels // (budget.patch_size * budget.merge_size) ** 2)


def tensorrt_available(device: str) -> str | None:
    """Why TensorRT engines cannot be built here (None: they can)."""
    from firm_lite.device import machine_report

    report = machine_report()
    if not report.cuda:
        return "no CUDA device is visible"
    if TENSORRT not in report.ort_providers:
        return ("this onnxruntime has no TensorRT provider (pip uninstall onnxruntime && "
                "pip install \"firm-lite[gpu]\")")
    if not report.tensorrt_libs:
        return "TensorRT's libraries are not installed (pip install tensorrt)"
    return None


def prepare_tensorrt(onnx_dir: str | Path, *, limits: EngineLimits | None = None, batch_size: int = 4,
                     image_size: tuple[int, int] = (1024, 1024), max_new_tokens: int = 256, fp16: bool = True,
                     workspace_gb: float = 8.0,
                     build: bool | None = None, device: str = "cuda", overwrite: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the TensorRT settings of the ONNX folder ``onnx_dir`` (profiles from ``limits``, or
    from ``batch_size`` pairs at ``image_size``) and, when ``build`` (None: if this machine can),
    build the engines into the folder's cache. Returns the settings record."""
    from firm_lite.artifact import read_variant_manifest

    onnx_dir = Path(onnx_dir).expanduser()
    manifest = read_variant_manifest(onnx_dir)
    if manifest.get("backend") != "onnx":
        raise UserError(f"{onnx_dir}: not an ONNX export (backend {manifest.get('backend')!r})")
    if manifest.get("recipe", {}).get("quantize", "none") != "none":
        raise UserError(f"{onnx_dir}: quantized graphs use onnxruntime-only ops; prepare TensorRT for an "
                        "unquantized export (`firm-lite export onnx` without --quantize)")
    config_path = onnx_dir / TENSORRT_CONFIG
    if config_path.parent.exists() and any(config_path.parent.iterdir()) and not overwrite:
        raise UserError(f"{config_path.parent} already exists and is not empty (pass --overwrite to replace "
                        "the settings and drop the built engines)")
    layout = GraphLayout.from_record(manifest["onnx"]["layout"])
    if limits is None:
        limits = EngineLimits(max_batch=batch_size, opt_batch=batch_size,
                              max_image_tokens=image_tokens_for(onnx_dir, image_size),
                              max_text_tokens=text_token_budget(), max_new_tokens=max_new_tokens)
    why_not = "not asked (--no-build)" if build is False else tensorrt_available(device)
    if build and why_not:
        raise UserError(f"cannot build TensorRT engines here: {why_not}")
    say = progress or (lambda _msg: None)
    if config_path.parent.exists():
        import shutil

        shutil.rmtree(config_path.parent)
    (onnx_dir / TENSORRT_CACHE).mkdir(parents=True)
    profiles = plan_profiles(layout, limits)
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime": f"onnxruntime {TENSORRT}", "limits": asdict(limits), "fp16": fp16,
        "workspace_bytes": int(workspace_gb * (1 << 30)), "cache": str(TENSORRT_CACHE),
        "graphs": {name: {"onnx_sha256": manifest.get("weights", {}).get(file, {}).get("sha256"),
                          "profile": {k: [list(s) for s in v] for k, v in profiles[name].items()}}
                   for name, file in GRAPH_FILES.items()},
        "engines_built": False, "verified_on_hardware": False,
    }
    config_path.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    if why_not is None:
        from firm_lite.onnx.runtime import OrtGraphs

        say(f"building TensorRT engines into {onnx_dir / TENSORRT_CACHE} (minutes for the 8B)")
        start = time.perf_counter()
        graphs = OrtGraphs(onnx_dir, layout, device=device, tensorrt=True)
        record["engines_built"] = all(TENSORRT in p for p in graphs.report.actual.values())
        record["build_seconds"] = round(time.perf_counter() - start, 1)
        record["providers"] = graphs.report.actual
    else:
        record["not_built"] = why_not
    config_path.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    return record
