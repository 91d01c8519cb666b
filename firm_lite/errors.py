"""User-facing errors.

A :class:`UserError` is something the person running firm-lite can fix (a bad file, a bad flag, a
missing extra, a model that is not available offline). The CLI prints its message as one line and
exits non-zero, never with a traceback. Programming errors are ordinary exceptions and are not
caught.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; ``str(err)`` is the one line shown to them."""

    exit_code = 2


class PairError(UserError):
    """One edit pair that cannot be scored (bad image, empty instruction); batch jobs record it
    against that pair and go on."""


class ImageError(PairError):
    """An input image that cannot be used (missing, empty, truncated, not an image, too big)."""


class ManifestError(UserError):
    """A manifest line that is not a valid edit pair."""


def missing_extra(extra: str, package: str) -> UserError:
    """The one-line error for an optional backend that is not installed."""
    return UserError(f"{package} is not installed: pip install \"firm-lite[{extra}]\"")
