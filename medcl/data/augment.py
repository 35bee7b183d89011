"""The stochastic augmentation module of participant contrast (Abbaspourazad et al., ICLR 2024).

Five augmentations of a channel-first time series ``(C, T)`` — PPG, accelerometer, ECG, EEG, any
modality — each applied with its own probability, and :class:`StochasticAugment` that chains them:

=============================  ==========================================================================
:class:`RandTimeWarp`          resample the signal along a smooth, monotone random time axis
                               (length and both end samples kept)
:class:`RandMagnitudeWarp`     multiply each channel by a smooth random curve around 1
:class:`RandChannelPermutation`  shuffle the channels (the same sensor on another finger or wrist)
:class:`RandGaussianNoise`     add white Gaussian noise
:class:`RandCutOut`            set one random span of every channel to zero
=============================  ==========================================================================

Everything is numpy. Each transform is a MONAI :class:`~monai.transforms.RandomizableTransform` that
owns its generator (seeded in ``__init__``, re-seeded by :meth:`set_random_state`); all draws come from
``self.R``, never from numpy's or torch's global generators. :class:`StochasticAugment` derives the seed
of every member from its own, so one ``set_random_state(seed)`` on it fixes the whole chain (the data
set seeds it per ``(seed, epoch, sample index)``). Inputs are never written to; outputs are float32.

The modality adapters keep their own augmentations (e.g. :mod:`modalities.signals.augment` for ECG
views); this module lives in the core because an objective (``medcl.objectives.ParticipantContrast``)
builds it and objectives never import a modality. Amplitudes are in the signal's own units: the defaults
assume signals standardised per channel, so ``noise_std=0.05`` is 5 % of a channel's standard deviation.
The default probabilities and strengths are ours, not values published with the paper.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from monai.transforms import Randomizable, RandomizableTransform
from monai.utils import MAX_SEED

from medcl.errors import ConfigError

__all__ = [
    "RandChannelPermutation",
    "RandCutOut",
    "RandGaussianNoise",
    "RandMagnitudeWarp",
    "RandTimeWarp",
    "StochasticAugment",
    "natural_cubic_spline",
]


# ----------------------------------------------------------------------------------------------------
# checks and helpers
# ----------------------------------------------------------------------------------------------------
def _probability(value: float, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{owner}: {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _positive(value: float, name: str, owner: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _integer(value: int, name: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_signal(signal: Any, owner: str) -> np.ndarray:
    """``signal`` as a float32 ``(C, T)`` array (a view when it already is one; never written to)."""
    x = np.asarray(signal)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{owner} expects a signal of shape (C, T) with C, T >= 1, got {x.shape}")
    return x.astype(np.float32, copy=False)


def natural_cubic_spline(knots_x: np.ndarray, knots_y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The natural cubic spline through ``(knots_x, knots_y[r])`` evaluated at ``x``, for every row ``r``.

    Second derivatives are zero at both ends (as ``scipy.interpolate.CubicSpline(bc_type="natural")``);
    with two knots it is the straight line through them.

    Args:
        knots_x: ``(K,)`` strictly increasing, ``K >= 2``.
        knots_y: ``(R, K)`` values at the knots.
        x: ``(N,)`` where to evaluate, inside ``[knots_x[0], knots_x[-1]]``.

    Returns:
        ``(R, N)`` float64.
    """
    kx = np.asarray(knots_x, dtype=np.float64)
    ky = np.atleast_2d(np.asarray(knots_y, dtype=np.float64))
    n_knots = kx.shape[0]
    if n_knots < 2 or ky.shape[1] != n_knots or not np.all(np.diff(kx) > 0):
        raise ValueError(
            f"natural_cubic_spline needs >= 2 strictly increasing knots and values of shape (R, {n_knots})"
        )
    h = np.diff(kx)  # (K-1,)
    second = np.zeros_like(ky)  # (R, K): second derivatives, 0 at both ends
    if n_knots > 2:
        slopes = np.diff(ky, axis=1) / h  # (R, K-1)
        system = np.zeros((n_knots - 2, n_knots - 2))
        rows = np.arange(n_knots - 2)
        system[rows, rows] = 2.0 * (h[:-1] + h[1:])
        system[rows[1:], rows[:-1]] = h[1:-1]
        system[rows[:-1], rows[1:]] = h[1:-1]
        second[:, 1:-1] = np.linalg.solve(system, (6.0 * np.diff(slopes, axis=1)).T).T
    x = np.asarray(x, dtype=np.float64)
    i = np.clip(np.searchsorted(kx, x, side="right") - 1, 0, n_knots - 2)  # interval of each x
    a = (kx[i + 1] - x) / h[i]
    b = (x - kx[i]) / h[i]
    return (
        a * ky[:, i]
        + b * ky[:, i + 1]
        + ((a**3 - a) * second[:, i] + (b**3 - b) * second[:, i + 1]) * (h[i] ** 2) / 6.0
    )


