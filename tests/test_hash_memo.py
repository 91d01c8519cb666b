"""Loading an exported folder verifies every weight file's sha256, but a folder already verified
and unchanged is not read again: the memo is keyed by (device, inode, size, mtime, ctime), so any
change to a file (even one that keeps its size, or a copy in its place) brings the hash back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import firm_lite.artifact as artifact
from firm_lite.artifact import HashMemo, hash_weights, verify_weights
from firm_lite.errors import UserError


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "variant"
    out.mkdir()
    (out / "model.safetensors").write_bytes(os.urandom(4096))
    (out / "extra.bin").write_bytes(os.urandom(1000))
    return out


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = artifact.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(artifact, "sha256_file", counting)
    return calls


def test_a_verified_folder_is_not_hashed_again(folder: Path, hashed: list[str]) -> None:
    manifest = {"weights": hash_weights(folder)}
    hashed.clear()
    verify_weights(folder, manifest)  # first load: the memo is empty (another process wrote nothing)
    assert sorted(hashed) == ["extra.bin", "model.safetensors"]
    assert (folder.parent / "cache" / "firm-lite" / HashMemo.FILE).is_file()
    hashed.clear()
    verify_weights(folder, manifest)  # a new memo object reads the saved file, as a new process would
    assert hashed == []


def test_a_changed_file_is_hashed_again_and_refused(folder: Path, hashed: list[str]) -> None:
    manifest = {"weights": hash_weights(folder)}
    verify_weights(folder, manifest)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back: ctime still moves
    hashed.clear()
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        verify_weights(folder, manifest)
    assert hashed == ["model.safetensors"]


def test_a_copy_in_place_is_a_new_file(folder: Path, hashed: list[str]) -> None:
    manifest = {"weights": hash_weights(folder)}
    verify_weights(folder, manifest)
    weights = folder / "model.safetensors"
    shutil.copy2(weights, folder / "copy")
    os.replace(folder / "copy", weights)  # same bytes and mtime, new inode
    hashed.clear()
    verify_weights(folder, manifest)
    assert hashed == ["model.safetensors"]


def test_a_broken_or_unwritable_memo_only_costs_a_hash(folder: Path, hashed: list[str], tmp_path: Path) -> None:
    manifest = {"weights": hash_weights(folder)}
    memo_file = tmp_path / "cache" / "firm-lite" / HashMemo.FILE
    memo_file.parent.mkdir(parents=True)
    memo_file.write_text("{not json")
    hashed.clear()
    verify_weights(folder, manifest)
    assert len(hashed) == 2
    blocked = HashMemo(tmp_path / "not-a-dir" / "memo.json")
    (tmp_path / "not-a-dir").write_text("a file where the folder should be")
    verify_weights(folder, manifest, memo=blocked)  # cannot save: still verifies
