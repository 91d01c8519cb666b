"""firm-lite on vLLM: the same protocol and records, vLLM's engine underneath.

:class:`VllmEngine` (``engine``) scores prepared pairs with an in-process ``vllm.LLM`` and returns
what :meth:`firm_lite.critic.Critic.score_modes` returns; ``answers`` turns a completion into a
ModeScore with firm-lite's stop rule, parser and digit read-out; ``weights`` audits which
checkpoint tensors vLLM loaded; ``parallel`` runs several engines side by side (data parallel,
:func:`start_engine`); ``plugin`` and ``model`` are what vLLM itself imports (firm-lite's
vLLM plugin and its Qwen3-VL class).

Nothing here imports vLLM at import time: only building an engine does.
"""

from __future__ import annotations

from firm_lite.settings import VllmOptions
from firm_lite.vllm_backend.engine import VllmEngine
from firm_lite.vllm_backend.parallel import DataParallelEngines, start_engine

__all__ = ["DataParallelEngines", "VllmEngine", "VllmOptions", "start_engine"]