# ----------------------------------------------------------------------------------------------------
# the array transforms
# ----------------------------------------------------------------------------------------------------
class _RandArray(RandomizableTransform):
    """Common part: ``prob``, an own seeded generator, draw in :meth:`randomize`, apply in ``__call__``.

    Subclasses implement :meth:`_draw` (every draw, from ``self.R``, for a signal of ``C`` channels and
    ``T`` samples) and :meth:`_apply` (deterministic, from the drawn parameters).
    """

    def __init__(self, prob: float, seed: int) -> None:
        RandomizableTransform.__init__(self, _probability(prob, "prob", type(self).__name__))
        self.set_random_state(seed=_integer(seed, "seed", type(self).__name__, 0))

    def randomize(self, data: np.ndarray) -> None:
        """Decide whether to apply the transform to ``data`` ``(C, T)`` and, if so, draw its parameters."""
        super().randomize(None)
        if self._do_transform:
            self._draw(int(data.shape[0]), int(data.shape[1]))

    def _draw(self, n_channels: int, n_samples: int) -> None:
        raise NotImplementedError

    def _apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, signal: Any, randomize: bool = True) -> np.ndarray:
        """Augment ``signal`` ``(C, T)`` → ``(C, T)`` float32; ``randomize=False`` reuses the last draw."""
        x = _as_signal(signal, type(self).__name__)
        if randomize:
            self.randomize(x)
        if not self._do_transform:
            return x.copy()
        return np.asarray(self._apply(x), dtype=np.float32)


