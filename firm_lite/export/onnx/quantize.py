"""Weight quantization of exported graphs: int8 dynamic (MatMulInteger) and int4 weight-only
(MatMulNBits), both from onnxruntime's own quantizers.

Only matrix products with a constant weight are quantized (linear layers; never the attention
products of two activations). The exporter writes 2-D linear layers (the vision encoder's) as
``Gemm``, which neither quantizer takes, so those are first rewritten as ``MatMul`` + ``Add``
with the weight transposed once. ``lm_head`` is kept in float unless asked otherwise: the score
read-out is a softmax over its logits. The embedding table (``embed`` graph) stays float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUANTIZED_GRAPHS = ("vision", "decoder")
TWO_GB = 2 * 1024 ** 3
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata the torch exporter writes


@dataclass
class QuantReport:
    """What one graph's quantization did; recorded in the variant manifest."""

    scheme: str
    quantized: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "quantized_nodes": len(self.quantized), "kept_float": self.kept_float}


def _initializers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def gemm_to_matmul(model: Any) -> int:
    """Rewrite ``Gemm(A, W, b)`` with a constant ``W`` (transB=1, alpha=beta=1) as ``MatMul(A, W^T)
    + b`` in place; returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    rewritten, nodes = 0, []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = (attrs.get("transA", 0) == 0 and attrs.get("transB", 0) == 1 and attrs.get("alpha", 1.0) == 1.0
                  and attrs.get("beta", 1.0) == 1.0)
        if node.op_type != "Gemm" or not simple or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = inits[node.input[1]]
        transposed = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), weight.name + "_t")
        model.graph.initializer.append(transposed)
        has_bias = len(node.input) > 2 and node.input[2]
        product = node.output[0] + "_matmul" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], transposed.name], [product], name=node.name + "_matmul")
        matmul.metadata_props.extend(node.metadata_props)
        nodes.append(matmul)
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        onnx.checker.check_model(model, full_check=False)
    return rewritten


def _scope(node: Any) -> str:
    return next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), "")


def weight_matmuls(model: Any, keep_lm_head: bool) -> tuple[list[str], list[str]]:
    """(MatMul nodes with a constant weight to quantize, those kept float)."""
    inits = _initializers(model)
    chosen, kept = [], []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            (kept if keep_lm_head and "lm_head" in _scope(node) else chosen).append(node.name)
    return chosen, kept


def _int8(model: Any, dst: Path, nodes: list[str], kept: list[str], large: bool, block_size: int) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_quantize=nodes, nodes_to_exclude=kept,
                     use_external_data_format=large, extra_options={"MatMulConstBOnly": True})


def _int4(model: Any, dst: Path, nodes: list[str], kept: list[str], large: bool, block_size: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                     nodes_to_exclude=kept, nodes_to_include=nodes)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)


# scheme -> (writer, manifest weight bits)
SCHEMES: dict[str, tuple[Callable[..., None], float]] = {"int8": (_int8, 8.0), "int4": (_int4, 4.0)}


def quantize_graph(src: Path, dst: Path, scheme: str, keep_lm_head: bool = True, block_size: int = 128
                   ) -> QuantReport:
    """Quantize the weight MatMuls of the graph at ``src`` into ``dst`` with ``scheme``."""
    import onnx

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r} (known: {', '.join(SCHEMES)})")
    model = onnx.load(str(src))
    gemm_to_matmul(model)
    nodes, kept = weight_matmuls(model, keep_lm_head)
    large = sum(len(t.raw_data) for t in model.graph.initializer) > TWO_GB  # protobuf's own limit
    writer, _bits = SCHEMES[scheme]
    if nodes:
        writer(model, Path(dst), nodes, kept, large, block_size)
    else:
        onnx.save(model, str(dst), save_as_external_data=large)
    return QuantReport(scheme, nodes, kept)
