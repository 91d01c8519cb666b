"""vLLM data parallelism on one node: ``data_parallel_size`` independent engines in one firm-lite
process, each on its own devices, each scoring its share of every batch.

vLLM 0.32's offline ``LLM`` refuses ``data_parallel_size > 1`` (its data parallelism is a server
feature), so firm-lite starts one ``vllm.LLM`` per rank itself: each engine's processes are
started with that rank's devices in their environment (``CUDA_VISIBLE_DEVICES``: the rank's
``tensor_parallel_size`` GPUs; on a CPU, ``VLLM_CPU_OMP_THREADS_BIND``: the rank's share of this
process's cores), and a batch is split pair by pair (both modes of a pair stay on one engine, so
its prefix cache shares the images). Results come back in the input order, so records do not
depend on the number of engines.

Tensor parallelism needs nothing here: ``tensor_parallel_size`` goes to ``vllm.LLM`` as is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.generation import DecodingConfig
from firm_lite.images import ImageBudget
from firm_lite.prompts import MODES
from firm_lite.records import EditPair, ModeScore
from firm_lite.settings import VllmOptions
from firm_lite.vllm_backend.engine import Render, VllmEngine


def rank_placements(ranks: int, tensor_parallel: int, on_cpu: bool, cpu_threads_bind: str | None = None,
                    visible_gpus: list[str] | None = None, cpus: list[int] | None = None) -> list[dict[str, str]]:
    """The environment each data-parallel rank's engine is started with.

    GPUs: consecutive groups of ``tensor_parallel`` devices out of ``visible_gpus`` (this
    process's ``CUDA_VISIBLE_DEVICES``, else ``0..count-1``). CPU: ``cpu_threads_bind`` split on
    ``|`` (one core list per rank, vLLM's syntax), else this process's cores in equal contiguous
    shares."""
    if ranks == 1:
        return [{}]
    if on_cpu:
        if cpu_threads_bind:
            binds = cpu_threads_bind.split("|")
            if len(binds) != ranks:
                raise UserError(f"--vllm-cpu-threads-bind {cpu_threads_bind!r} lists {len(binds)} core groups "
                                f"for {ranks} data-parallel engines: give one per engine, separated by '|'")
        else:
            cores = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
            if len(cores) < ranks:
                raise UserError(f"--data-parallel-size {ranks}: this process may use {len(cores)} CPU core(s); "
                                "each engine needs at least one")
            share = len(cores) // ranks
            binds = [_core_list(cores[r * share:(r + 1) * share]) for r in range(ranks)]
        return [{"VLLM_CPU_OMP_THREADS_BIND": b} for b in binds]
    gpus = visible_gpus if visible_gpus is not None else _visible_gpus()
    wanted = ranks * tensor_parallel
    if len(gpus) < wanted:
        raise UserError(f"--data-parallel-size {ranks} x --tensor-parallel-size {tensor_parallel} needs {wanted} "
                        f"GPUs; {len(gpus)} visible ({','.join(gpus) or 'none'})")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[r * tensor_parallel:(r + 1) * tensor_parallel])}
            for r in range(ranks)]


def _core_list(cores: list[int]) -> str:
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    return f"{cores[0]}-{cores[-1]}" if contiguous and len(cores) > 1 else ",".join(map(str, cores))


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class DataParallelEngines:
    """Several :class:`VllmEngine` behind one ``score_modes``."""

    def __init__(self, engines: list[VllmEngine]) -> None:
        self.engines = engines
        self._pool = ThreadPoolExecutor(max_workers=len(engines), thread_name_prefix="firm-lite-vllm-dp")

    @property
    def provenance(self) -> dict[str, Any]:
        record = dict(self.engines[0].provenance)
        record["placement"] = [e.placement for e in self.engines]
        return record

    def score_modes(self, items: list[tuple[EditPair, Any, Any]], modes: Iterable[str] = MODES,
                    timings: dict[str, float] | None = None, *, protocol: str = "full") -> dict[str, list[ModeScore]]:
        """Pairs dealt round-robin to the engines, scored at once, put back in input order.
        ``timings["generate"]`` is the wall time of the slowest share; token counts add up."""
        modes = list(modes)
        n = len(self.engines)
        shares = [items[r::n] for r in range(n)]
        start = time.perf_counter()
        parts = [{} for _ in range(n)]
        futures = [self._pool.submit(engine.score_modes, share, modes, parts[r], protocol=protocol)
                   for r, (engine, share) in enumerate(zip(self.engines, shares, strict=True)) if share]
        outs = [f.result() for f in futures]  # the first failure propagates (the caller isolates items)
        results: dict[str, list[ModeScore]] = {m: [None] * len(items) for m in modes}  # type: ignore[list-item]
        for r, out in enumerate(outs):
            for m in modes:
                results[m][r::n] = out[m]
        if timings is not None:
            for part in parts:
                for key, value in part.items():
                    if key != "generate":
                        timings[key] = timings.get(key, 0) + value
            timings["generate"] = timings.get("generate", 0) + time.perf_counter() - start
        return results

    def forced_readout(self, mode: str, pair: EditPair, images: list[Any], answer: str) -> Any:
        return self.engines[0].forced_readout(mode, pair, images, answer)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self._pool.shutdown(wait=False)


def start_engine(folder: str | Path, processor: Any, render: Render, budget: ImageBudget, decoding: DecodingConfig,
                 dtype: str = "auto", options: VllmOptions | None = None) -> VllmEngine | DataParallelEngines:
    """One engine, or ``options.data_parallel_size`` of them (started one after another; if one
    fails to start, those already started are stopped)."""
    options = options or VllmOptions()
    if options.data_parallel_size == 1:
        return VllmEngine(folder, processor, render, budget, decoding, dtype, options)
    from vllm.platforms import current_platform

    placements = rank_placements(options.data_parallel_size, options.tensor_parallel_size,
                                 current_platform.is_cpu(), options.cpu_threads_bind)
    engines: list[VllmEngine] = []
    try:
        for placement in placements:
            engines.append(VllmEngine(folder, processor, render, budget, decoding, dtype, options, placement))
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    return DataParallelEngines(engines)
