"""VoCo's crop geometry and the per-sample transform that makes VoCo's inputs.

Volume contrast (VoCo, Wu et al., CVPR 2024; reference code ``Luffy03/VoCo``) cuts a volume brought
to the *region* ``(n·r, n·r, r)`` into an ``n × n`` grid of *base crops* of side ``r`` over the first
two spatial axes (full depth ``r``), draws ``k`` *random crops* of the same size inside the region, and
labels each random crop with its overlap with every base crop. Everything here is pure geometry on
integer voxel positions, so the labels are exact:

* base crop ``b = i·n + j`` (``i`` along the first spatial axis, ``j`` along the second, as the
  reference's ``get_crop_transform``) has its corner at ``(i·r, j·r)``;
* a random crop with corner ``(x, y)`` overlaps base ``b`` by
  ``a_b = max(0, min(x + r, (i+1)·r) − max(x, i·r)) · max(0, min(y + r, (j+1)·r) − max(y, j·r))``
  voxels, and its label is ``y_b = a_b / Σ_b' a_b'`` (``= a_b / r²``: a crop inside the region lies
  entirely on base crops). A crop overlaps at most 4 bases; labels are non-negative and sum to 1.

**How random crops are drawn, and why labels cannot collapse.** The corner ``(x, y)`` of every random
crop is drawn uniformly among the integer positions ``{0, …, (n−1)·r}²`` that keep the crop inside the
region (the reference draws the centre with ``np.random.randint(r/2, n·r − r/2)``, i.e. corners
``{0, …, (n−1)·r − 1}``, which leaves out the last position; we include it, so the draw is symmetric).
Two degenerate layouts are excluded:

1. ``n = 1``: every crop would cover the single base crop, every label would be ``[1]`` and the
   prediction task would be empty, so ``n >= 2`` is required (and ``r >= 2``, otherwise every position
   is on the grid).
2. A crop whose corner lies on the grid (both coordinates multiples of ``r``) *is* a base crop (same
   voxels, one-hot label): on its own harmless, but if every random crop of a volume were such a copy,
   the volume would teach only "find the identical crop". The ``k`` corners of a volume are therefore
   drawn jointly and redrawn (rejection sampling) while all ``k`` are grid-aligned; this conditions the
   uniform draw on "at least one crop straddles base crops" and changes nothing else. With ``k = 1``
   the single crop is never grid-aligned.

Note for small grids: with ``n = 2`` a crop overlaps all 4 bases unless it touches the region's border
(probability ``((r − 1)/(r + 1))²`` per crop, 0.88 for ``r = 32``), so the ``y = 0`` (negative) term of
the prediction loss is often empty for a volume; ``n = 3`` (VoCo v2) or ``n = 4`` (v1) leaves most
bases non-overlapping for every crop.

**Fitting the volume to the region** (``fit``): ``"random_crop"`` (default) pads each spatial axis
that is shorter than the region symmetrically with ``pad_value`` and takes a random window of the region's
size (an offset drawn uniformly); ``"center_crop"`` pads the same way and takes the central window;
``"resize"`` resamples the whole volume to the region with MONAI ``Resize`` (trilinear,
``align_corners=True``), as VoCo's data pipeline does (it resizes to ``384 × 384 × 96``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Resize
from monai.utils import convert_to_numpy

from medcl.errors import ConfigError

__all__ = [
    "BASES_KEY",
    "CROPS_KEY",
    "FIT_MODES",
    "OVERLAP_KEY",
    "VoCoCropsd",
    "base_corners",
    "check_grid",
    "extract_crops",
    "fit_volume",
    "is_grid_aligned",
    "overlap_labels",
    "region_shape",
    "sample_crop_corners",
    "sample_fit_offset",
]

#: Keys :class:`VoCoCropsd` adds to a sample.
BASES_KEY = "voco_bases"
CROPS_KEY = "voco_crops"
OVERLAP_KEY = "voco_overlap"

#: How a volume is brought to the region ``(n·r, n·r, r)``.
FIT_MODES: tuple[str, ...] = ("random_crop", "center_crop", "resize")

#: Joint redraws of the ``k`` corners before giving up (the chance that all ``k`` crops are
#: grid-aligned is at most ``(4/9)^k`` per draw, so this bound is never reached in practice).
_MAX_DRAWS = 10_000


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_grid(n: int, r: int, k: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``n >= 2``, ``r >= 2`` (and ``k >= 1`` when given).

    ``n = 1`` would make every label ``[1]`` and ``r = 1`` would put every crop on the grid (see the
    module docstring).
    """
    _check_int(n, "n_bases_per_side", 2)
    _check_int(r, "crop_size", 2)
    if k is not None:
        _check_int(k, "n_random_crops", 1)


