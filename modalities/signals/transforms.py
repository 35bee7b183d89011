"""Deterministic preprocessing of physiological signals (ECG, EEG, PPG, ...).

Every transform exists twice, in MONAI's style:

* an *array* transform working on one signal, channel first, shape ``(C, T)``; it accepts anything
  :func:`numpy.asarray` turns into a 2-D array and always returns a new ``float32`` array (the input
  is never written to);
* a ``…d`` *dictionary* wrapper (a :class:`monai.transforms.MapTransform`: ``keys``,
  ``allow_missing_keys``) for samples as described in DESIGN §1.1. The wrapper shallow-copies the
  sample, never mutates the dict it was given, and reads the sampling rate, the channel names and the
  source file from ``sample[meta_key]`` (default ``"meta"``: ``fs``, ``channel_names``, ``path``).
  When a transform changes the rate or the channels, the wrapper puts an updated *copy* of the meta
  dict in the returned sample. Several keys of one sample share one meta dict, so they must have the
  same rate and channels.

Errors: bad settings raise :class:`~medcl.errors.ConfigError` when the transform is built; a signal that
cannot be processed raises a :class:`~medcl.errors.DataError` subclass which, from a dictionary
wrapper, names the sample's file (``meta["path"]``).

NaN samples propagate through resampling, filtering and normalisation: run :class:`FillNaN` first.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medcl.errors import ConfigError, DataError
from modalities.signals import dsp
from modalities.signals.dsp import (  # noqa: F401  (helpers re-exported for augment.py)
    _check_cutoffs,
    _check_int,
    _check_positive,
    _check_probability,
    ensure_signal,
    segment_starts,
)

__all__ = [
    "BandPass",
    "BandPassd",
    "FillNaN",
    "FillNaNd",
    "NormalizePerChannel",
    "NormalizePerChanneld",
    "Notch",
    "Notchd",
    "Resample",
    "Resampled",
    "Segment",
    "SelectChannels",
    "SelectChannelsd",
    "ensure_signal",
    "segment_starts",
]


# ----------------------------------------------------------------------------------------------------
# helpers of the dictionary wrappers
# ----------------------------------------------------------------------------------------------------
def _sample_meta(data: Mapping[Hashable, Any], meta_key: str, owner: str, *fields: str) -> dict[str, Any]:
    """The sample's meta dict, checked to hold ``fields``."""
    meta = data.get(meta_key)
    if not isinstance(meta, Mapping):
        raise ConfigError(
            f"{owner} needs the sample's meta dict under key {meta_key!r} (with {', '.join(fields)}); "
            f"the sample has keys {sorted(map(str, data))}"
        )
    missing = [f for f in fields if f not in meta]
    if missing:
        raise ConfigError(
            f"{owner} needs {', '.join(missing)} in sample[{meta_key!r}]; it has {sorted(map(str, meta))}"
        )
    return dict(meta)


def _with_path(error: DataError, path: Any) -> DataError:
    """The same error naming ``path`` (for errors raised by array transforms, which know no file)."""
    if error.path is not None or path is None:
        return error
    return type(error)(path, error.reason, error.hint)


# ----------------------------------------------------------------------------------------------------
# array transforms: the numpy/SciPy kernels of :mod:`modalities.signals.dsp` as MONAI transforms
# ----------------------------------------------------------------------------------------------------
class Resample(dsp.Resample, Transform):
    __doc__ = dsp.Resample.__doc__


class BandPass(dsp.BandPass, Transform):
    __doc__ = dsp.BandPass.__doc__


class Notch(dsp.Notch, Transform):
    __doc__ = dsp.Notch.__doc__


class NormalizePerChannel(dsp.NormalizePerChannel, Transform):
    __doc__ = dsp.NormalizePerChannel.__doc__


class SelectChannels(dsp.SelectChannels, Transform):
    __doc__ = dsp.SelectChannels.__doc__


class FillNaN(dsp.FillNaN, Transform):
    __doc__ = dsp.FillNaN.__doc__


class Segment(dsp.Segment, Transform):
    __doc__ = dsp.Segment.__doc__


