"""No silent weight drops: which checkpoint tensors did vLLM's loader actually use?

vLLM's weight loaders skip some checkpoint tensors without a word: ``AutoWeightsLoader`` ignores
every ``.bias`` it has no parameter for (meant for GPTQ checkpoints' zero biases), which is how
Qwen3's ``o_proj.bias`` disappears (vLLM's Qwen3 attention has no slot for it). A critic scored
with a tensor dropped is a different model whose scores still look plausible.

:class:`WeightAudit` watches one ``load_weights`` call: it hands the checkpoint's tensors to the
loader one at a time and notes, for each, whether some parameter's weight loader ran while it was
the current one. A tensor that no loader took is unused; loading is refused unless every unused
tensor is exactly zero (dropping a zero bias changes nothing), or is a derived buffer that vLLM
recomputes from the config (``rotary_emb.inv_freq``).

This module needs torch only; the vLLM model class (:mod:`firm_lite.vllm_backend.model`) uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from firm_lite.errors import UserError

# Checkpoint tensors that are not weights: vLLM recomputes them from the config.
DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


class UnusedWeightsError(UserError):
    """A checkpoint holds non-zero tensors that the vLLM model did not load."""


def unused_weights_error(problems: list[str]) -> UnusedWeightsError:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    return UnusedWeightsError(f"vLLM did not load {len(problems)} non-zero tensor(s) of this checkpoint, so it "
                              f"would score with a different model: {shown}. Score it with --backend hf, or "
                              f"use a checkpoint whose every tensor vLLM loads")


@dataclass
class WeightAudit:
    """Which checkpoint tensors a model's weight loaders consumed during one load."""

    used: set[str] = field(default_factory=set)
    unused: dict[str, str] = field(default_factory=dict)  # name -> "shape, n non-zero"
    zero_unused: list[str] = field(default_factory=list)
    seen: int = 0
    _current: str | None = None
    _current_used: bool = False

    def feed(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """Pass ``weights`` through, one at a time, noting which of them a loader takes.

        vLLM's loaders consume their iterator lazily (``itertools.groupby`` over names, then one
        loader call per tensor), so the loader calls made between two yields belong to the
        tensor just yielded."""
        for name, tensor in weights:
            self.seen += 1
            self._current, self._current_used = name, False
            yield name, tensor
            self._settle(name, tensor)
        self._current = None

    def _settle(self, name: str, tensor: Any) -> None:
        if self._current_used:
            self.used.add(name)
        elif name.endswith(DERIVED_SUFFIXES):
            self.zero_unused.append(name)
        else:
            nonzero = int(tensor.count_nonzero())
            if nonzero == 0:
                self.zero_unused.append(name)
            else:
                self.unused[name] = f"shape {tuple(tensor.shape)}, {nonzero} non-zero"

    def mark(self) -> None:
        if self._current is not None:
            self._current_used = True

    @contextmanager
    def watching(self, module: Any) -> Iterator[None]:
        """Wrap every parameter's weight loader of ``module`` so a call marks the current tensor
        used; the loaders are put back afterwards."""
        from vllm.model_executor.model_loader.weight_utils import default_weight_loader

        restore: list[tuple[Any, Any]] = []
        for _, param in module.named_parameters():
            original = getattr(param, "weight_loader", None)
            restore.append((param, original))
            param.weight_loader = self._wrap(original or default_weight_loader)
        try:
            yield
        finally:
            for param, original in restore:
                if original is None:
                    del param.weight_loader
                else:
                    param.weight_loader = original

    def _wrap(self, loader: Any) -> Any:
        def marked(*args: Any, **kwargs: Any) -> Any:
            self.mark()
            return loader(*args, **kwargs)

        return marked

    def problems(self) -> list[str]:
        return [f"{name} ({what})" for name, what in sorted(self.unused.items())]

    def check(self) -> None:
        """Raise :class:`UnusedWeightsError` if a non-zero checkpoint tensor was not loaded."""
        if self.unused:
            raise unused_weights_error(self.problems())

    def as_record(self) -> dict[str, Any]:
        return {"tensors": self.seen, "used": len(self.used), "unused_zero": sorted(self.zero_unused),
                "unused_nonzero": self.problems()}
