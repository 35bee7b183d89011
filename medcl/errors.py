"""Exception types raised by medcl.

Every error that bad data or a bad configuration can cause is one of these, with the file (where there
is one), what is wrong and, where we know it, what to do about it. Readers catch the low-level
exceptions of the libraries they call (wfdb, pyedflib, nibabel, ...) and re-raise them as
:class:`DataError` subclasses, so callers handle one family of exceptions and users never see a raw
traceback from deep inside a library for a bad file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "InvalidSignalError",
    "InvalidVolumeError",
    "MedclError",
    "MissingChannelError",
    "SplitLeakError",
    "TooManyBadSamplesError",
    "UnsupportedFormatError",
]


class MedclError(Exception):
    """Base class of every error medcl raises on purpose."""


class ConfigError(MedclError, ValueError):
    """A setting is invalid or inconsistent with another setting or with the data."""


class DataError(MedclError):
    """A file (or one sample read from it) cannot be used.

    Args:
        path: the file concerned.
        reason: what is wrong, in words a user can act on.
        hint: optionally, what to do about it.
    """

    def __init__(self, path: str | Path | None, reason: str, hint: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        self.hint = hint
        message = reason if self.path is None else f"{self.path}: {reason}"
        if hint:
            message = f"{message} ({hint})"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str | None, str, str | None]]:
        # Keep (path, reason, hint) when the error crosses a DataLoader worker boundary.
        return (self.__class__, (self.path, self.reason, self.hint))


class CorruptFileError(DataError):
    """The file is unreadable, truncated, or its header disagrees with its data."""


class UnsupportedFormatError(DataError):
    """The file's format is not one medcl reads (or it is not what its name says)."""


class MissingChannelError(DataError):
    """A channel/lead the configuration asks for is not in the record."""


class InvalidSignalError(DataError):
    """The record is readable but its values cannot be used (all-NaN or flat channels, ...)."""


class InvalidVolumeError(DataError):
    """The image or mask is readable but unusable: bad geometry (zero, negative or NaN voxel sizes, a
    singular affine), NaN voxels, a mask off its image's grid or with non-integer labels."""


class SplitLeakError(MedclError, ValueError):
    """A patient appears in more than one data split."""


class TooManyBadSamplesError(MedclError):
    """In ``on_error='skip'`` mode, more samples failed than the configured fraction allows."""
