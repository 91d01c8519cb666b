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

Hashing 16-33 GB of weights on every load would cost a minute or more, so :class:`HashMemo`
remembers each file's sha256 under what changes whenever the file does: device, inode, size,
mtime and ctime (ctime cannot be set back by a user, so ``touch -d`` does not forge a match). A
verified folder is re-hashed only after a change; the memo lives in the user's cache
(``$XDG_CACHE_HOME/firm-lite``), so it guards against accidents and other users, not against
someone who can already write that user's files.
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


def user_cache_dir() -> Path:
    """firm-lite's folder in the user's cache (``$XDG_CACHE_HOME/firm-lite``, else ``~/.cache/firm-lite``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "firm-lite"


class HashMemo:
    """sha256 of files already hashed, keyed by (device, inode, size, mtime_ns, ctime_ns).

    ``HashMemo()`` uses ``user_cache_dir()/file-sha256.json``; ``HashMemo(None)`` remembers
    nothing across processes. :meth:`save` writes atomically; a memo that cannot be read or
    written is treated as empty (it only ever saves work)."""

    FILE = "file-sha256.json"
    _default = object()

    def __init__(self, path: Path | None | object = _default) -> None:
        self.path: Path | None = user_cache_dir() / self.FILE if path is HashMemo._default else path
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text("utf-8"))
            except (OSError, ValueError):
                loaded = {}
            self._entries = loaded if isinstance(loaded, dict) else {}

    @staticmethod
    def _key(path: Path) -> tuple[str, list[int]]:
        st = path.stat()
        return str(path.resolve()), [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def known(self, path: Path) -> str | None:
        """The remembered sha256 of ``path`` if the file has not changed since, else None."""
        name, stamp = self._key(path)
        entry = self._entries.get(name)
        if isinstance(entry, dict) and entry.get("stat") == stamp:
            return entry.get("sha256")
        return None

    def sha256(self, path: Path) -> str:
        """``path``'s sha256: remembered, or computed now and remembered."""
        path = Path(path)
        value = self.known(path)
        if value is None:
            name, stamp = self._key(path)
            value = sha256_file(path)
            if self._key(path)[1] == stamp:  # unchanged while it was read: safe to remember
                self._entries[name] = {"stat": stamp, "sha256": value}
                self._dirty = True
        return value

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        live = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        tmp = self.path.with_name(f".{self.FILE}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(live, indent=0), "utf-8")
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError as exc:  # a read-only cache only costs a re-hash next time
            log.debug("could not save the hash memo %s: %s", self.path, exc)
            if tmp.exists():
                tmp.unlink()


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


def verify_weights(folder: str | Path, manifest: dict[str, Any] | None = None, memo: HashMemo | None = None) -> None:
    """Refuse a folder whose weight files differ from the manifest (size first, then sha256;
    a file unchanged since it was last hashed is not read again, see :class:`HashMemo`)."""
    folder = Path(folder)
    memo = memo if memo is not None else HashMemo()
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
        if memo.sha256(path) != entry.get("sha256"):
            memo.save()
            raise UserError(f"{folder}: weight file {name} does not match its recorded sha256 "
                            "(tampered or corrupted); re-export the variant")
    memo.save()


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
