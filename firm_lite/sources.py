"""Where a critic's weights come from: the hub id, a local folder, or the offline tiny critic.

``--model`` accepts ``VisionXLab/FIRM-Edit-8B`` (default), any local folder in the Hugging Face
layout, or ``tiny``. A hub id is looked up in the local Hugging Face cache first; if it is not
there and the hub cannot be reached, the user gets one line saying how to get it. The resolved
:class:`ModelSource` carries what provenance records need (id, revision, local path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from firm_lite.errors import UserError

DEFAULT_MODEL = "VisionXLab/FIRM-Edit-8B"
TINY = "tiny"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``path`` is a local folder holding config, processor files and weights."""

    model_id: str
    path: Path
    revision: str | None

    def as_record(self) -> dict[str, str | None]:
        return {"model_id": self.model_id, "path": str(self.path), "revision": self.revision}


def tiny_critic_dir() -> Path:
    """The shipped tiny critic (package data, built by ``python -m firm_lite.dev.tiny_critic``)."""
    from importlib import resources

    return Path(str(resources.files("firm_lite") / "assets" / "tiny-critic"))


def _folder_revision(path: Path) -> str | None:
    """A content revision for a local folder: the tiny critic's recorded hash, the HF snapshot
    hash when the folder is one, else a hash of the weight-index/config (cheap, not the weights)."""
    tiny_meta = path / "firm_lite_tiny.json"
    if tiny_meta.exists():
        meta = json.loads(tiny_meta.read_text("utf-8"))
        return meta.get("sha256", {}).get("model.safetensors") or meta.get("model_sha256")
    if path.parent.name == "snapshots":
        return path.name
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        f = path / name
        if f.exists():
            h.update(f.read_bytes())
    return "cfg-" + h.hexdigest()[:16]


PROCESSOR_FILES = ["*.json", "*.jinja", "*.txt", "tokenizer*", "*.model"]  # everything but the weights


def resolve_model(model: str = DEFAULT_MODEL, revision: str | None = None,
                  allow_download: bool = True, processor_only: bool = False) -> ModelSource:
    """Resolve ``model`` to a local folder, downloading a hub id only if allowed and reachable
    (``processor_only``: the config, tokenizer and processor files, not the weights; for a
    client of a remote server)."""
    if model == TINY:
        path = tiny_critic_dir()
        if not (path / "config.json").exists():
            raise UserError(f"the tiny critic is missing from {path}: rebuild it with "
                            "`python -m firm_lite.dev.tiny_critic`")
        return ModelSource(model_id="firm-lite/tiny-critic", path=path, revision=_folder_revision(path))
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise UserError(f"--model {model}: folder has no config.json (expected a Hugging Face model folder)")
        return ModelSource(model_id=str(local.resolve()), path=local.resolve(), revision=_folder_revision(local))
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise UserError(f"--model {model}: no such folder, and not a hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise UserError(f"huggingface_hub is needed to resolve hub ids: {exc}") from None
    how = (f"download it where there is network (`hf download {model}`), copy the folder here and pass "
           f"--model /path/to/folder, or use --model tiny for the offline test critic")
    patterns = PROCESSOR_FILES if processor_only else None
    try:
        path = snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=patterns)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        if not allow_download:
            raise UserError(f"model {model} is not in the local Hugging Face cache: {how}") from None
        try:
            path = snapshot_download(model, revision=revision, allow_patterns=patterns)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"model {model} is not available offline and the hub could not be reached "
                            f"({reason}): {how}") from None
    path = Path(path)
    return ModelSource(model_id=model, path=path, revision=revision or path.name)
