"""Exception types raised by medcl.

Every error that bad data or a bad configuration can cause is one of these, with the file (where there
is one), what is wrong and, where we know it, what to do about it. Readers catch the low-level
exceptions of the libraries they call (wfdb, pyedflib, nibabel, ...) and re-raise them as
:class:`DataError` subclasses, so callers handle one family of exceptions and users never see a raw
traceback from deep inside a library for a bad file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "LOG_IDS_ENV",
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
    "shown_ids",
]

#: Patient identifiers stay out of messages, logs and reports (they give counts) unless the user sets
#: this environment variable to ``1``. Per-patient records the user needs (manifests, ``splits.csv``,
#: ``quarantine.csv``) are written only into the run or output folder.
LOG_IDS_ENV = "MEDCL_LOG_IDS"


def shown_ids(ids: Iterable[object], limit: int = 5) -> str:
    """The part of a message that names patients: ``" (e.g. 15709, 13243)"`` when the user opted in with
    ``MEDCL_LOG_IDS=1``, else how to opt in (the message itself gives the count)."""
    if os.environ.get(LOG_IDS_ENV, "") != "1":
        return f" (set {LOG_IDS_ENV}=1 to name them)"
    ids = list(ids)
    more = ", ..." if len(ids) > limit else ""
    return f" (e.g. {', '.join(str(i) for i in ids[:limit])}{more})"


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
    """A patient appears in more than one data split.

    Attributes:
        patient_ids: the leaking patients (the message gives their number; see :data:`LOG_IDS_ENV`).
    """

    patient_ids: list[str]

    def __init__(self, message: str, patient_ids: Iterable[object] = ()) -> None:
        super().__init__(message)
        self.patient_ids = [str(p) for p in patient_ids]


class TooManyBadSamplesError(MedclError):
    """In ``on_error='skip'`` mode, more samples failed than the configured fraction allows."""