def region_shape(n: int, r: int) -> tuple[int, int, int]:
    """The spatial shape ``(n·r, n·r, r)`` a volume is brought to before cropping."""
    return (n * r, n * r, r)


def base_corners(n: int, r: int) -> np.ndarray:
    """Corners of the ``n × n`` base crops, ``(n², 2)`` int64; row ``i·n + j`` is ``(i·r, j·r)``."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([i.ravel() * r, j.ravel() * r], axis=1).astype(np.int64)


def _as_corners(corners: Any, n: int, r: int) -> np.ndarray:
    corners = np.asarray(corners)
    if corners.ndim != 2 or corners.shape[1] != 2 or corners.shape[0] == 0:
        raise ValueError(f"corners must have shape (k, 2) with k >= 1, got {corners.shape}")
    if not np.issubdtype(corners.dtype, np.integer):
        raise ValueError(f"corners must be integer voxel positions, got dtype {corners.dtype}")
    high = (n - 1) * r
    if (corners < 0).any() or (corners > high).any():
        raise ValueError(
            f"every corner must lie in [0, {high}] so that the crop of side {r} stays inside the "
            f"{n * r} × {n * r} region, got {corners.tolist()}"
        )
    return corners.astype(np.int64)


def overlap_labels(corners: Any, n: int, r: int) -> np.ndarray:
    """VoCo's labels: the overlap area of each random crop with each base crop, normalised to sum 1.

    Args:
        corners: ``(k, 2)`` integer corners ``(x, y)`` of the random crops, each in ``[0, (n−1)·r]``.
        n: base crops per side.
        r: crop side.

    Returns:
        ``(k, n²)`` float64; row ``q``, column ``i·n + j`` is the area of crop ``q`` ∩ base ``(i, j)``
        divided by the total overlap area of crop ``q`` (``r²``). Exact for the rational areas involved.
    """
    check_grid(n, r)
    corners = _as_corners(corners, n, r)
    bases = base_corners(n, r)
    low = np.maximum(corners[:, None, :], bases[None, :, :])  # (k, n², 2)
    high = np.minimum(corners[:, None, :] + r, bases[None, :, :] + r)
    sides = np.clip(high - low, 0, None)
    areas = sides[..., 0] * sides[..., 1]  # (k, n²) integer voxel counts
    return areas / areas.sum(axis=1, keepdims=True)


def is_grid_aligned(corners: Any, r: int) -> np.ndarray:
    """``(k,)`` bool: the crop's corner lies on the base grid (it is exactly one base crop)."""
    corners = np.asarray(corners)
    return (corners % r == 0).all(axis=-1)