# ----------------------------------------------------------------------------------------------------
# resampling
# ----------------------------------------------------------------------------------------------------
class Resampled(MapTransform):
    """Dictionary wrapper of :class:`Resample`: from ``meta["fs"]`` to ``target_fs``, then ``meta["fs"]``
    is set to ``target_fs``. A sample already at ``target_fs`` is returned unchanged (shallow copy).

    Args:
        keys: the signal keys, each ``(C, T)``.
        target_fs: the output rate in Hz.
        meta_key: where the sample's meta dict is.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        target_fs: float,
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.target_fs = _check_positive(target_fs, "target_fs", "Resampled")
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = _sample_meta(d, self.meta_key, "Resampled", "fs")
        src_fs = float(meta["fs"])
        if math.isclose(src_fs, self.target_fs, rel_tol=1e-9):
            return d
        resample = Resample(src_fs, self.target_fs)
        for key in self.key_iterator(d):
            d[key] = resample(d[key])
        meta["fs"] = self.target_fs
        d[self.meta_key] = meta
        return d


# ----------------------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------------------
class _PerRateFilterd(MapTransform):
    """A dictionary wrapper that builds (and caches) its array filter for each ``meta["fs"]`` it meets."""

    _owner = ""

    def __init__(self, keys: KeysCollection, meta_key: str, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key = meta_key
        self._filters: dict[float, Transform] = {}

    def _build(self, fs: float) -> Transform:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = _sample_meta(d, self.meta_key, self._owner, "fs")
        fs = float(meta["fs"])
        if fs not in self._filters:
            self._filters[fs] = self._build(fs)
        transform = self._filters[fs]
        for key in self.key_iterator(d):
            try:
                d[key] = transform(d[key])
            except DataError as error:
                raise _with_path(error, meta.get("path")) from error
        return d


class BandPassd(_PerRateFilterd):
    """Dictionary wrapper of :class:`BandPass`; the sampling rate comes from ``meta["fs"]``.

    The cut-offs are checked against each sample's rate when it arrives (a 40 Hz low-pass and a 50 Hz
    record is a :class:`ConfigError`). Arguments as :class:`BandPass`, plus ``keys``, ``meta_key``,
    ``allow_missing_keys``.
    """

    _owner = "BandPassd"

    def __init__(
        self,
        keys: KeysCollection,
        low_hz: float | None,
        high_hz: float | None,
        order: int = 4,
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key, allow_missing_keys)
        self.low_hz, self.high_hz = _check_cutoffs(low_hz, high_hz, "BandPassd")
        self.order = _check_int(order, "order", "BandPassd", 1)

    def _build(self, fs: float) -> Transform:
        return BandPass(fs, self.low_hz, self.high_hz, self.order)


class Notchd(_PerRateFilterd):
    """Dictionary wrapper of :class:`Notch`; the sampling rate comes from ``meta["fs"]``.

    Arguments as :class:`Notch`, plus ``keys``, ``meta_key``, ``allow_missing_keys``.
    """

    _owner = "Notchd"

    def __init__(
        self,
        keys: KeysCollection,
        freq: float = 50.0,
        quality: float = 30.0,
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, meta_key, allow_missing_keys)
        self.freq = _check_positive(freq, "freq", "Notchd")
        self.quality = _check_positive(quality, "quality", "Notchd")

    def _build(self, fs: float) -> Transform:
        return Notch(fs, self.freq, self.quality)


# ----------------------------------------------------------------------------------------------------
# scaling
# ----------------------------------------------------------------------------------------------------
class NormalizePerChanneld(MapTransform):
    """Dictionary wrapper of :class:`NormalizePerChannel` (no meta needed)."""

    def __init__(self, keys: KeysCollection, eps: float = 1e-6, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = NormalizePerChannel(eps)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


# ----------------------------------------------------------------------------------------------------
# channels
# ----------------------------------------------------------------------------------------------------
class SelectChannelsd(MapTransform):
    """Dictionary wrapper of :class:`SelectChannels`, using ``meta["channel_names"]``.

    The returned sample's ``meta["channel_names"]`` is the requested list, spelled as requested, so
    every sample through this transform carries the same names whatever their source spelled.
    Errors name ``meta["path"]``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: Sequence[str],
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.select = SelectChannels(channels)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = _sample_meta(d, self.meta_key, "SelectChannelsd", "channel_names")
        path = meta.get("path")
        for key in self.key_iterator(d):
            d[key] = self.select(d[key], meta["channel_names"], path)
        meta["channel_names"] = list(self.select.channels)
        d[self.meta_key] = meta
        return d


# ----------------------------------------------------------------------------------------------------
# missing values
# ----------------------------------------------------------------------------------------------------
class FillNaNd(MapTransform):
    """Dictionary wrapper of :class:`FillNaN`; ``fs``, ``channel_names`` and ``path`` from the meta dict
    (only ``fs`` is required)."""

    def __init__(
        self,
        keys: KeysCollection,
        max_gap_s: float,
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        FillNaN(max_gap_s, 1.0)  # validates max_gap_s
        self.max_gap_s = max_gap_s
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = _sample_meta(d, self.meta_key, "FillNaNd", "fs")
        fill = FillNaN(self.max_gap_s, float(meta["fs"]))
        for key in self.key_iterator(d):
            d[key] = fill(d[key], meta.get("channel_names"), meta.get("path"))
        return d


# ----------------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------------
