"""Backends: how each variant is loaded (reference precisions, bitsandbytes, GPTQ, ONNX, noisy).

Each module registers its variants in :mod:`firm_lite.variants.registry` (core), which imports
them lazily by name. Backends read exported folders through :mod:`firm_lite.artifact` and never
import the builders (``firm_lite.export``).
"""
