"""``firm-lite plan``: parse options, call :func:`firm_lite.plan.plan` (or, with ``--backend vllm``,
:func:`firm_lite.plan.vllm.plan_vllm`), print the table or JSON."""

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
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="hf: memory per variant for firm-lite's own engine; vllm: the vLLM engine settings that fit "
                   "--vram (max_model_len, KV cache blocks, pairs in flight, tensor/data parallel sizes).")
@click.option("--vram", type=click.FloatRange(min=0, min_open=True), default=None,
              help="GPU memory in GiB to judge each variant against (per card; required with --backend vllm).")
@click.option("--image-size", default="1024x1024", show_default=True, help="Size of both images of the pair.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
              help="Runtime dtype (KV cache, activations, load-time variants' kept parts); fp16 on GPUs "
                   "older than Ampere (T4, RTX 20xx).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="[hf] Pairs per forward pass (default 1; score and calibrate default to 4): KV cache and "
                   "activations grow with it. vLLM batches continuously: see its 'pairs' column.")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="[vllm] Cards of --vram each on the node (default 1): one engine per card when a variant fits "
                   "one (data parallel), else its weights split over several (tensor parallel).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="[vllm] Share of each card vLLM may use (default 0.9; the rest is left for CUDA graphs).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def plan_cmd(model: str, backend: str, vram: float | None, image_size: str, dtype: str, batch_size: int | None,
             gpus: int | None, gpu_memory_utilization: float | None, as_json: bool) -> None:
    """Memory each variant needs for a batch of edit pairs, and whether it fits --vram;
    with --backend vllm, the vLLM engine settings that fit the card(s).

    \b
    Weights are exact (the model is built from its config on the meta device, nothing is
    downloaded); KV cache and activations are estimates for --batch-size pairs at --image-size.
    Examples:
      firm-lite plan --vram 12
      firm-lite plan --vram 24 --batch-size 4
      firm-lite plan --model tiny --image-size 512x512 --json
    \b
    With --backend vllm: per variant vLLM runs (bf16/fp16, GPTQ folders via gptq_marlin, nf4 via
    bitsandbytes at load), the KV cache left after weights and vLLM's profiling peak, how many
    pairs it holds at once (prefix caching shares a pair's two images), and the score command
    with --tensor-parallel-size/--data-parallel-size for --gpus cards:
      firm-lite plan --backend vllm --vram 24
      firm-lite plan --backend vllm --vram 12 --gpus 2
      firm-lite plan --backend vllm --vram 80 --gpus 8 --image-size 768x768 --json
    """
    size = parse_image_size(image_size)
    if backend == "vllm":
        if batch_size is not None:
            raise click.UsageError("--batch-size is for --backend hf: vLLM batches continuously (its plan "
                                   "says how many pairs are in flight)")
        _plan_vllm(model, vram, size, dtype, gpus or 1, gpu_memory_utilization, as_json)
        return
    if gpus is not None or gpu_memory_utilization is not None:
        raise click.UsageError("--gpus and --gpu-memory-utilization plan the vLLM engine: add --backend vllm")
    from firm_lite.plan import format_table, inventory, plan

    batch_size = batch_size or 1
    rows = plan(model=model, vram_gib=vram, image_size=size, dtype=dtype, pairs=batch_size)
    inv = inventory(model)
    if as_json:
        click.echo(json.dumps({"model": inv.label, "image_size": list(size), "vram_gib": vram, "dtype": dtype,
                               "batch_size": batch_size,
                               "rows": [r.as_record() for r in rows]}, indent=2))
    else:
        click.echo(format_table(rows, inv.label, vram, size, inv, batch_size))


def _plan_vllm(model: str, vram: float | None, size: tuple[int, int], dtype: str, gpus: int,
               utilization: float | None, as_json: bool) -> None:
    from firm_lite.plan.vllm import format_vllm_table, plan_vllm

    if vram is None:
        raise click.UsageError("--backend vllm plans the engine for a card: give its memory in GiB, e.g. "
                               "firm-lite plan --backend vllm --vram 24")
    result = plan_vllm(model=model, vram_gib=vram, image_size=size, dtype=dtype, gpus=gpus,
                       gpu_memory_utilization=utilization)
    if as_json:
        click.echo(json.dumps({"backend": "vllm", **result.as_record()}, indent=2))
    else:
        click.echo(format_vllm_table(result))
