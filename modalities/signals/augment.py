"""Random views of physiological signals for contrastive learning (ECG, EEG, PPG, ...).

Each augmentation is a MONAI :class:`~monai.transforms.RandomizableTransform` working on one signal,
channel first ``(C, T)`` float32 (returned as a new float32 array, the input is never written to),
plus a ``…d`` dictionary wrapper (``keys``, ``allow_missing_keys``) that applies the *same* draw to
every key of one call, as MONAI's do.

Random state: every transform owns its generator, seeded in ``__init__`` (``seed``, default 0) and
re-seeded with :meth:`set_random_state`. All draws happen in :meth:`randomize` from ``self.R``; nothing
here touches NumPy's global generator or torch's. Without the per-instance seeding, MONAI's class-level
``R`` would be shared by every instance. Note that :class:`monai.transforms.Compose` re-seeds its
members from its own generator when it is built (from OS entropy unless
:func:`monai.utils.set_determinism` was called): call ``compose.set_random_state(seed)`` after building
one, as :func:`ecg_contrastive_views` does. In a ``torch.utils.data.DataLoader`` with several workers
each worker holds a copy of the same state; give each worker its own seed (``monai.data.DataLoader``
does this).

``prob`` is the probability that a transform is applied at all to one call; when it is not, the input
comes back unchanged (as float32). Amplitudes are in the signal's own units: the defaults assume
signals normalised per channel (:class:`~modalities.signals.transforms.NormalizePerChannel`), so that
``std=0.05`` means 5 % of a channel's standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, Randomizable, RandomizableTransform, Transform
from monai.utils import MAX_SEED

from medcl.errors import ConfigError, DataError, InvalidSignalError
from modalities.signals.transforms import _check_int, _check_positive, _check_probability, _with_path
from modalities.signals.transforms import ensure_signal as _signal

__all__ = [
    "RandAmplitudeScale",
    "RandAmplitudeScaled",
    "RandBaselineWander",
    "RandBaselineWanderd",
    "RandChannelDropout",
    "RandChannelDropoutd",
    "RandGaussianNoise",
    "RandGaussianNoised",
    "RandTimeCrop",
    "RandTimeCropd",
    "RandTimeMask",
    "RandTimeMaskd",
    "RandTimeShift",
    "RandTimeShiftd",
    "ecg_contrastive_views",
]


class _RandSignal(RandomizableTransform):
    """Common part of the array augmentations: ``prob``, own seeded generator, ``__call__`` protocol.

    Subclasses implement :meth:`_draw` (all draws, from ``self.R``, given the signal's shape) and
    :meth:`_apply` (deterministic, from the drawn parameters).
    """

    def __init__(self, prob: float, seed: int) -> None:
        RandomizableTransform.__init__(self, _check_probability(prob, "prob", type(self).__name__))
        self.set_random_state(seed=_check_int(seed, "seed", type(self).__name__, 0))

    def randomize(self, data: np.ndarray) -> None:
        """Decide whether to apply the transform and, if so, draw its parameters for ``data`` ``(C, T)``."""
        super().randomize(None)
        if self._do_transform:
            self._draw(data.shape[0], data.shape[1])

    def _draw(self, n_channels: int, n_samples: int) -> None:
        raise NotImplementedError

    def _apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, signal: Any, randomize: bool = True) -> np.ndarray:
        """Augment ``signal`` ``(C, T)``; with ``randomize=False`` reuse the last draw (for the
        dictionary wrappers, which draw once per sample)."""
        x = _signal(signal)
        if randomize:
            self.randomize(x)
        if not self._do_transform:
            return x.copy()
        return self._apply(x).astype(np.float32, copy=False)


class _RandSignald(RandomizableTransform, MapTransform):
    """Common part of the dictionary augmentations: one draw per call, applied to every key.

    The keys of one sample must have the same shape (the draw is made for the first key present).
    """

    def __init__(
        self, keys: KeysCollection, transform: _RandSignal, prob: float, seed: int, allow_missing_keys: bool
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_probability(prob, "prob", type(self).__name__))
        self.transform = transform
        self.set_random_state(seed=_check_int(seed, "seed", type(self).__name__, 0))

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> _RandSignald:
        """Seed this wrapper's generator (the ``prob`` draw) and, from it, the wrapped transform's (the
        parameters). MONAI's wrappers give both the same seed, which makes the two streams copies of
        each other (the parameters of one call are the ``prob`` draws of later calls); deriving the
        second seed from the first, as ``Compose`` does, avoids that."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def _prepare(self, d: dict[Hashable, Any]) -> None:
        """Set up the wrapped transform from the sample's meta before the draw (e.g. its rate)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = _signal(d[key]).copy()
            return d
        first_key = self.first_key(d)
        if first_key == ():
            return d
        self._prepare(d)
        self.transform.randomize(_signal(d[first_key]))
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)
        return d


# ----------------------------------------------------------------------------------------------------
# crop
# ----------------------------------------------------------------------------------------------------
class RandTimeCrop(Randomizable, Transform):
    """A random window of ``length`` consecutive samples (every start equally likely).

    Always applied (a crop fixes the output length, so it has no ``prob``), like MONAI's
    ``RandSpatialCrop``. A signal shorter than ``length`` raises :class:`InvalidSignalError`.

    Args:
        length: samples in the output (>= 1).
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` with ``T >= length`` → ``(C, length)``, float32.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = _check_int(length, "length", "RandTimeCrop", 1)
        self.set_random_state(seed=_check_int(seed, "seed", "RandTimeCrop", 0))
        self._start = 0

    def randomize(self, data: np.ndarray) -> None:
        """Draw the window's start for ``data`` ``(C, T)``."""
        n_samples = data.shape[1]
        if n_samples < self.length:
            raise InvalidSignalError(
                None,
                f"RandTimeCrop: the signal has {n_samples} samples, fewer than the crop length {self.length}",
                "lower the crop length or leave shorter records out",
            )
        self._start = int(self.R.randint(0, n_samples - self.length + 1))

    def __call__(self, signal: Any, randomize: bool = True) -> np.ndarray:
        """Crop ``signal`` ``(C, T)`` to ``(C, length)``; ``randomize=False`` reuses the last start."""
        x = _signal(signal)
        if randomize:
            self.randomize(x)
        return x[:, self._start : self._start + self.length].copy()


class RandTimeCropd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`RandTimeCrop`: the same window for every key (same length ``T``).

    A too-short signal's error names ``sample[meta_key]["path"]``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        length: int,
        seed: int = 0,
        meta_key: str = "meta",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.crop = RandTimeCrop(length, seed)
        self.meta_key = meta_key
        self.set_random_state(seed=seed)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandTimeCropd:
        """Seed the wrapped crop's generator (which makes every draw of this transform)."""
        super().set_random_state(seed, state)
        self.crop.set_random_state(seed, state)
        return self

    def randomize(self, data: np.ndarray) -> None:
        """Draw the window's start for ``data`` ``(C, T)``."""
        self.crop.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first_key = self.first_key(d)
        if first_key == ():
            return d
        try:
            self.randomize(_signal(d[first_key]))
            for key in self.key_iterator(d):
                d[key] = self.crop(d[key], randomize=False)
        except DataError as error:
            meta = d.get(self.meta_key)
            raise _with_path(error, meta.get("path") if isinstance(meta, Mapping) else None) from error
        return d


# ----------------------------------------------------------------------------------------------------
# amplitude
# ----------------------------------------------------------------------------------------------------
class RandAmplitudeScale(_RandSignal):
    """Multiply by a random factor drawn uniformly from ``[low, high]``, per channel or one for all.

    Args:
        prob: probability of applying the transform.
        low, high: bounds of the factor, ``0 < low <= high``.
        per_channel: one factor per channel (``True``) or one for the whole signal.
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(
        self,
        prob: float = 0.5,
        low: float = 0.8,
        high: float = 1.2,
        per_channel: bool = True,
        seed: int = 0,
    ) -> None:
        self.low = _check_positive(low, "low", "RandAmplitudeScale")
        self.high = _check_positive(high, "high", "RandAmplitudeScale")
        if self.low > self.high:
            raise ConfigError(f"RandAmplitudeScale: low={low} must be <= high={high}")
        self.per_channel = bool(per_channel)
        self.factors = np.ones((1, 1))
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        size = (n_channels, 1) if self.per_channel else (1, 1)
        self.factors = self.R.uniform(self.low, self.high, size=size)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return x * self.factors


class RandGaussianNoise(_RandSignal):
    """Add white Gaussian noise of standard deviation ``std``, in the signal's units (normalise first).

    Args:
        prob: probability of applying the transform.
        std: standard deviation of the noise (> 0).
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.5, std: float = 0.05, seed: int = 0) -> None:
        self.std = _check_positive(std, "std", "RandGaussianNoise")
        self.noise = np.zeros((1, 1))
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        self.noise = self.R.normal(0.0, self.std, size=(n_channels, n_samples))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.noise.shape != x.shape:
            raise ValueError(
                f"RandGaussianNoise: noise drawn for shape {self.noise.shape}, signal is {x.shape}"
            )
        return x + self.noise


class RandBaselineWander(_RandSignal):
    """Add a slow sinusoid, like respiration-induced baseline wander in an ECG.

    One frequency ``f ~ U(0, max_freq_hz)`` for the whole signal (near 0 it is an offset); each channel
    gets its own amplitude ``a_c ~ U(0, max_amplitude)`` and phase ``phi_c ~ U(0, 2 pi)``:
    ``x_c(t) + a_c sin(2 pi f t + phi_c)``.

    Args:
        prob: probability of applying the transform.
        max_amplitude: largest amplitude, in the signal's units (> 0).
        max_freq_hz: highest wander frequency in Hz (> 0, below ``fs / 2``).
        fs: the signal's sampling rate in Hz (keyword only).
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(
        self,
        prob: float = 0.5,
        max_amplitude: float = 0.1,
        max_freq_hz: float = 0.5,
        *,
        fs: float,
        seed: int = 0,
    ) -> None:
        self.max_amplitude = _check_positive(max_amplitude, "max_amplitude", "RandBaselineWander")
        self.max_freq_hz = _check_positive(max_freq_hz, "max_freq_hz", "RandBaselineWander")
        self.fs = 1.0
        self.set_fs(fs)
        self.freq_hz = 0.0
        self.amplitudes = np.zeros((1, 1))
        self.phases = np.zeros((1, 1))
        super().__init__(prob, seed)

    def set_fs(self, fs: float) -> None:
        """Set the sampling rate (the dictionary wrapper takes it from each sample's meta)."""
        fs = _check_positive(fs, "fs", "RandBaselineWander")
        if self.max_freq_hz >= fs / 2:
            raise ConfigError(
                f"RandBaselineWander: max_freq_hz={self.max_freq_hz} must be below fs/2={fs / 2}"
            )
        self.fs = fs

    def _draw(self, n_channels: int, n_samples: int) -> None:
        self.freq_hz = float(self.R.uniform(0.0, self.max_freq_hz))
        self.amplitudes = self.R.uniform(0.0, self.max_amplitude, size=(n_channels, 1))
        self.phases = self.R.uniform(0.0, 2 * math.pi, size=(n_channels, 1))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        t = np.arange(x.shape[1]) / self.fs
        return x + self.amplitudes * np.sin(2 * math.pi * self.freq_hz * t[None, :] + self.phases)


# ----------------------------------------------------------------------------------------------------
# masking
# ----------------------------------------------------------------------------------------------------
class RandTimeMask(_RandSignal):
    """Cut-out in time: set ``n_masks`` random spans to zero on every channel.

    Each span has a length drawn uniformly from ``1 … floor(max_fraction * T)`` samples and a start
    drawn uniformly among the positions where it fits; spans may overlap. A signal too short for a
    one-sample span (``max_fraction * T < 1``) is returned unchanged. Zero is the channel mean of a
    normalised signal.

    Args:
        prob: probability of applying the transform.
        max_fraction: longest span as a fraction of ``T``, in ``(0, 1]``.
        n_masks: number of spans (>= 1).
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.5, max_fraction: float = 0.1, n_masks: int = 1, seed: int = 0) -> None:
        self.max_fraction = _check_positive(max_fraction, "max_fraction", "RandTimeMask")
        if self.max_fraction > 1:
            raise ConfigError(f"RandTimeMask: max_fraction must be in (0, 1], got {max_fraction}")
        self.n_masks = _check_int(n_masks, "n_masks", "RandTimeMask", 1)
        self.spans: list[tuple[int, int]] = []
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        max_length = int(self.max_fraction * n_samples)
        self.spans = []
        if max_length < 1:
            return
        for _ in range(self.n_masks):
            length = int(self.R.randint(1, max_length + 1))
            start = int(self.R.randint(0, n_samples - length + 1))
            self.spans.append((start, start + length))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        for start, stop in self.spans:
            out[:, start:stop] = 0.0
        return out


class RandChannelDropout(_RandSignal):
    """Set whole channels to zero, each independently with probability ``p``; never all of them.

    When the draw would drop every channel, one channel chosen at random is kept. A single-channel
    signal is never changed.

    Args:
        prob: probability of applying the transform.
        p: probability that one channel is dropped, in ``[0, 1]``.
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.5, p: float = 0.1, seed: int = 0) -> None:
        self.p = _check_probability(p, "p", "RandChannelDropout")
        self.dropped = np.zeros(0, dtype=bool)
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        dropped = self.R.rand(n_channels) < self.p
        if dropped.all():
            dropped[int(self.R.randint(0, n_channels))] = False
        self.dropped = dropped

    def _apply(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[self.dropped] = 0.0
        return out


class RandTimeShift(_RandSignal):
    """Shift in time by ``s ~ U{-max_shift, …, max_shift}`` samples (positive: later).

    ``mode="circular"`` (default) rolls the samples that leave one end back in at the other (no
    content lost, a jump where the ends meet); ``mode="zeros"`` fills the vacated samples with zero.

    Args:
        prob: probability of applying the transform.
        max_shift: largest shift in samples (>= 0).
        mode: ``"circular"`` or ``"zeros"``.
        seed: seed of this transform's own generator.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(
        self,
        prob: float = 0.5,
        max_shift: int = 50,
        mode: Literal["circular", "zeros"] = "circular",
        seed: int = 0,
    ) -> None:
        self.max_shift = _check_int(max_shift, "max_shift", "RandTimeShift", 0)
        if mode not in ("circular", "zeros"):
            raise ConfigError(f"RandTimeShift: mode must be 'circular' or 'zeros', got {mode!r}")
        self.mode = mode
        self.shift = 0
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        self.shift = int(self.R.randint(-self.max_shift, self.max_shift + 1))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        s = self.shift
        if self.mode == "circular":
            return np.roll(x, s, axis=1)
        out = np.zeros_like(x)
        n = x.shape[1]
        if abs(s) >= n:
            return out
        if s >= 0:
            out[:, s:] = x[:, : n - s]
        else:
            out[:, :s] = x[:, -s:]
        return out


# ----------------------------------------------------------------------------------------------------
# dictionary wrappers
# ----------------------------------------------------------------------------------------------------
class RandAmplitudeScaled(_RandSignald):
    """Dictionary wrapper of :class:`RandAmplitudeScale` (same factors for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        low: float = 0.8,
        high: float = 1.2,
        per_channel: bool = True,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = RandAmplitudeScale(1.0, low, high, per_channel, seed)
        super().__init__(keys, transform, prob, seed, allow_missing_keys)


class RandGaussianNoised(_RandSignald):
    """Dictionary wrapper of :class:`RandGaussianNoise` (same noise for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        std: float = 0.05,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandGaussianNoise(1.0, std, seed), prob, seed, allow_missing_keys)


class RandBaselineWanderd(_RandSignald):
    """Dictionary wrapper of :class:`RandBaselineWander` (same wander for every key).

    ``fs`` defaults to ``None``: the rate is read from ``sample[meta_key]["fs"]`` on every call.
    """

    transform: RandBaselineWander

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        max_amplitude: float = 0.1,
        max_freq_hz: float = 0.5,
        fs: float | None = None,
        meta_key: str = "meta",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        # Without a rate yet, build with one far above max_freq_hz; _prepare sets the sample's.
        probe_fs = (
            fs if fs is not None else 4 * _check_positive(max_freq_hz, "max_freq_hz", "RandBaselineWanderd")
        )
        transform = RandBaselineWander(1.0, max_amplitude, max_freq_hz, fs=probe_fs, seed=seed)
        super().__init__(keys, transform, prob, seed, allow_missing_keys)
        self.fs = fs
        self.meta_key = meta_key

    def _prepare(self, d: dict[Hashable, Any]) -> None:
        if self.fs is not None:
            return
        meta = d.get(self.meta_key)
        if not isinstance(meta, Mapping) or "fs" not in meta:
            raise ConfigError(
                f"RandBaselineWanderd needs fs: give it, or put it in sample[{self.meta_key!r}]['fs']"
            )
        self.transform.set_fs(float(meta["fs"]))


class RandTimeMaskd(_RandSignald):
    """Dictionary wrapper of :class:`RandTimeMask` (same spans for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        max_fraction: float = 0.1,
        n_masks: int = 1,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandTimeMask(1.0, max_fraction, n_masks, seed), prob, seed, allow_missing_keys)


class RandChannelDropoutd(_RandSignald):
    """Dictionary wrapper of :class:`RandChannelDropout` (same channels dropped for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        p: float = 0.1,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandChannelDropout(1.0, p, seed), prob, seed, allow_missing_keys)


class RandTimeShiftd(_RandSignald):
    """Dictionary wrapper of :class:`RandTimeShift` (same shift for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        max_shift: int = 50,
        mode: Literal["circular", "zeros"] = "circular",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandTimeShift(1.0, max_shift, mode, seed), prob, seed, allow_missing_keys)


# ----------------------------------------------------------------------------------------------------
# default pipeline
# ----------------------------------------------------------------------------------------------------
def ecg_contrastive_views(
    fs: float, crop_length: int | None = None, seed: int = 0, key: str = "signal", aligned: bool = False
) -> Compose:
    """The default SimCLR-style augmentation for ECG samples (dictionary transforms on ``key``).

    Call it once per view: two calls on the same sample give two different views. Expects signals
    normalised per channel. In order:

    1. ``RandTimeCropd(crop_length)`` when ``crop_length`` is given (always applied; random crops are
       the strongest single ECG augmentation in Mehari & Strodthoff 2022), otherwise
       ``RandTimeShiftd(prob=0.5, max_shift=0.1 s, circular)`` for some translation;
    2. ``RandAmplitudeScaled(prob=0.5, 0.8…1.2 per lead)``: gain differences between devices/leads;
    3. ``RandBaselineWanderd(prob=0.5, max_amplitude=0.1, max_freq_hz=0.5)``: respiration drift;
    4. ``RandGaussianNoised(prob=0.5, std=0.05)``: electrode/EMG noise (5 % of a lead's std);
    5. ``RandTimeMaskd(prob=0.5, max_fraction=0.1, n_masks=1)``: cut-out of up to 10 % of the window;
    6. ``RandChannelDropoutd(prob=0.25, p=0.1)``: missing leads (never all).

    With ``aligned=True`` step 1 is left out, so time step ``t`` of one view is time step ``t`` of the
    other: what the observation and sample levels of hierarchical (TS2Vec/COMET) contrast assume.

    Args:
        fs: sampling rate in Hz of the samples it will see.
        crop_length: samples per view, or ``None`` to keep the whole signal.
        aligned: keep the views aligned in time (no crop, no shift); ``crop_length`` must be None.
        seed: seed of the pipeline; each member gets its own seed derived from it.
        key: the signal's key in the sample.

    Returns:
        a :class:`monai.transforms.Compose` mapping a sample to one augmented sample; ``sample[key]`` of
        shape ``(C, T)`` becomes ``(C, crop_length)`` (or ``(C, T)``).
    """
    fs = _check_positive(fs, "fs", "ecg_contrastive_views")
    seed = _check_int(seed, "seed", "ecg_contrastive_views", 0)
    if aligned and crop_length is not None:
        raise ConfigError(
            "ecg_contrastive_views: aligned views cannot be random crops (crop_length must be None)"
        )
    first: list[Transform] = []
    if crop_length is not None:
        first = [RandTimeCropd(key, crop_length)]
    elif not aligned:
        first = [RandTimeShiftd(key, prob=0.5, max_shift=max(1, round(0.1 * fs)))]
    pipeline = Compose(
        [
            *first,
            RandAmplitudeScaled(key, prob=0.5, low=0.8, high=1.2, per_channel=True),
            RandBaselineWanderd(key, prob=0.5, max_amplitude=0.1, max_freq_hz=0.5, fs=fs),
            RandGaussianNoised(key, prob=0.5, std=0.05),
            RandTimeMaskd(key, prob=0.5, max_fraction=0.1, n_masks=1),
            RandChannelDropoutd(key, prob=0.25, p=0.1),
        ]
    )
    # Compose seeded its members from its own generator when it was built (OS entropy unless MONAI's
    # set_determinism was called): re-seed from ``seed``, deterministically.
    pipeline.set_random_state(seed=seed)
    return pipeline