class RandCutOut(_RandArray):
    """Cut-out: set one span of ``L ~ U{1, …, floor(max_fraction · T)}`` samples, starting at
    ``s ~ U{0, …, T − L}``, to zero on every channel (zero is a standardised signal's mean). A signal
    too short for a one-sample span is returned unchanged.

    Args:
        prob: probability of applying the transform.
        max_fraction: longest span as a fraction of ``T``, in ``(0, 1]``.
        seed: seed of this transform's own generator.

    Attributes:
        span: ``(start, stop)`` of the last drawn span (``stop`` exclusive; ``(0, 0)`` for none).

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.4, max_fraction: float = 0.1, seed: int = 0) -> None:
        self.max_fraction = _positive(max_fraction, "max_fraction", "RandCutOut")
        if self.max_fraction > 1:
            raise ConfigError(f"RandCutOut: max_fraction must be in (0, 1], got {max_fraction}")
        self.span = (0, 0)
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        longest = int(self.max_fraction * n_samples)
        if longest < 1:
            self.span = (0, 0)
            return
        length = int(self.R.randint(1, longest + 1))
        start = int(self.R.randint(0, n_samples - length + 1))
        self.span = (start, start + length)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, self.span[0] : self.span[1]] = 0.0
        return out


class RandMagnitudeWarp(_RandArray):
    """Magnitude warp (Um et al., 2017): multiply each channel by a smooth random curve.

    The curve is the natural cubic spline through ``n_knots + 2`` evenly spaced knots (both ends
    included) whose values are drawn from ``N(1, sigma²)``; one curve per channel, or one for all.

    Args:
        prob: probability of applying the transform.
        sigma: standard deviation of the knot values (> 0).
        n_knots: interior knots (>= 0; 0 gives a straight line between the two end knots).
        per_channel: one curve per channel (``True``) or the same curve for every channel.
        seed: seed of this transform's own generator.

    Attributes:
        knot_values: the last draw, ``(C or 1, n_knots + 2)``.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(
        self,
        prob: float = 0.25,
        sigma: float = 0.2,
        n_knots: int = 4,
        per_channel: bool = True,
        seed: int = 0,
    ) -> None:
        self.sigma = _positive(sigma, "sigma", "RandMagnitudeWarp")
        self.n_knots = _integer(n_knots, "n_knots", "RandMagnitudeWarp", 0)
        self.per_channel = bool(per_channel)
        self.knot_values = np.ones((1, self.n_knots + 2))
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        rows = n_channels if self.per_channel else 1
        self.knot_values = self.R.normal(1.0, self.sigma, size=(rows, self.n_knots + 2))

    def curve(self, n_samples: int) -> np.ndarray:
        """The drawn multiplier at every sample, ``(C or 1, n_samples)`` float64."""
        if n_samples == 1:
            return self.knot_values[:, :1].copy()
        knots_x = np.linspace(0.0, n_samples - 1.0, self.n_knots + 2)
        return natural_cubic_spline(knots_x, self.knot_values, np.arange(n_samples, dtype=np.float64))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return x * self.curve(x.shape[1])


class RandTimeWarp(_RandArray):
    """Time warp: read the signal along a smooth, strictly increasing random time axis.

    A local speed ``v(t) = exp(spline(t))`` is drawn, the spline passing through ``n_knots + 2`` evenly
    spaced knots with values ``N(0, sigma²)`` (so speeds are positive and about ``1 ± sigma``); the warped
    time ``p(t)`` is its running integral (trapezoids) rescaled to run from ``0`` to ``T − 1``, and each
    channel is linearly interpolated at ``p``. The length and the first and last samples are unchanged;
    parts where ``v > 1`` are played faster, the others slower. Every channel gets the same warp.

    Args:
        prob: probability of applying the transform.
        sigma: standard deviation of the log-speed at the knots (> 0).
        n_knots: interior knots (>= 0).
        seed: seed of this transform's own generator.

    Attributes:
        knot_values: the last drawn log-speeds, ``(n_knots + 2,)``.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.15, sigma: float = 0.2, n_knots: int = 4, seed: int = 0) -> None:
        self.sigma = _positive(sigma, "sigma", "RandTimeWarp")
        self.n_knots = _integer(n_knots, "n_knots", "RandTimeWarp", 0)
        self.knot_values = np.zeros(self.n_knots + 2)
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        self.knot_values = self.R.normal(0.0, self.sigma, size=self.n_knots + 2)

    def positions(self, n_samples: int) -> np.ndarray:
        """Where each output sample reads the input: ``(n_samples,)``, from 0 to ``n_samples − 1``,
        strictly increasing."""
        if n_samples < 2:
            return np.zeros(n_samples)
        grid = np.arange(n_samples, dtype=np.float64)
        knots_x = np.linspace(0.0, n_samples - 1.0, self.n_knots + 2)
        speed = np.exp(natural_cubic_spline(knots_x, self.knot_values[None, :], grid)[0])
        travelled = np.concatenate(([0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]))))
        out = travelled * ((n_samples - 1) / travelled[-1])
        out[-1] = n_samples - 1.0  # exactly, whatever the rounding of the rescaling
        return out

    def _apply(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        p = self.positions(n)
        grid = np.arange(n, dtype=np.float64)
        return np.stack([np.interp(p, grid, channel) for channel in x.astype(np.float64)])


class RandGaussianNoise(_RandArray):
    """Add white Gaussian noise of standard deviation ``std`` (in the signal's units).

    Args:
        prob: probability of applying the transform.
        std: noise standard deviation (> 0).
        seed: seed of this transform's own generator.

    Attributes:
        noise: the last draw, ``(C, T)``.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.25, std: float = 0.05, seed: int = 0) -> None:
        self.std = _positive(std, "std", "RandGaussianNoise")
        self.noise = np.zeros((1, 1))
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        self.noise = self.R.normal(0.0, self.std, size=(n_channels, n_samples))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.noise.shape != x.shape:
            raise ValueError(f"RandGaussianNoise: noise drawn for {self.noise.shape}, signal is {x.shape}")
        return x + self.noise


