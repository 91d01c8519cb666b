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
              help="Float dtype of the graphs. fp16 for CUDA/TensorRT (the 8B: ~16 GiB instead of ~33 GiB, "
                   "which no consumer GPU holds); fp32 for CPU.")
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
              help="An unquantized folder from `firm-lite export onnx` (fp16 graphs for the 8B).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Pairs per call you will score with (score's --batch-size): the profiles' batch.")
@click.option("--image-size", default="1024x1024", show_default=True,
              help="Largest image you will score (WIDTHxHEIGHT, after --max-pixels): the profiles' image tokens.")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=256, show_default=True,
              help="Answer length the decode profile must reach.")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Let TensorRT use fp16 kernels.")
@click.option("--workspace-gb", type=click.FloatRange(0.5, 256), default=8.0, show_default=True,
              help="TensorRT workspace memory.")
@click.option("--device", default="cuda", show_default=True, help="GPU to build the engines on (cuda or cuda:N).")
@click.option("--build/--no-build", default=None,
              help="Build the engines now (default: when this machine has ONNX Runtime's TensorRT provider).")
@click.option("--overwrite", is_flag=True, help="Replace existing TensorRT settings and engines.")
def tensorrt_cmd(onnx_dir: str, image_size: str, **kwargs: Any) -> None:
    """Opt an ONNX folder in to ONNX Runtime's TensorRT provider: explicit profiles sized to
    --batch-size and --image-size, an engine cache in ONNX/tensorrt/cache, engines built now when
    this machine can (else at the first load on a GPU). Scoring then uses TensorRT on --device cuda;
    requests larger than the profiles fail, so size them to what you score."""
    from firm_lite.cli.plan import parse_image_size
    from firm_lite.export.onnx import prepare_tensorrt

    record = prepare_tensorrt(onnx_dir, image_size=parse_image_size(image_size), progress=_progress(), **kwargs)
    lim = record["limits"]
    prompt = lim["images_per_prompt"] * lim["max_image_tokens"] + lim["max_text_tokens"]
    click.echo(f"TensorRT settings in {onnx_dir}/tensorrt: batch {lim['max_batch']}, {lim['max_image_tokens']} "
               f"image tokens per image, prompts up to {prompt} tokens, {lim['max_new_tokens']} new tokens; "
               f"fp16 {record['fp16']}")
    if record["engines_built"]:
        click.echo(f"engines built in {record['build_seconds']} s; providers: {record['providers']}")
    else:
        click.echo(f"engines not built here ({record.get('not_built') or 'the TensorRT provider did not start'}); "
                   "they are built at the first load on a GPU (minutes for the 8B)", err=True)
