"""Writing an exported variant folder: its atomic life cycle and the fields every manifest starts with.

The folder format itself (manifest name, weight hashes, verification, the calibration verdict) is
:mod:`firm_lite.artifact`, shared with the backends that load folders. :func:`staged_folder` owns
the write path: everything is written into a hidden sibling temp folder that is renamed into
place only when complete, so an interrupted export leaves nothing half-written at ``--out``.
Nothing here imports torch.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from firm_lite.artifact import CALIBRATION_KEY, MANIFEST_FORMAT, library_versions, now_iso, sha256_file
from firm_lite.errors import UserError


def check_out_folder(out: Path, overwrite: bool, source: Path | None = None) -> Path:
    """Refuse a non-empty ``--out`` without ``--overwrite``, and never overwrite the source."""
    out = Path(out).expanduser().resolve()
    if source is not None:
        src = Path(source).resolve()
        if out == src or src.is_relative_to(out):
            raise UserError(f"--out {out}: that is (or contains) the source model folder; choose another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: folder exists and is not empty; pass --overwrite to replace it")
    return out


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    stage = out.parent / f".{out.name}.partial-{tag}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{tag}"
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def base_manifest(*, backend: str, variant: str, source: Any, recipe: Any, overrides: dict[str, Any],
                  image_budget: dict[str, Any] | None) -> dict[str, Any]:
    """The fields every exported folder records (weights/export sections are added at the end)."""
    config = Path(source.path) / "config.json"
    return {
        "format": MANIFEST_FORMAT,
        "backend": backend,
        "variant": variant,
        "created": now_iso(),
        "source": {"model_id": source.model_id, "revision": source.revision,
                   "config_sha256": sha256_file(config) if config.is_file() else None},
        "recipe": {"name": recipe.name, "file": recipe.source, "sha256": recipe.sha256,
                   "overrides": overrides, "settings": recipe.settings()},
        "bits": recipe.bits,
        "quantized": list(recipe.quantize),
        "kept": list(recipe.keep),
        "image_budget": image_budget,
        "versions": library_versions(),
        "python": sys.version.split()[0],
        CALIBRATION_KEY: None,
    }
