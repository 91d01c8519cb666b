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
    options += backend_options()
    chosen = [(name, opt) for name, opt in options
              if (variant or name != "variant") and (protocol or name != "protocol")]
    names = [name for name, _ in chosen]

    def decorate(func: Any) -> Any:
        @wraps(func)
        def command(**kwargs: Any) -> Any:
            return func(settings=settings_from_options({n: kwargs.pop(n) for n in names}), **kwargs)

        for _, option in reversed(chosen):
            command = option(command)
        return command

    return decorate


VLLM_OPTION_NAMES = {"vllm_tensor_parallel_size": "tensor_parallel_size",
                     "vllm_data_parallel_size": "data_parallel_size", "vllm_kv_cache_gib": "kv_cache_gib",
                     "vllm_gpu_memory_utilization": "gpu_memory_utilization",
                     "vllm_max_num_batched_tokens": "max_num_batched_tokens",
                     "vllm_cpu_threads_bind": "cpu_threads_bind"}
REMOTE_OPTION_NAMES = {"remote_endpoints": "endpoints", "remote_api_key": "api_key",
                       "remote_timeout_s": "timeout_s", "remote_concurrency": "concurrency"}


def backend_options() -> list[tuple[str, Any]]:
    """--backend and what each backend takes (vLLM engine settings, remote endpoints)."""
    return [
        ("backend", click.option("--backend", type=click.Choice(["hf", "vllm"]), default=None,
                                 help="Who generates: hf (transformers in this process; the default) or vllm "
                                      "(an in-process vLLM engine: pip install \"firm-lite[vllm]\" on a GPU, "
                                      "scripts/vllm_cpu_env.sh on a CPU). A variant may also be named "
                                      "vllm:NAME. Same prompts, parsing and records either way.")),
        ("vllm_tensor_parallel_size", click.option(
            "--tensor-parallel-size", "vllm_tensor_parallel_size", type=click.IntRange(min=1), default=1,
            show_default=True, help="vLLM: GPUs one engine spans, for a model that does not fit one card "
                                    "(see `firm-lite plan --backend vllm`).")),
        ("vllm_data_parallel_size", click.option(
            "--data-parallel-size", "vllm_data_parallel_size", type=click.IntRange(min=1), default=1,
            show_default=True, help="vLLM: independent engines, one per GPU (or per share of the CPU cores), "
                                    "each scoring part of every batch.")),
        ("vllm_kv_cache_gib", click.option(
            "--kv-cache-gib", "vllm_kv_cache_gib", type=click.FloatRange(min=0, min_open=True), default=None,
            help="vLLM: KV cache size (default: 2 GiB on a CPU; on a GPU what --gpu-memory-utilization leaves).")),
        ("vllm_gpu_memory_utilization", click.option(
            "--gpu-memory-utilization", "vllm_gpu_memory_utilization", type=click.FloatRange(0, 1, min_open=True),
            default=0.9, show_default=True, help="vLLM: share of each GPU's memory the engine may use.")),
        ("vllm_max_num_batched_tokens", click.option(
            "--max-num-batched-tokens", "vllm_max_num_batched_tokens", type=click.IntRange(min=1), default=16384,
            show_default=True, help="vLLM: tokens per engine step (chunked prefill); smaller leaves more memory "
                                    "for the KV cache.")),
        ("vllm_cpu_threads_bind", click.option(
            "--vllm-cpu-threads-bind", "vllm_cpu_threads_bind", default=None,
            help="vLLM on a CPU: cores of the engine's worker, e.g. 0-7 (vLLM's VLLM_CPU_OMP_THREADS_BIND; "
                 "one group per data-parallel engine separated by '|').")),
        ("remote_endpoints", click.option(
            "--endpoint", "remote_endpoints", multiple=True, metavar="URL",
            help="Score on a running OpenAI-compatible server of the critic (e.g. `vllm serve`), "
                 "http://host:8000; repeat to spread the load over several. --model names the checkpoint "
                 "whose tokenizer and processor firm-lite uses (no weights are loaded here).")),
        ("remote_api_key", click.option(
            "--api-key", "remote_api_key", envvar="FIRM_LITE_API_KEY", default=None,
            help="Bearer key for --endpoint (or the FIRM_LITE_API_KEY environment variable); never recorded.")),
        ("remote_timeout_s", click.option(
            "--endpoint-timeout", "remote_timeout_s", type=click.FloatRange(min=0, min_open=True), default=300.0,
            show_default=True, help="Seconds per request to --endpoint before it is retried.")),
        ("remote_concurrency", click.option(
            "--endpoint-concurrency", "remote_concurrency", type=click.IntRange(min=1), default=8,
            show_default=True, help="Requests in flight per --endpoint.")),
    ]


def settings_from_options(values: dict[str, Any]) -> Any:
    """The parsed critic options -> one :class:`~firm_lite.settings.CriticSettings`."""
    from firm_lite.errors import UserError
    from firm_lite.settings import CriticSettings, RemoteOptions, VllmOptions

    vllm = VllmOptions(**{VLLM_OPTION_NAMES[k]: values.pop(k) for k in list(values) if k in VLLM_OPTION_NAMES})
    remote = RemoteOptions(**{REMOTE_OPTION_NAMES[k]: values.pop(k) for k in list(values)
                              if k in REMOTE_OPTION_NAMES})
    backend = values.pop("backend", None)
    if remote.endpoints:
        if backend is not None:
            raise UserError(f"--endpoint scores on a running server: drop --backend {backend}")
        backend = "remote"
    # (calibrate and bench name backends per variant, vllm:NAME: their vLLM options apply to those)
    if vllm != VllmOptions() and "variant" in values and backend != "vllm" \
            and not values["variant"].startswith("vllm:"):
        raise UserError("--tensor-parallel-size, --data-parallel-size, --kv-cache-gib, --gpu-memory-utilization, "
                        "--max-num-batched-tokens and --vllm-cpu-threads-bind need --backend vllm")
    return CriticSettings(**values, backend=backend or "hf", vllm=vllm, remote=remote)
