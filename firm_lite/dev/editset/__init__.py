"""A labelled image-edit set made offline from real photos, to measure critics against.

FIRM-Bench's human labels are not available offline, and a critic (the tiny one, or a quantized
8B variant) needs ground truth to be judged by. This package makes it: crops of the photographs
scikit-image ships (:mod:`.photos`), procedural edits in eleven families with varied wording
(:mod:`.families`, :mod:`.pixels`), execution and consistency labels fixed by construction
(:mod:`.labels`), a seeded generator with train and held-out splits (:mod:`.generator`), the
committed/cached manifests (:mod:`.store`) and agreement metrics for scored records
(:mod:`.metrics`). ``python -m firm_lite.dev.editset`` regenerates the committed manifests.

Public API (imports are lazy)::

    from firm_lite.dev.editset import ensure_editset, read_labels, editset_report
    manifest = ensure_editset("heldout")            # Path to the JSONL manifest
    report = editset_report(records, read_labels(manifest))
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ensure_editset": ("firm_lite.dev.editset.store", "ensure_editset"),
    "write_split": ("firm_lite.dev.editset.store", "write_split"),
    "SPLIT_SPECS": ("firm_lite.dev.editset.store", "SPLIT_SPECS"),
    "generate": ("firm_lite.dev.editset.generator", "generate"),
    "iter_items": ("firm_lite.dev.editset.generator", "iter_items"),
    "EditItem": ("firm_lite.dev.editset.generator", "EditItem"),
    "read_labels": ("firm_lite.dev.editset.metrics", "read_labels"),
    "editset_report": ("firm_lite.dev.editset.metrics", "editset_report"),
    "mae_by_mode": ("firm_lite.dev.editset.metrics", "mae_by_mode"),
    "format_report": ("firm_lite.dev.editset.metrics", "format_report"),
    "labels_for": ("firm_lite.dev.editset.labels", "labels_for"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'firm_lite.dev.editset' has no attribute {name!r}")
