"""Exceptions raised across the toolkit.

All input problems are ``ValueError`` subclasses so ``except ValueError`` keeps working;
each message names the field, what was expected and what was given.
"""

from __future__ import annotations


class InputError(ValueError):
    """A reward input is missing or malformed.

    >>> str(InputError("images", "(B,3,H,W) float in [0,1]", "shape (3, 8, 8)"))
    "images: expected (B,3,H,W) float in [0,1], got shape (3, 8, 8)"
    """

    def __init__(self, field: str, expected: str, given: str, hint: str = "") -> None:
        self.field, self.expected, self.given = field, expected, given
        msg = f"{field}: expected {expected}, got {given}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ItemReadError(ValueError):
    """A file (image, video, text) could not be read or decoded."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot read ({reason})")


class CheckpointError(RuntimeError):
    """A checkpoint does not match the model it is loaded into (strict loading)."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[str] | None = None,
        source: str = "checkpoint",
        limit: int = 20,
    ) -> None:
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched = list(mismatched or [])

        def _fmt(title: str, keys: list[str]) -> str:
            shown = ", ".join(keys[:limit])
            more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return f"\n  {title} ({len(keys)}): {shown}{more}"

        msg = f"{source} does not match the model (strict loading)"
        if self.missing:
            msg += _fmt("missing keys", self.missing)
        if self.unexpected:
            msg += _fmt("unexpected keys", self.unexpected)
        if self.mismatched:
            msg += _fmt("shape mismatches", self.mismatched)
        super().__init__(msg)


class WeightsNotFoundError(FileNotFoundError):
    """Weights for a registered reward model are not available locally and cannot be fetched."""


class RemoteCodeError(PermissionError):
    """Loading would execute code from outside the installed packages without permission."""