def sample_crop_corners(rng: np.random.RandomState, n: int, r: int, k: int) -> np.ndarray:
    """Draw ``k`` random-crop corners uniformly in ``{0, …, (n−1)·r}²``, not all on the base grid.

    The ``k`` corners are drawn jointly and redrawn while every one is grid-aligned (see the module
    docstring); only ``rng`` is used.

    Args:
        rng: the generator (a MONAI transform's ``self.R``).
        n: base crops per side (>= 2).
        r: crop side (>= 2).
        k: number of random crops (>= 1).

    Returns:
        ``(k, 2)`` int64 corners ``(x, y)``.
    """
    check_grid(n, r, k)
    high = (n - 1) * r
    for _ in range(_MAX_DRAWS):
        corners = rng.randint(0, high + 1, size=(k, 2)).astype(np.int64)
        if not is_grid_aligned(corners, r).all():
            return corners
    raise RuntimeError(f"could not draw {k} crops that are not all grid-aligned in {_MAX_DRAWS} draws")


def extract_crops(region: np.ndarray, corners: Any, r: int) -> np.ndarray:
    """Cut crops of side ``r`` (full depth) out of a region.

    Args:
        region: ``(C, n·r, n·r, r)`` array.
        corners: ``(k, 2)`` integer corners ``(x, y)``.
        r: crop side.

    Returns:
        ``(k, C, r, r, r)`` array (a copy), crop ``q`` = ``region[:, x:x+r, y:y+r, :]``.
    """
    if region.ndim != 4 or region.shape[3] != r or region.shape[1] % r or region.shape[1] != region.shape[2]:
        raise ValueError(f"region must have shape (C, n·{r}, n·{r}, {r}), got {region.shape}")
    corners = _as_corners(corners, region.shape[1] // r, r)
    return np.stack([region[:, x : x + r, y : y + r, :] for x, y in corners.tolist()])


def _padded_shape(spatial: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(int(s), int(t)) for s, t in zip(spatial, target, strict=True))


def sample_fit_offset(
    rng: np.random.RandomState, spatial: Sequence[int], target: Sequence[int], fit: str
) -> tuple[int, ...] | None:
    """The window offset (after padding) that :func:`fit_volume` uses; ``None`` for ``"resize"``.

    ``"random_crop"``: each axis uniform in ``[0, padded − target]`` (drawn from ``rng``);
    ``"center_crop"``: ``(padded − target) // 2``, ``rng`` untouched.
    """
    if fit not in FIT_MODES:
        raise ConfigError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    if fit == "resize":
        return None
    slack = [p - t for p, t in zip(_padded_shape(spatial, target), target, strict=True)]
    if fit == "center_crop":
        return tuple(s // 2 for s in slack)
    return tuple(int(rng.randint(0, s + 1)) for s in slack)


def fit_volume(
    volume: np.ndarray,
    target: Sequence[int],
    fit: str,
    offset: Sequence[int] | None,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Bring ``volume`` ``(C, H, W, D)`` to ``(C, *target)``.

    Crop modes pad every axis shorter than ``target`` symmetrically (``before = missing // 2``, as MONAI
    ``SpatialPad``) with ``pad_value`` and take the window at ``offset`` (from
    :func:`sample_fit_offset`); ``"resize"`` uses MONAI ``Resize`` (trilinear, ``align_corners=True``).

    Returns:
        float32 ``(C, *target)``.
    """
    if fit not in FIT_MODES:
        raise ConfigError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    target = tuple(int(t) for t in target)
    if fit == "resize":
        resized = Resize(spatial_size=target, mode="trilinear", align_corners=True)(volume)
        return convert_to_numpy(resized, dtype=np.float32)
    if offset is None or len(offset) != len(target):
        raise ValueError(f"a crop fit needs an offset per spatial axis, got {offset!r}")
    missing = [max(0, t - s) for s, t in zip(volume.shape[1:], target, strict=True)]
    widths = [(0, 0)] + [(m // 2, m - m // 2) for m in missing]
    padded = np.pad(volume, widths, mode="constant", constant_values=pad_value) if any(missing) else volume
    for axis, (o, t, p) in enumerate(zip(offset, target, padded.shape[1:], strict=True)):
        if not 0 <= o <= p - t:
            raise ValueError(f"offset {o} on spatial axis {axis} leaves the padded size {p} (window {t})")
    window = tuple(slice(o, o + t) for o, t in zip(offset, target, strict=True))
    return np.ascontiguousarray(padded[(slice(None), *window)], dtype=np.float32)


class VoCoCropsd(Randomizable, MapTransform):
    """Make VoCo's inputs from one sample: base crops, random crops and their overlap labels.

    Reads the channel-first volume ``(C, H, W, D)`` under the (single) key, brings it to the region
    ``(n·r, n·r, r)`` (see ``fit``), and adds

    * ``voco_bases`` ``(n², C, r, r, r)`` float32: the base crops, row ``i·n + j``;
    * ``voco_crops`` ``(k, C, r, r, r)`` float32: the random crops;
    * ``voco_overlap`` ``(k, n²)`` float32: :func:`overlap_labels` of the random crops.

    The input array is left as it is. All randomness (the fit offset, then the crop corners) comes from
    ``self.R``; seed it with :meth:`set_random_state`. After a call, ``fit_offset`` and ``crop_corners``
    hold what was drawn.

    Args:
        keys: the key of the volume (exactly one).
        n_bases_per_side: ``n`` (>= 2).
        crop_size: ``r`` (>= 2; the encoder may require more, e.g. a multiple of 16).
        n_random_crops: ``k`` (>= 1).
        fit: ``"random_crop"`` (default), ``"center_crop"`` or ``"resize"`` (module docstring).
        pad_value: constant used when padding.
        allow_missing_keys: MONAI's flag; a missing key then leaves the sample unchanged.

    Attributes:
        output_keys: ``("voco_bases", "voco_crops", "voco_overlap")``.
    """

    output_keys: tuple[str, ...] = (BASES_KEY, CROPS_KEY, OVERLAP_KEY)

    def __init__(
        self,
        keys: KeysCollection,
        n_bases_per_side: int = 2,
        crop_size: int = 32,
        n_random_crops: int = 4,
        fit: str = "random_crop",
        pad_value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ConfigError(f"VoCoCropsd reads exactly one volume, got keys {self.keys}")
        check_grid(n_bases_per_side, crop_size, n_random_crops)
        if fit not in FIT_MODES:
            raise ConfigError(f"fit must be one of {FIT_MODES}, got {fit!r}")
        self.n = int(n_bases_per_side)
        self.r = int(crop_size)
        self.k = int(n_random_crops)
        self.fit = fit
        self.pad_value = float(pad_value)
        self.fit_offset: tuple[int, ...] | None = None
        self.crop_corners: np.ndarray | None = None

    @property
    def region(self) -> tuple[int, int, int]:
        """``(n·r, n·r, r)``."""
        return region_shape(self.n, self.r)

    def randomize(self, data: Sequence[int]) -> None:
        """Draw the fit offset for a volume of spatial shape ``data`` and the ``k`` crop corners."""
        self.fit_offset = sample_fit_offset(self.R, data, self.region, self.fit)
        self.crop_corners = sample_crop_corners(self.R, self.n, self.r, self.k)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = convert_to_numpy(d[key], dtype=np.float32)
            if volume.ndim != 4:
                meta = d.get("meta")
                where = f" ({meta['path']})" if isinstance(meta, Mapping) and meta.get("path") else ""
                raise ConfigError(
                    f"VoCoCropsd needs a channel-first volume (C, H, W, D) under {key!r}{where}, got shape "
                    f"{volume.shape}; add a channel axis first (MONAI EnsureChannelFirstd)"
                )
            self.randomize(volume.shape[1:])
            corners = np.asarray(self.crop_corners)
            region = fit_volume(volume, self.region, self.fit, self.fit_offset, self.pad_value)
            d[BASES_KEY] = extract_crops(region, base_corners(self.n, self.r), self.r)
            d[CROPS_KEY] = extract_crops(region, corners, self.r)
            d[OVERLAP_KEY] = overlap_labels(corners, self.n, self.r).astype(np.float32)
        return d
