"""Signal-quality checks: find channels a model cannot learn from (all NaN, too many NaN, flat).

:func:`check_signal_quality` lists every problem; :func:`validate_record` raises one
:class:`~medcl.errors.InvalidSignalError` naming every problem channel, so a user fixes a file once
rather than once per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from medcl.errors import ConfigError, InvalidSignalError
from modalities.signals.record import SignalRecord

__all__ = ["ChannelIssue", "check_signal_quality", "validate_record"]

Problem = Literal["all_nan", "nan", "flat"]


@dataclass(frozen=True)
class ChannelIssue:
    """One problem of one channel.

    Attributes:
        channel: the channel's name as stored in the file.
        problem: ``"all_nan"`` (no valid sample), ``"nan"`` (more NaN than allowed) or ``"flat"``
            (peak-to-peak of the valid samples at or below the threshold).
        detail: the problem in words, e.g. ``"channel I is flat (peak-to-peak 0 mV)"``.
    """

    channel: str
    problem: Problem
    detail: str


def _format_amount(value: float, unit: str) -> str:
    return f"{value:.3g}{' ' + unit if unit else ''}"


def check_signal_quality(
    record: SignalRecord, max_nan_fraction: float = 0.0, flat_peak_to_peak: float = 1e-6
) -> list[ChannelIssue]:
    """Every quality problem of every channel, in channel order.

    A channel is reported as ``"all_nan"`` when it has no valid sample (and then nothing else), as
    ``"nan"`` when its NaN fraction exceeds ``max_nan_fraction``, and as ``"flat"`` when the
    peak-to-peak amplitude of its non-NaN samples is ``<= flat_peak_to_peak`` (in the channel's
    physical unit). A channel can be both ``"nan"`` and ``"flat"``. A record with no samples reports
    every channel as ``"all_nan"``.

    Args:
        record: the record to check; ``data`` shape ``(C, T)``.
        max_nan_fraction: the largest allowed fraction of NaN samples per channel, in ``[0, 1]``.
        flat_peak_to_peak: the amplitude at or below which a channel is flat.

    Raises:
        ConfigError: ``max_nan_fraction`` outside ``[0, 1]`` or a negative ``flat_peak_to_peak``.
    """
    if not 0.0 <= max_nan_fraction <= 1.0:
        raise ConfigError(f"max_nan_fraction must be in [0, 1], got {max_nan_fraction}")
    if not flat_peak_to_peak >= 0.0:
        raise ConfigError(f"flat_peak_to_peak must be >= 0, got {flat_peak_to_peak}")
    issues: list[ChannelIssue] = []
    data = np.asarray(record.data)
    n = data.shape[1]
    for name, unit, x in zip(record.channel_names, record.units, data, strict=True):
        nan = np.isnan(x)
        n_nan = int(nan.sum())
        if n == 0 or n_nan == n:
            issues.append(ChannelIssue(name, "all_nan", f"channel {name} is all NaN"))
            continue
        fraction = n_nan / n
        if fraction > max_nan_fraction:
            issues.append(
                ChannelIssue(
                    name,
                    "nan",
                    f"channel {name} has {fraction:.1%} NaN samples ({n_nan} of {n}; "
                    f"at most {max_nan_fraction:.1%} allowed)",
                )
            )
        valid = x[~nan] if n_nan else x
        peak_to_peak = float(valid.max() - valid.min())
        if peak_to_peak <= flat_peak_to_peak:
            issues.append(
                ChannelIssue(
                    name,
                    "flat",
                    f"channel {name} is flat (peak-to-peak {_format_amount(peak_to_peak, unit)})",
                )
            )
    return issues


def validate_record(
    record: SignalRecord,
    max_nan_fraction: float = 0.0,
    allow_flat: bool = False,
    flat_peak_to_peak: float = 1e-6,
) -> None:
    """Raise if any channel of ``record`` is unusable, naming every problem channel at once.

    Args:
        record: the record to check.
        max_nan_fraction: see :func:`check_signal_quality`.
        allow_flat: accept flat channels (e.g. a lead that is legitimately switched off).
        flat_peak_to_peak: see :func:`check_signal_quality`.

    Raises:
        InvalidSignalError: with ``path`` the record's file and a reason such as
            ``"channel V3 is all NaN; channel I is flat (peak-to-peak 0 mV)"``.
    """
    issues = check_signal_quality(record, max_nan_fraction, flat_peak_to_peak)
    if allow_flat:
        issues = [issue for issue in issues if issue.problem != "flat"]
    if issues:
        raise InvalidSignalError(
            record.path,
            "; ".join(issue.detail for issue in issues),
            hint="drop or repair those channels (select others with channels=...), or quarantine the "
            "record with index_signals",
        )
