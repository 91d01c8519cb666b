"""Package data: published model config shapes, so the fit planner works offline.

``qwen3_vl_8b.json`` is the ``config.json`` of Qwen/Qwen3-VL-8B-Instruct (FIRM-Edit-8B is a full
fine-tune with the same shape). :mod:`firm_lite.plan` builds it on the meta device: exact
parameter counts without downloading a single weight.
"""
