"""Deterministic shards of a manifest: N independent processes (one per GPU, a SLURM array task,
a node each) score disjoint parts of one manifest, each into its own resumable ``--out``.

A row belongs to shard ``K`` of ``N`` (``K`` counted from 0, as ``$SLURM_ARRAY_TASK_ID`` with
``--array=0-(N-1)`` and torch ranks are) when the first 8 bytes of ``sha256(id)`` modulo ``N`` are
``K``. The split is by **id**, not by line: the manifest is read whole first (so duplicate ids are
found across the whole file), a duplicate's error row lands in the same shard as the line it
repeats, and a row stays in its shard when lines are added or reordered. ``sha256`` and not
``hash()``: Python salts string hashes per process, and every process must agree.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from firm_lite.errors import UserError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``Shard.parse("0/4")``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"--shard {self.index}/{self.count}: expected K/N with N >= 1 and 0 <= K < N "
                            f"(shards are counted from 0: 0/{max(self.count, 1)} .. {max(self.count, 1) - 1}/"
                            f"{max(self.count, 1)})")

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        if isinstance(text, Shard):
            return text
        match = _SPEC.fullmatch(str(text))
        if not match:
            raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards")
        return cls(int(match.group(1)), int(match.group(2)))

    def holds(self, pair_id: str) -> bool:
        """True when the row with this id belongs to this shard."""
        digest = hashlib.sha256(pair_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
