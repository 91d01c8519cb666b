"""The reward server: a drop-in, safe replacement for the FIRM-Edit reference server.

RL trainers post batches of edits to ``/mode/score_execution`` and ``/mode/score_consistency``
on port 12341 with pickled bodies; pointing their ``REWARD_SERVER`` at ``firm-lite serve`` must be
the only change they make. This package owns that server, split by concern:

- :mod:`~firm_lite.server.safe_pickle`: the only reader of pickled network input (plain data only);
- :mod:`~firm_lite.server.protocol`: request validation and response shapes (reference + JSON API);
- :mod:`~firm_lite.server.batching`: the worker thread that owns the critic and micro-batches;
- :mod:`~firm_lite.server.access`: token check, refusals, request metrics;
- :mod:`~firm_lite.server.admission`: body limit, in-flight byte budget, stalled bodies;
- :mod:`~firm_lite.server.connections`: connection limits (request-head timeout) for uvicorn;
- :mod:`~firm_lite.server.config`: the settings and why each default;
- :mod:`~firm_lite.server.metrics`: counters for ``/metrics``;
- :mod:`~firm_lite.server.app`: the FastAPI app; :mod:`~firm_lite.server.runner`: uvicorn;
- :mod:`~firm_lite.server.loadgen`: the load test behind ``bench/serve_load.py``.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart); nothing here is imported by
``firm-lite --help``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "serve": ("firm_lite.server.runner", "serve"),
    "BackgroundServer": ("firm_lite.server.runner", "BackgroundServer"),
    "create_app": ("firm_lite.server.app", "create_app"),
    "ServeConfig": ("firm_lite.server.config", "ServeConfig"),
    "loadtest": ("firm_lite.server.loadgen", "loadtest"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'firm_lite.server' has no attribute {name!r}")
