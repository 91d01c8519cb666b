"""The provenance manifest of an exported variant folder, and the folder's atomic life cycle.

Every exported folder carries ``firm_lite_variant.json``: which registered backend loads it, the
source model and revision, the recipe, bits/group size, the calibration data (hash and size), the
image-token budget, library versions and the sha256 of every weight file. Loading refuses a
folder whose weight files do not match (tampered, truncated, swapped). The ``"calibration"`` key
is reserved for the calibration harness's verdict, written by :func:`record_calibration`; the
hash check covers weight files only, so recording a verdict never invalidates a folder.

:func:`staged_folder` owns the write path: everything is written into a hidden sibling temp
folder that is renamed into place only when complete, so an interrupted export leaves nothing
half-written at ``--out``. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.variants import VARIANT_MANIFEST, read_variant_manifest

MANIFEST_FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CALIBRATION_KEY = "calibration"
_LIBRARIES = ("firm-lite", "torch", "transformers", "gptqmodel", "optimum", "bitsandbytes", "accelerate",
              "safetensors")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions (from package metadata: nothing is imported)."""
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def hash_weights(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {sha256, bytes} for every weight file under ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in weight_files(folder)}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write (or replace) the manifest atomically: temp file in the same folder, fsync, rename."""
    path = Path(folder) / VARIANT_MANIFEST
    tmp = path.with_name(f".{VARIANT_MANIFEST}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def record_calibration(folder: str | Path, verdict: dict[str, Any]) -> None:
    """Store a calibration verdict under ``"calibration"``; only the manifest is rewritten."""
    folder = Path(folder)
    manifest = read_variant_manifest(folder)
    manifest[CALIBRATION_KEY] = verdict
    write_manifest(folder, manifest)


def verify_weights(folder: str | Path, manifest: dict[str, Any] | None = None) -> None:
    """Refuse a folder whose weight files differ from the manifest (size first, then sha256)."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_variant_manifest(folder)
    recorded = manifest.get("weights")
    if not isinstance(recorded, dict) or not recorded:
        raise UserError(f"{folder}: {VARIANT_MANIFEST} records no weight hashes; re-export the variant")
    present = {p.relative_to(folder).as_posix() for p in weight_files(folder)}
    unrecorded = sorted(present - set(recorded))
    if unrecorded:
        raise UserError(f"{folder}: weight file(s) {unrecorded} are not in {VARIANT_MANIFEST}; "
                        "the folder was modified after export (re-export it)")
    for name, entry in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: weight file {name} is missing; re-export the variant")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise UserError(f"{folder}: weight file {name} is {size} bytes, {entry.get('bytes')} recorded "
                            "(truncated or replaced); re-export the variant")
        if sha256_file(path) != entry.get("sha256"):
            raise UserError(f"{folder}: weight file {name} does not match its recorded sha256 "
                            "(tampered or corrupted); re-export the variant")


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


def check_exported_folder(folder: str | Path, backend: str) -> dict[str, Any] | None:
    """What every folder backend does before loading: the manifest names ``backend`` and the
    weight files match it. A folder without a manifest (a checkpoint made elsewhere, named
    explicitly as ``BACKEND:DIR``) loads with a warning instead; returns its manifest or None."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--variant {backend}:{folder}: no such folder")
    if not (folder / VARIANT_MANIFEST).exists():
        print(f"warning: {folder} has no {VARIANT_MANIFEST} (not exported by firm-lite): provenance unknown, "
              "weight hashes not verified", file=sys.stderr)
        return None
    manifest = read_variant_manifest(folder)
    if manifest.get("backend") != backend:
        raise UserError(f"{folder}: exported for backend {manifest.get('backend')!r}, not {backend!r}")
    verify_weights(folder, manifest)
    return manifest
