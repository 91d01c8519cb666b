"""firm-lite against running servers: ``backend="remote"``.

:class:`RemoteEngine` (``engine``) scores prepared pairs on OpenAI-compatible servers of the critic
(``vllm serve``), with firm-lite's protocol: the same chat turn, image pixels and budget, greedy
decoding, and firm-lite's own stop rule, parser and digit read-out on the returned token ids.
``wire`` is the request and response format, ``http`` the retries, ``dispatch`` the spreading of
requests over endpoints, ``probe`` the checks made before scoring, and ``launch`` the server
command that matches firm-lite's settings (:func:`vllm_serve_command`).

Nothing here imports httpx or vLLM at import time.
"""

from __future__ import annotations

from firm_lite.remote.engine import RemoteEngine
from firm_lite.remote.http import EndpointUnreachable, RemoteError
from firm_lite.remote.launch import ServeCommand, vllm_serve_command

__all__ = ["EndpointUnreachable", "RemoteEngine", "RemoteError", "ServeCommand", "vllm_serve_command"]
