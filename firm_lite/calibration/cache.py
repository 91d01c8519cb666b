"""Result caches for calibration: what was computed, under exactly which inputs.

A calibration run scores the manifest with the reference once and with every variant once;
each side's per-item results are appended to a JSONL file as they finish (fsynced, one whole
line per item), so an interrupted run continues where it stopped. The file's name and its
header line carry a sha256 over everything that decides a result: model weights, manifest (its
bytes and the bytes of every image it names), prompt templates, image budget, decoding
settings, device, library versions and, for a variant, its identity and weights hash plus the
reference results it was teacher-forced on. Change any of them and the key changes: a stale
cache is never read, because lookups go by key and a header that does not match is ignored.

Weight hashes are memoised by (path, size, mtime) in ``fingerprints.json`` beside the caches;
a Hugging Face snapshot's blob names already are sha256 digests and are used as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from firm_lite.manifest import ResultWriter, read_results

CACHE_SCHEMA = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".data", ".gguf")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def manifest_fingerprint(path: str | Path, pairs: Iterable[Any]) -> str:
    """sha256 over the manifest's bytes and every image it names (in order), so re-rendered
    images under the same names invalidate the caches too."""
    h = hashlib.sha256(Path(path).read_bytes())
    for pair in pairs:
        for image in (pair.source, pair.edited):
            h.update(str(pair.id).encode("utf-8"))
            h.update(file_sha256(image).encode() if Path(image).is_file() else b"<missing>")
    return h.hexdigest()


class FingerprintMemo:
    """sha256 of weight files, memoised by (resolved path, size, mtime_ns)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._memo: dict[str, dict[str, Any]] = {}
        if self.path and self.path.exists():
            try:
                self._memo = json.loads(self.path.read_text("utf-8"))
            except json.JSONDecodeError:
                self._memo = {}

    def sha256(self, file: Path) -> str:
        real = file.resolve()
        if file.is_symlink() and _HEX64.fullmatch(real.name):
            return real.name  # Hugging Face blob: its name is its sha256
        st = real.stat()
        entry = self._memo.get(str(real))
        if entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return entry["sha256"]
        value = file_sha256(real)
        self._memo[str(real)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._memo, indent=1), "utf-8")
            os.replace(tmp, self.path)
        return value


def weights_fingerprint(folder: str | Path, memo: FingerprintMemo) -> str:
    """sha256 over a model folder's weight files, ``config.json`` and variant manifest (minus its
    ``calibration`` record, which calibration itself rewrites)."""
    from firm_lite.artifact import VARIANT_MANIFEST

    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    for file in files:
        h.update(f"{file.relative_to(folder)}={memo.sha256(file)}\n".encode())
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    manifest = folder / VARIANT_MANIFEST
    if manifest.is_file():
        meta = json.loads(manifest.read_text("utf-8"))
        meta.pop("calibration", None)
        h.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def file_slug(label: str) -> str:
    """A short, safe file-name part for a side's label (a folder's last component)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.rstrip("/").split("/")[-1])[:40] or "x"


class ResultCache:
    """Per-item results of one side (reference or a variant) under one key; ``role`` only makes
    the file name readable."""

    def __init__(self, cache_dir: str | Path, role: str, parts: dict[str, Any]) -> None:
        self.parts = {"schema": CACHE_SCHEMA, **parts}
        self.key = digest(self.parts)
        self.path = Path(cache_dir) / f"{role}-{self.key[:16]}.jsonl"

    def _header_matches(self) -> bool:
        with self.path.open("r", encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        try:
            header = json.loads(first)
        except json.JSONDecodeError:
            return False
        return isinstance(header, dict) and header.get("cache_key") == self.key

    def load(self) -> dict[str, dict[str, Any]]:
        """Items already computed under this key (empty if none, or if the file is not ours)."""
        if not self.path.exists() or not self._header_matches():
            return {}
        return read_results(self.path)

    def writer(self) -> ResultWriter:
        """Append-only writer; writes the header first on a new (or foreign) file."""
        fresh = not self.path.exists() or not self._header_matches()
        if fresh and self.path.exists():
            self.path.unlink()
        writer = ResultWriter(self.path)
        if fresh:
            writer.write({"cache_key": self.key, "parts": self.parts})
        return writer
