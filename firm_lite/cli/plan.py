"""``firm-lite plan``: parse options, call :func:`firm_lite.plan.plan`, print the table or JSON."""

from __future__ import annotations

import json
import re

import click

from firm_lite.sources import DEFAULT_MODEL


def parse_image_size(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", value or "")
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 1024x1024")
    return int(m.group(1)), int(m.group(2))


@click.command("plan")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Hub id (the default uses the shipped Qwen3-VL-8B config, offline), local folder, or 'tiny'.")
@click.option("--vram", type=click.FloatRange(min=0, min_open=True), default=None,
              help="GPU memory in GiB to judge each variant against.")
@click.option("--image-size", default="1024x1024", show_default=True, help="Size of both images of the pair.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
              help="Runtime dtype (KV cache, activations, load-time variants' kept parts); fp16 on GPUs "
                   "older than Ampere (T4, RTX 20xx).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pairs per forward pass (score and calibrate default to 4): KV cache and activations "
                   "grow with it.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def plan_cmd(model: str, vram: float | None, image_size: str, dtype: str, batch_size: int, as_json: bool) -> None:
    """Memory each variant needs for a batch of edit pairs, and whether it fits --vram.

    \b
    Weights are exact (the model is built from its config on the meta device, nothing is
    downloaded); KV cache and activations are estimates for --batch-size pairs at --image-size.
    Examples:
      firm-lite plan --vram 12
      firm-lite plan --vram 24 --batch-size 4
      firm-lite plan --model tiny --image-size 512x512 --json
    """
    from firm_lite.plan import format_table, inventory, plan

    size = parse_image_size(image_size)
    rows = plan(model=model, vram_gib=vram, image_size=size, dtype=dtype, pairs=batch_size)
    inv = inventory(model)
    if as_json:
        click.echo(json.dumps({"model": inv.label, "image_size": list(size), "vram_gib": vram, "dtype": dtype,
                               "batch_size": batch_size,
                               "rows": [r.as_record() for r in rows]}, indent=2))
    else:
        click.echo(format_table(rows, inv.label, vram, size, inv, batch_size))