class RandChannelPermutation(_RandArray):
    """Shuffle the channels with a uniformly random permutation (one channel: unchanged).

    Args:
        prob: probability of applying the transform.
        seed: seed of this transform's own generator.

    Attributes:
        permutation: the last draw, ``(C,)``; output channel ``i`` is input channel ``permutation[i]``.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32.
    """

    def __init__(self, prob: float = 0.25, seed: int = 0) -> None:
        self.permutation = np.zeros(1, dtype=np.int64)
        super().__init__(prob, seed)

    def _draw(self, n_channels: int, n_samples: int) -> None:
        self.permutation = self.R.permutation(n_channels)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return x[self.permutation]


# ----------------------------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------------------------
class StochasticAugment(Randomizable):
    """The stochastic augmentation module: time warp → magnitude warp → channel permutation → noise →
    cut-out, each applied independently with its own probability (a probability of 0 switches one off).

    Args:
        time_warp_prob, time_warp_sigma: :class:`RandTimeWarp`.
        magnitude_warp_prob, magnitude_warp_sigma: :class:`RandMagnitudeWarp` (one curve per channel).
        warp_knots: interior knots of both warps.
        channel_permutation_prob: :class:`RandChannelPermutation`.
        noise_prob, noise_std: :class:`RandGaussianNoise`.
        cutout_prob, cutout_max_fraction: :class:`RandCutOut`.
        seed: seed of the module; each member's seed is drawn from it.

    Attributes:
        transforms: the members, in the order they are applied.

    Shapes:
        ``(C, T)`` → ``(C, T)``, float32. Each call draws anew: two calls give two augmentations.
    """

    def __init__(
        self,
        time_warp_prob: float = 0.15,
        time_warp_sigma: float = 0.2,
        magnitude_warp_prob: float = 0.25,
        magnitude_warp_sigma: float = 0.2,
        warp_knots: int = 4,
        channel_permutation_prob: float = 0.25,
        noise_prob: float = 0.25,
        noise_std: float = 0.05,
        cutout_prob: float = 0.4,
        cutout_max_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.time_warp = RandTimeWarp(time_warp_prob, time_warp_sigma, warp_knots)
        self.magnitude_warp = RandMagnitudeWarp(magnitude_warp_prob, magnitude_warp_sigma, warp_knots)
        self.channel_permutation = RandChannelPermutation(channel_permutation_prob)
        self.noise = RandGaussianNoise(noise_prob, noise_std)
        self.cutout = RandCutOut(cutout_prob, cutout_max_fraction)
        self.transforms: tuple[_RandArray, ...] = (
            self.time_warp,
            self.magnitude_warp,
            self.channel_permutation,
            self.noise,
            self.cutout,
        )
        self.set_random_state(seed=_integer(seed, "seed", "StochasticAugment", 0))

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> StochasticAugment:
        """Seed this module's generator and, from it, every member's (distinct seeds, so the members'
        draws are not copies of each other)."""
        super().set_random_state(seed, state)
        for transform in self.transforms:
            transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        """Draws happen in the members (each on the signal as it reaches it)."""

    def __call__(self, signal: Any) -> np.ndarray:
        """One augmentation of ``signal`` ``(C, T)`` → ``(C, T)`` float32."""
        x = _as_signal(signal, "StochasticAugment")
        for transform in self.transforms:
            x = transform(x)
        return x if x.dtype == np.float32 else x.astype(np.float32)
