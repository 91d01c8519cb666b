"""``firm-lite export onnx`` and ``firm-lite export tensorrt``: parse options, call
:func:`firm_lite.onnx.export_onnx` / :func:`firm_lite.onnx.build_tensorrt`, print a summary."""

from __future__ import annotations

import json
import time
from typing import Any

import click


def _progress() -> Any:
    start = time.monotonic()

    def say(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:6.1f}s] {message}", err=True)

    return say


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command("onnx")
@click.option("--model", default="VisionXLab/FIRM-Edit-8B", show_default=True,
              help="Hub id, local model folder, or 'tiny' (the offline test critic).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the variant into.")
@click.option("--opset", type=click.IntRange(18, 23), default=18, show_default=True, help="ONNX opset.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Float dtype of the graphs (fp16 is for CUDA/TensorRT providers).")
@click.option("--quantize", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="Weight quantization of vision and decoder linear layers: int8 dynamic (MatMulInteger) "
                   "or 4-bit weight-only (MatMulNBits).")
@click.option("--keep-lm-head/--quantize-lm-head", default=True, show_default=True,
              help="Keep lm_head in float when quantizing (the score read-out is a softmax of its logits).")
@click.option("--block-size", type=click.IntRange(16, 256), default=128, show_default=True,
              help="int4 quantization block size (a power of two).")
@click.option("--revision", default=None, help="Hub revision of --model.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the variant manifest as JSON.")
def onnx_cmd(as_json: bool, **kwargs: Any) -> None:
    """Export the critic to ONNX: embed, vision and decoder graphs with dynamic batch, sequence,
    past and image sizes, plus processor files and a provenance manifest.

    \b
    Then score with it:
      firm-lite export onnx --model tiny --out tiny-onnx
      firm-lite score --variant tiny-onnx --demo
    """
    from firm_lite.export.onnx import export_onnx

    model, out = kwargs.pop("model"), kwargs.pop("out")
    manifest = export_onnx(model, out, progress=_progress(), **kwargs)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    for name, info in manifest["weights"].items():
        click.echo(f"{name:<24} {_size(info['bytes']):>10}  sha256 {info['sha256'][:16]}")
    recipe = manifest["recipe"]
    click.echo(f"\nwrote {out} (opset {recipe['opset']}, {recipe['dtype']}, quantize {recipe['quantize']}); "
               f"score with: firm-lite score --variant {out} ...")


@click.command("tensorrt")
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="An unquantized folder from `firm-lite export onnx`.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Engine folder (default: ONNX/tensorrt).")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Let TensorRT use fp16 kernels.")
@click.option("--workspace-gb", type=click.FloatRange(0.5, 256), default=8.0, show_default=True,
              help="Builder workspace memory pool.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, show_default=True, help="Largest batch (rows).")
@click.option("--opt-batch", type=click.IntRange(1, 256), default=4, show_default=True, help="Batch to tune for.")
@click.option("--max-image-tokens", type=click.IntRange(min=1), default=None,
              help="Image tokens per image (default: the folder's processor max_pixels / 1024).")
@click.option("--max-text-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Prompt text tokens besides the images.")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=256, show_default=True,
              help="Answer length the decode profile must reach.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
def tensorrt_cmd(onnx_dir: str, out: str | None, fp16: bool, workspace_gb: float, overwrite: bool,
                 max_image_tokens: int | None, **limits: Any) -> None:
    """Build TensorRT engines (one per graph; fp16; profiles for vision, prefill and decode) from
    an ONNX export. Needs an NVIDIA GPU and `pip install tensorrt`."""
    from firm_lite.export.onnx import build_tensorrt
    from firm_lite.export.onnx.tensorrt import EngineLimits

    record = build_tensorrt(onnx_dir, out, fp16=fp16, workspace_gb=workspace_gb, overwrite=overwrite,
                            limits=EngineLimits(max_image_tokens=max_image_tokens, **limits), progress=_progress())
    for name, info in record["engines"].items():
        click.echo(f"{name:<8} {info['file']:<16} {_size(info['bytes']):>10}  profiles "
                   f"{', '.join(p['name'] for p in info['profiles'])}")
    click.echo("note: engine building is not yet verified on GPU hardware, and firm-lite has no TensorRT-engine "
               "runtime yet (ONNX Runtime's TensorRT provider runs the ONNX folder)", err=True)
