"""``firm-lite export tensorrt``: TensorRT engines built from an exported ONNX folder.

One engine per graph (``embed``, ``vision``, ``decoder``) with TensorRT's Python builder, fp16
enabled, and optimization profiles sized from the folder's processor budget: the vision graph
gets one profile (one image per call, as the ONNX runtime feeds it), ``embed`` and ``decoder``
get a *prefill* profile (whole prompt, empty past) and a single-token *decode* profile (one new
token against a past up to prompt + answer length). The shapes are planned by
:func:`plan_profiles`, a pure function, so they are tested without TensorRT; the builder call
itself has not yet been run on hardware. Quantized folders are refused: TensorRT's ONNX parser
does not read onnxruntime's ``MatMulInteger``/``MatMulNBits``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.onnx.layout import GRAPH_FILES, GraphLayout

ENGINE_MANIFEST = "firm_lite_engines.json"
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


@dataclass(frozen=True)
class EngineLimits:
    """The largest request the engines must take; the ``opt`` shapes are what they tune for."""

    max_batch: int = 8
    opt_batch: int = 4
    max_image_tokens: int | None = None  # per image; None: the folder's processor max_pixels / 1024
    max_text_tokens: int = 1024  # prompt text around the two images
    max_new_tokens: int = 256
    images_per_prompt: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise UserError(f"--opt-batch must be in 1..--max-batch ({self.max_batch})")
        for name in ("max_image_tokens", "max_text_tokens", "max_new_tokens", "images_per_prompt"):
            if (getattr(self, name) or 1) < 1:
                raise UserError(f"{name} must be >= 1")

    @property
    def max_prompt(self) -> int:
        if self.max_image_tokens is None:
            raise ValueError("max_image_tokens is not set")
        return self.images_per_prompt * self.max_image_tokens + self.max_text_tokens

    @property
    def max_past(self) -> int:
        return self.max_prompt + self.max_new_tokens


def plan_profiles(layout: GraphLayout, limits: EngineLimits) -> dict[str, list[tuple[str, Profile]]]:
    """Per graph, its named optimization profiles: every input's (min, opt, max) shape."""
    L, b, B = layout, limits.opt_batch, limits.max_batch
    h, hd, kv, d = L.hidden_size, L.head_dim, L.num_kv_heads, L.num_deepstack
    unit = L.merge_unit
    patches = (limits.max_image_tokens or 1) * unit
    s_opt, s_max = max(1, limits.max_prompt // 2), limits.max_prompt
    p_opt, p_max = max(1, limits.max_past // 2), limits.max_past
    mid, taps = max(unit, patches // 2 // unit * unit), L.interpolation_taps
    vision: Profile = {
        "pixel_values": ((unit, L.patch_dim), (mid, L.patch_dim), (patches, L.patch_dim)),
        "interp_indices": ((unit, taps), (mid, taps), (patches, taps)),
        "interp_weights": ((unit, taps), (mid, taps), (patches, taps)),
        "rotary_position_ids": ((unit, 2), (mid, 2), (patches, 2)),
        "cu_seqlens": ((2,), (2,), (2,)),  # one image per call
    }

    def decoder(seq: tuple[int, int, int], past: tuple[int, int, int]) -> Profile:
        batch = (1, b, B)
        total = tuple(s + p for s, p in zip(seq, past, strict=True))
        shapes: Profile = {
            "inputs_embeds": tuple((n, s, h) for n, s in zip(batch, seq, strict=True)),
            "position_ids": tuple((3, n, s) for n, s in zip(batch, seq, strict=True)),
            "attention_mask": tuple((n, t) for n, t in zip(batch, total, strict=True)),
            "deepstack_embeds": tuple((d, n, s, h) for n, s in zip(batch, seq, strict=True)),
        }
        for name in L.past_names():
            shapes[name] = tuple((n, kv, p, hd) for n, p in zip(batch, past, strict=True))
        return shapes

    def embed(seq: tuple[int, int, int]) -> Profile:
        return {"input_ids": tuple((n, s) for n, s in zip((1, b, B), seq, strict=True))}

    prefill_seq, decode_seq = (1, s_opt, s_max), (1, 1, 1)
    return {
        "embed": [("prefill", embed(prefill_seq)), ("decode", embed(decode_seq))],
        "vision": [("image", vision)],
        "decoder": [("prefill", decoder(prefill_seq, (0, 0, 0))), ("decode", decoder(decode_seq, (1, p_opt, p_max)))],
    }


def image_token_budget(folder: Path) -> int:
    """Image tokens per image at the folder's processor ``max_pixels`` (what the engines must take)."""
    from transformers import AutoProcessor

    from firm_lite.images import ImageBudget

    budget = ImageBudget.from_processor(AutoProcessor.from_pretrained(str(folder)))
    return max(1, budget.max_pixels // (budget.patch_size * budget.merge_size) ** 2)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError("TensorRT is not installed: on a machine with an NVIDIA GPU, `pip install tensorrt` "
                        "(CUDA 12 wheels from NVIDIA), then rerun") from None
    return trt


def build_engine(trt: Any, onnx_path: Path, profiles: list[tuple[str, Profile]], fp16: bool, workspace_gb: float,
                 logger: Any) -> bytes:
    """Parse one ONNX graph and build its serialized engine with ``profiles``."""
    builder = trt.Builder(logger)
    major = int(str(getattr(trt, "__version__", "10")).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT could not parse the graph ({errors})")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    for _name, shapes in profiles:
        if set(shapes) != inputs:
            raise RuntimeError(f"{onnx_path.name}: profile covers {sorted(shapes)}, graph inputs are {sorted(inputs)}")
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    return bytes(engine)


def build_tensorrt(onnx_dir: str | Path, out: str | Path | None = None, *, fp16: bool = True,
                   workspace_gb: float = 8.0, limits: EngineLimits | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build ``<graph>.engine`` for every graph of the ONNX folder ``onnx_dir`` into ``out``
    (default ``onnx_dir/tensorrt``); returns the engine manifest."""
    from firm_lite.artifact import read_variant_manifest, sha256_file

    onnx_dir = Path(onnx_dir).expanduser()
    manifest = read_variant_manifest(onnx_dir)
    if manifest.get("backend") != "onnx":
        raise UserError(f"{onnx_dir}: not an ONNX export (backend {manifest.get('backend')!r})")
    if manifest.get("recipe", {}).get("quantize", "none") != "none":
        raise UserError(f"{onnx_dir}: quantized graphs use onnxruntime-only ops; build TensorRT engines from an "
                        "unquantized export (`firm-lite export onnx` without --quantize)")
    out = Path(out).expanduser() if out else onnx_dir / "tensorrt"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"cannot build into {out}: it already exists and is not empty (pass --overwrite)")
    layout = GraphLayout.from_record(manifest.get("onnx", {})["layout"])
    trt = _import_tensorrt()
    limits = limits or EngineLimits()
    if limits.max_image_tokens is None:
        limits = replace(limits, max_image_tokens=image_token_budget(onnx_dir))
    plan = plan_profiles(layout, limits)
    say = progress or (lambda _msg: None)
    logger = trt.Logger(trt.Logger.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    engines: dict[str, Any] = {}
    for name, file in GRAPH_FILES.items():
        say(f"building {name} engine ({', '.join(p for p, _ in plan[name])})")
        blob = build_engine(trt, onnx_dir / file, plan[name], fp16, workspace_gb, logger)
        path = out / f"{name}.engine"
        path.write_bytes(blob)
        engines[name] = {"file": path.name, "bytes": len(blob), "sha256": sha256_file(path),
                         "onnx_sha256": manifest.get("weights", {}).get(file, {}).get("sha256"),
                         "profiles": [{"name": p, "shapes": {k: [list(s) for s in v] for k, v in shapes.items()}}
                                      for p, shapes in plan[name]]}
    record = {"format_version": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "onnx_folder": str(onnx_dir), "source": manifest.get("source"), "tensorrt": str(trt.__version__),
              "fp16": fp16, "workspace_gb": workspace_gb, "limits": asdict(limits), "engines": engines,
              "verified_on_hardware": False}
    (out / ENGINE_MANIFEST).write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    return record
