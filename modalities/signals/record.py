"""The in-memory form of one physiological recording, as every signal reader returns it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["SignalRecord"]


@dataclass(frozen=True)
class SignalRecord:
    """One multichannel recording in physical units.

    Attributes:
        data: samples, channel first. Shape ``(C, T)``, float32, physical units (e.g. mV for ECG,
            uV for EEG) with gain and baseline already applied; invalid samples are NaN.
        fs: sampling frequency in Hz (every channel has this rate: multi-frequency records are
            resampled to one rate by the reader).
        channel_names: one name per channel, length ``C``, as stored in the file (e.g. ``"V1"``,
            ``"EEG Fp1"``).
        units: physical unit of each channel, length ``C`` (``""`` when the file does not say).
        path: the file the record was read from (for error messages and provenance).
        extra: format-specific details worth keeping (e.g. WFDB comments, EDF start time).
    """

    data: np.ndarray
    fs: float
    channel_names: tuple[str, ...]
    units: tuple[str, ...]
    path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 2:
            raise ValueError(f"{self.path}: signal data must be (C, T), got shape {self.data.shape}")
        if len(self.channel_names) != self.data.shape[0] or len(self.units) != self.data.shape[0]:
            raise ValueError(
                f"{self.path}: {self.data.shape[0]} channels but {len(self.channel_names)} names and "
                f"{len(self.units)} units"
            )
        if not self.fs > 0:
            raise ValueError(f"{self.path}: sampling frequency must be > 0, got {self.fs}")

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def with_data(self, data: np.ndarray, **changes: Any) -> SignalRecord:
        """A copy with new ``data`` (and any other field changed), e.g. after resampling."""
        return replace(self, data=data, **changes)
