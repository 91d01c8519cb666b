"""The weight audit on a small module whose loader drops what vLLM's does: unexpected biases."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from firm_lite.vllm_backend.weights import UnusedWeightsError, WeightAudit  # noqa: E402


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4, bias=False)

    def load_weights(self, weights):
        """Like vLLM's AutoWeightsLoader: unknown ``.bias`` tensors are skipped without a word."""
        params = dict(self.named_parameters())
        for name, tensor in weights:
            if name not in params and name.endswith(".bias"):
                continue
            loader = getattr(params[name], "weight_loader", None)
            loader(params[name], tensor)


def _load(weights: dict) -> WeightAudit:
    layer, audit = Layer(), WeightAudit()
    with audit.watching(layer):
        layer.load_weights(audit.feed(weights.items()))
    assert not hasattr(layer.proj.weight, "weight_loader"), "the loaders must be put back"
    return audit


def test_every_tensor_loaded() -> None:
    audit = _load({"proj.weight": torch.ones(4, 4)})
    assert audit.used == {"proj.weight"} and not audit.unused
    audit.check()


def test_a_zero_tensor_may_go_unused() -> None:
    audit = _load({"proj.weight": torch.ones(4, 4), "proj.bias": torch.zeros(4)})
    assert audit.zero_unused == ["proj.bias"]
    audit.check()


def test_a_dropped_nonzero_tensor_is_refused() -> None:
    audit = _load({"proj.bias": torch.tensor([0.0, 0.5, 0.0, 0.0]), "proj.weight": torch.ones(4, 4)})
    assert audit.used == {"proj.weight"}
    with pytest.raises(UnusedWeightsError, match=r"1 non-zero tensor.*proj\.bias \(shape \(4,\), 1 non-zero\)"):
        audit.check()
