"""The exported-variant folder format: one module for the code that writes folders and the code
that loads them.

Every exported folder carries ``firm_lite_variant.json``: which registered backend loads it, the
source model and revision, the recipe, bits/group size, the GPTQ calibration samples (hash and
size), the image-token budget, library versions and the sha256 of every weight file. Loading
refuses a folder whose weight files do not match (tampered, truncated, swapped). The
``"calibration"`` key holds the drift harness's verdict (:func:`record_calibration`); the hash
check covers weight files only, so recording a verdict never invalidates a folder, and
:func:`calibration_warning` is the one line a user sees when a folder was never calibrated or
failed. Builders (``firm_lite.export``) write folders with this module, backends
(``firm_lite.variants``) read them with it. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError

log = logging.getLogger(__name__)

VARIANT_MANIFEST = "firm_lite_variant.json"
MANIFEST_FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CALIBRATION_KEY = "calibration"
_LIBRARIES = ("firm-lite", "torch", "transformers", "gptqmodel", "optimum", "bitsandbytes", "accelerate",
              "safetensors")


def read_variant_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / VARIANT_MANIFEST
    if not path.exists():
        raise UserError(f"{folder}: not an exported variant folder (no {VARIANT_MANIFEST})")
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: broken variant manifest ({exc})") from None


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


def check_exported_folder(folder: str | Path, backend: str) -> dict[str, Any] | None:
    """What every folder backend does before loading: the manifest names ``backend`` and the
    weight files match it. A folder without a manifest (a checkpoint made elsewhere, named
    explicitly as ``BACKEND:DIR``) loads with a warning instead; returns its manifest or None."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--variant {backend}:{folder}: no such folder")
    if not (folder / VARIANT_MANIFEST).exists():
        log.warning("%s has no %s (not exported by firm-lite): provenance unknown, weight hashes not "
                    "verified", folder, VARIANT_MANIFEST)
        return None
    manifest = read_variant_manifest(folder)
    if manifest.get("backend") != backend:
        raise UserError(f"{folder}: exported for backend {manifest.get('backend')!r}, not {backend!r}")
    verify_weights(folder, manifest)
    return manifest


def calibration_warning(folder: str | Path | None) -> str | None:
    """One line when the exported variant in ``folder`` is uncalibrated or failed, else None."""
    if not folder:
        return None
    path = Path(folder) / VARIANT_MANIFEST
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # loading the variant already reported what is wrong with its manifest
    verdict = meta.get(CALIBRATION_KEY) if isinstance(meta, dict) else None
    if not isinstance(verdict, dict):
        return (f"variant {folder} was never calibrated; run `firm-lite calibrate --variant {folder}` "
                "before trusting its scores")
    if not verdict.get("passed"):
        why = "; ".join(verdict.get("failures") or [])[:160]
        return (f"variant {folder} FAILED calibration on {str(verdict.get('created', '?'))[:10]}"
                f"{f' ({why})' if why else ''}: its scores drift from the reference")
    return None
