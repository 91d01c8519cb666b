"""ONNX Runtime backend: runs the critic's three exported graphs (``embed``, ``vision``,
``decoder``) with a greedy loop that stands in for ``generate``, so scoring goes through the same
core as every other variant.

Modules: :mod:`.layout` (the graph contract shared with the exporter), :mod:`.host` (host-side
tensors), :mod:`.runtime` (ORT sessions), :mod:`.generate` (the generate stand-in). The export
side (graphs, patches, quantization, TensorRT engines) is a builder: :mod:`firm_lite.export.onnx`.
Nothing heavy is imported here.
"""
