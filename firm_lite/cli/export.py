"""``firm-lite export``: a group of exporters, one subcommand per format.

Each subcommand parses options and calls the public function in :mod:`firm_lite.export`; its
module is imported only when the subcommand runs. Add a format with one line in
:data:`EXPORTERS`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import click

from firm_lite.sources import DEFAULT_MODEL

# name -> "module:attribute"; add a line here to add an export format.
EXPORTERS: dict[str, str] = {
    "gptq": "firm_lite.cli.export:gptq_cmd",
    "bnb": "firm_lite.cli.export:bnb_cmd",
    "onnx": "firm_lite.cli.export_onnx:onnx_cmd",
    "tensorrt": "firm_lite.cli.export_onnx:tensorrt_cmd",
}


class ExportGroup(click.Group):
    """Lists :data:`EXPORTERS` and imports one only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(EXPORTERS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = EXPORTERS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(import_module(module), attr)


@click.group("export", cls=ExportGroup)
def export_cmd() -> None:
    """Quantize the critic once into a folder that loads fast: `score --variant FOLDER`.

    \b
    Every folder holds standard weights, the processor, a greedy generation config and
    firm_lite_variant.json (source, recipe, versions, calibration data, sha256 of each weight
    file; loading refuses a folder whose weights do not match).
    Recipes: firm_lite/data/recipes/ (export/recipes/ in a checkout).
    """


def _common(func: Any) -> Any:
    options = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True,
                     help="Hub id, local model folder, or 'tiny' (the offline test critic)."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Folder to create (written atomically; must be empty unless --overwrite)."),
        click.option("--recipe", default=None, help="A shipped recipe name (bnb-nf4, bnb-int8, gptq-w4-g128,\n"
                     "gptq-w8) or a TOML file."),
        click.option("--quantize-vision", is_flag=True,
                     help="Also quantize the vision tower (not default: image features drift first)."),
        click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder."),
        click.option("--device", default="auto", show_default=True, help="Where to quantize: auto, cpu, cuda:N."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Stage and layer progress."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("gptq")
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="4 (gptq-w4-g128) or 8 (gptq-w8).")
@click.option("--group-size", type=int, default=None, help="Input channels per scale (default 128; -1 per channel).")
@click.option("--act-order/--no-act-order", default=None, help="GPTQ desc_act (default: the recipe's, off).")
@click.option("--calib", default=None,
              help="JSONL of edit pairs to calibrate on (both modes' prompts with both images); "
                   "'demo' = the bundled pair (smoke tests only).")
@click.option("--max-calibration-pairs", type=click.IntRange(min=1), default=None,
              help="Use at most this many pairs (default: the recipe's).")
@click.option("--min-pixels", type=click.IntRange(min=1), default=None, help="Image budget (default: the processor's).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Image budget (default: the processor's).")
@click.option("--verbose", is_flag=True, help="Show gptqmodel's own output instead of logging it to export.log.")
@_common
def gptq_cmd(bits: str | None, verbose: bool, **kwargs: Any) -> None:
    """GPTQ 4- or 8-bit checkpoint (gptqmodel), loadable by transformers and vLLM.

    \b
    Examples:
      firm-lite export gptq --model tiny --bits 4 --calib demo --out tiny-w4
      firm-lite export gptq --bits 4 --calib calibration/editset-train.jsonl --out firm-edit-8b-w4
    """
    from firm_lite.export import export_gptq

    result = export_gptq(bits=int(bits) if bits else None, quiet_library=not verbose, **kwargs)
    click.echo(result.summary())


@click.command("bnb")
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="4 (bnb-nf4, double quant) or 8 (bnb-int8).")
@_common
def bnb_cmd(bits: str | None, **kwargs: Any) -> None:
    """bitsandbytes NF4 or int8 folder, saved before any forward pass.

    \b
    Examples:
      firm-lite export bnb --model tiny --bits 4 --out tiny-nf4
      firm-lite export bnb --recipe bnb-int8 --out firm-edit-8b-int8
    """
    from firm_lite.export import export_bnb

    result = export_bnb(bits=int(bits) if bits else None, **kwargs)
    click.echo(result.summary())
