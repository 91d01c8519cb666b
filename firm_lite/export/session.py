"""What every export run shares: stage progress, scoped settings, the folder's finishing touches
and the summary the user reads at the end.

Quantization libraries are configured through environment variables and print a lot; both are
kept inside the export: :func:`scoped_env` sets variables only for the duration of the run and
restores them, and :func:`library_output` sends the library's stdout chatter to a log file that
ends up in the exported folder (its tail is shown if the run fails). Our own progress goes to
stderr, the summary to the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXPORT_LOG = "export.log"


class Stages:
    """Numbered stage lines on stderr ("[2/5] quantizing ... 3.1 s")."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.enabled, self.n = total, enabled, 0
        self.start = time.perf_counter()
        self._t = self.start

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        self.n += 1
        if self.enabled:
            logger.info("[%d/%d] %s (t=%.1fs)", self.n, self.total, what, now - self.start)
        self._t = now

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set environment variables (``None``: leave as is) for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def library_output(enabled: bool = True) -> Iterator[Path | None]:
    """Redirect file descriptor 1 (where quantization libraries print) into a temp log file.

    Yields the log path (None when disabled). On an exception the log's tail goes to stderr."""
    if not enabled:
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="firm-lite-export-", suffix=".log")
    log = Path(name)
    # Python-level too, for callers whose sys.stdout is not fd 1 (notebooks, test runners). The
    # stream is flushed, not closed: a library that kept a reference must not write to a closed file.
    stream = open(os.dup(fd), "w", encoding="utf-8", errors="replace")  # noqa: SIM115
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(fd, 1)
    failed = False
    try:
        with contextlib.redirect_stdout(stream):
            yield log
    except BaseException:
        failed = True
        raise
    finally:
        stream.flush()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(fd)
        if failed:
            tail = log.read_text("utf-8", errors="replace").splitlines()[-15:]
            logger.error("\n".join(["--- last lines of the quantization log ---", *tail, f"--- full log: {log}"]))


def keep_log(log: Path | None, folder: Path) -> None:
    """Move the run's library log into the exported folder."""
    if log is not None and log.exists():
        target = Path(folder) / EXPORT_LOG
        shutil.move(str(log), str(target))
        target.chmod(0o644)


def make_greedy(folder: Path) -> dict[str, Any]:
    """Rewrite generation_config.json for greedy decoding (the FIRM protocol); quantization
    libraries and instruct checkpoints write sampling settings there."""
    from transformers import GenerationConfig

    path = Path(folder)
    try:
        config = GenerationConfig.from_pretrained(path)
    except OSError:
        config = GenerationConfig()
    config.do_sample = False
    config.temperature = config.top_p = config.top_k = None
    config.save_pretrained(path)
    return config.to_diff_dict()


@dataclass
class ExportResult:
    """What an export made; :meth:`summary` is what the CLI prints."""

    folder: Path
    manifest: dict[str, Any]
    seconds: float
    bytes_on_disk: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        m = self.manifest
        mib = self.bytes_on_disk / 2**20
        weights = sum(e["bytes"] for e in m["weights"].values()) / 2**20
        lines = [f"exported {m['variant']} ({m['backend']}, {m['bits']}-bit) to {self.folder} in {self.seconds:.1f} s",
                 f"  size on disk: {mib:.2f} MiB (weights {weights:.2f} MiB in {len(m['weights'])} file(s))",
                 f"  quantized: {', '.join(m['quantized'])} ({m.get('quantized_linear_layers', '?')} Linear layers)",
                 f"  kept unquantized ({m['recipe']['settings'].get('dtype')}): {', '.join(m['kept'])}"]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  use it: firm-lite score --variant {self.folder} ...")
        return "\n".join(lines)
