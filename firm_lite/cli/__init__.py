"""The ``firm-lite`` command: a click group whose subcommands live in their own modules.

Subcommand modules are imported only when named (or when ``--help`` lists them); they parse
options and call the public function in ``firm_lite`` that does the work. None of them imports
torch at module level, so ``firm-lite --help`` stays fast. A :class:`~firm_lite.errors.UserError`
anywhere below becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import click

from firm_lite import __version__

# name -> "module:attribute"; add a line here to add a subcommand.
SUBCOMMANDS: dict[str, str] = {
    "score": "firm_lite.cli.score:score_cmd",
    "merge": "firm_lite.cli.merge:merge_cmd",
    "bench": "firm_lite.cli.bench:bench_cmd",
    "calibrate": "firm_lite.cli.calibrate:calibrate_cmd",
    "serve": "firm_lite.cli.serve:serve_cmd",
    "export": "firm_lite.cli.export:export_cmd",
    "plan": "firm_lite.cli.plan:plan_cmd",
    "report": "firm_lite.cli.report:report_cmd",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it is used, and turns UserError into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        from firm_lite.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished records are saved; re-run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="firm-lite")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Also firm-lite's debug lines on stderr.")
def main(quiet: bool, verbose: bool) -> None:
    """firm-lite: score image edits with the FIRM-Edit critic on hardware you own.

    \b
    Quick start (offline tiny critic, no download):
      firm-lite score --model tiny --demo
    Real critic (GPU, VisionXLab/FIRM-Edit-8B from the Hugging Face cache):
      firm-lite score --source a.jpg --edited b.jpg --instruction "remove the car"
    """
    from firm_lite.cli.output import setup_output

    setup_output(-1 if quiet else (1 if verbose else 0))


def critic_options(*, variant: bool = True, protocol: bool = True, model: str | None = None) -> Any:
    """The options that describe the critic, declared once: the decorated command receives one
    ``settings`` (:class:`~firm_lite.settings.CriticSettings`) instead of a dozen loose values.

    ``variant=False`` for commands that take variants their own way (calibrate's ``--reference``
    and repeatable ``--variant``, bench's repeatable ``--variant``); ``protocol=False`` where the
    protocol is chosen per variant (``NAME+fast``); ``model`` overrides the default model.
    """
    from functools import wraps

    from firm_lite.images import DEFAULT_MAX_IMAGE_PIXELS
    from firm_lite.sources import DEFAULT_MODEL

    options = [
        ("model", click.option("--model", default=model or DEFAULT_MODEL, show_default=True,
                               help="Hub id, local model folder, or 'tiny' (the offline test critic).")),
        ("revision", click.option("--revision", default=None,
                                  help="Hub revision (branch, tag or commit) of --model; recorded in provenance.")),
        ("variant", click.option("--variant", default="default", show_default=True,
                                 help="fp32, bf16, fp16, int8, nf4, an exported variant folder, or auto (the most "
                                      "accurate that fits free memory). 'default' loads the checkpoint at --dtype.")),
        ("device", click.option("--device", default="auto", show_default=True,
                                help="auto (CUDA if present), cpu, cuda, cuda:N.")),
        ("memory_cap_gib", click.option("--cap-gib", "memory_cap_gib", type=click.FloatRange(min=0, min_open=True),
                                        default=None,
                                        help="Use at most this much GPU memory (GiB): --variant auto plans within it "
                                             "and the CUDA allocator is capped to it (e.g. 24 to stand in for a "
                                             "24 GB card).")),
        ("dtype", click.option("--dtype", default="auto", show_default=True,
                               type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
                               help="Weights dtype of the default variant (and unquantized parts): auto = bf16 on "
                                    "GPUs from Ampere on, fp16 on older GPUs (T4, RTX 20xx), fp32 on CPU.")),
        ("min_pixels", click.option("--min-pixels", type=click.IntRange(min=1), default=None,
                                    help="Image budget lower bound in pixels (default: the model's processor).")),
        ("max_pixels", click.option("--max-pixels", type=click.IntRange(min=1), default=None,
                                    help="Image budget upper bound in pixels (default: the model's processor). "
                                         "Tokens per image ~ pixels / 1024.")),
        ("max_new_tokens", click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=256,
                                        show_default=True, help="Answer length cap (the reference uses 256).")),
        ("max_image_pixels", click.option("--max-image-pixels", type=click.IntRange(min=1),
                                          default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
                                          help="Refuse larger images (decompression-bomb guard).")),
        ("w1", click.option("--w1", type=click.FloatRange(min=0), default=0.6, show_default=True,
                            help="CME execution weight.")),
        ("w2", click.option("--w2", type=click.FloatRange(min=0), default=0.4, show_default=True,
                            help="CME consistency weight.")),
        ("protocol", click.option("--protocol", type=click.Choice(["full", "fast"]), default="full",
                                  show_default=True,
                                  help="full: the reference protocol (reasoning, then score). fast: a DIFFERENT "
                                       "protocol that forces an empty reasoning and reads the score from one "
                                       "prefill; check it with calibrate.")),
    ]
    chosen = [(name, opt) for name, opt in options
              if (variant or name != "variant") and (protocol or name != "protocol")]
    names = [name for name, _ in chosen]

    def decorate(func: Any) -> Any:
        @wraps(func)
        def command(**kwargs: Any) -> Any:
            from firm_lite.settings import CriticSettings

            return func(settings=CriticSettings(**{n: kwargs.pop(n) for n in names}), **kwargs)

        for _, option in reversed(chosen):
            command = option(command)
        return command

    return decorate
