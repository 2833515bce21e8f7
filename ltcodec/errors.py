"""The typed errors of ltcodec.  Every failure a user can cause raises one of these, never an assert."""

from __future__ import annotations

__all__ = ["LtcError", "LtcFormatError", "LtcModelError", "LtcInputError"]


class LtcError(Exception):
    """Base class of every ltcodec error; its message is one line meant for a person."""


class LtcFormatError(LtcError, ValueError):
    """A .ltc file is malformed, truncated, corrupt, oversized or of an unknown version."""


class LtcModelError(LtcError):
    """A model is missing, damaged, or not the one a file was encoded with."""


class LtcInputError(LtcError, ValueError):
    """An input image or sound cannot be encoded (unreadable, unsupported mode, bad parameters)."""
