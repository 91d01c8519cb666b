"""What a CLI user sees on stderr: firm-lite's own log lines, and not the libraries' noise.

Library code never prints: it logs (``logging.getLogger(__name__)`` under ``firm_lite``), and
the CLI decides what reaches the screen. Default: firm-lite's INFO lines as they are (choices
made for the user, progress steps) and warnings as ``warning: ...``; ``--quiet`` keeps warnings
only, ``--verbose`` adds debug lines. Third-party import-time chatter that says nothing to a
user (torch's ``_pytree`` deprecation notes, printed when transformers imports torchao) is
dropped here and only here.
"""

from __future__ import annotations

import logging
import os
import sys

# (logger, text in the message) pairs the CLI drops: notes to library authors, not to users.
_THIRD_PARTY_NOISE = (
    ("torch.utils._pytree", "is now natively supported by torch.compile"),
)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            prefix = "error: " if record.levelno >= logging.ERROR else "warning: "
            return prefix + message
        return message


class _DropNoise(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def setup_output(verbosity: int = 0) -> None:
    """Route firm-lite's log lines to stderr (``verbosity``: -1 quiet, 0 normal, 1 verbose)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("firm_lite")
    for handler in [h for h in logger.handlers if getattr(h, "_firm_lite_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    handler._firm_lite_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    # vLLM (--backend vllm) logs every engine step of its start at INFO from each of its processes;
    # they read this when they start. A user's own setting wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbosity > 0 else "ERROR")
    for name, text in _THIRD_PARTY_NOISE:
        noisy = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) and f.text == text for f in noisy.filters):
            noisy.addFilter(_DropNoise(text))
