"""Sliding-window inference over a whole volume, in numpy only (no torch).

:func:`sliding_window_inference` is a port of MONAI's ``monai.inferers.sliding_window_inference`` for
predictors whose output has the window's spatial size (the segmentation case): the same padding of
volumes smaller than the window, the same window placement (``_get_scan_interval`` +
``dense_patch_slices``: windows every ``int(roi·(1 − overlap))`` voxels, the last one shifted back to
end on the border), the same importance map (``compute_importance_map``: ones, or a product of 1-D
Gaussians with ``σ = sigma_scale·roi`` and peak 1, clamped below at 1e-3) and the same blending (the
weighted sum of the window outputs divided by the summed weights). The ONNX predictor uses it with
onnxruntime as ``predict_fn``; a test checks it against MONAI on real and odd-sized volumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from medcl.errors import ConfigError

__all__ = [
    "BLEND_MODES",
    "PADDING_MODES",
    "dense_window_slices",
    "importance_map",
    "scan_interval",
    "sliding_window_inference",
]

BLEND_MODES = ("constant", "gaussian")
# torch.nn.functional.pad modes (MONAI's names) → numpy.pad modes
PADDING_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}

PredictFn = Callable[[np.ndarray], np.ndarray]


def _per_dim(value: float | int | Sequence[float] | Sequence[int], n: int, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value,) * n
    values = tuple(value)
    if len(values) != n:
        raise ConfigError(f"{name} must be one number or {n} numbers (one per spatial axis), got {values}")
    return values


def scan_interval(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]
) -> tuple[int, ...]:
    """Steps between window starts per axis: ``int(roi·(1 − overlap))`` (at least 1), or the ROI itself
    where the ROI spans the whole axis (MONAI's ``_get_scan_interval``)."""
    steps = []
    for size, roi, o in zip(image_size, roi_size, overlap, strict=True):
        if roi == size:
            steps.append(int(roi))
        else:
            interval = int(roi * (1 - o))
            steps.append(interval if interval > 0 else 1)
    return tuple(steps)


def dense_window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], interval: Sequence[int]
) -> list[tuple[slice, ...]]:
    """Every window as a tuple of slices, in C order over the per-axis starts (MONAI's
    ``dense_patch_slices``): starts ``0, s, 2s, …`` up to the first window that reaches the border, that one
    shifted back so it ends on the border. ``roi_size`` must not exceed ``image_size``."""
    starts_per_axis = []
    for size, roi, step in zip(image_size, roi_size, interval, strict=True):
        if step == 0:
            count = 1
        else:
            candidates = range(math.ceil(float(size) / step))
            count = next((d + 1 for d in candidates if d * step + roi >= size), 1)
        starts = []
        for index in range(count):
            start = index * step
            starts.append(start - max(start + roi - size, 0))
        starts_per_axis.append(starts)
    grid = np.meshgrid(*starts_per_axis, indexing="ij")
    corners = np.stack([axis.ravel() for axis in grid], axis=1)
    return [
        tuple(slice(int(s), int(s) + r) for s, r in zip(corner, roi_size, strict=True)) for corner in corners
    ]


def importance_map(
    roi_size: Sequence[int], mode: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125
) -> np.ndarray:
    """The per-window blending weights ``roi_size`` (float32), as MONAI's ``compute_importance_map``.

    ``"constant"``: ones. ``"gaussian"``: ``∏_k exp(−x_k² / (2 σ_k²))`` with ``x_k`` the offsets from the
    window centre (``−(n−1)/2 … (n−1)/2``) and ``σ_k = sigma_scale_k · roi_k``; peak 1 (not normalised to
    sum 1, as in MONAI), clamped below at ``1e-3`` so that every voxel keeps a non-zero weight.
    """
    if mode not in BLEND_MODES:
        raise ConfigError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    roi = tuple(int(r) for r in roi_size)
    if mode == "constant":
        weights = np.ones(roi, dtype=np.float32)
    else:
        scales = _per_dim(sigma_scale, len(roi), "sigma_scale")
        weights = np.ones((), dtype=np.float32)
        for k, (n, scale) in enumerate(zip(roi, scales, strict=True)):
            sigma = n * float(scale)
            x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
            profile = np.exp(x**2 / np.float32(-2 * sigma**2), dtype=np.float32)
            weights = profile if k == 0 else weights[..., None] * profile
    floor = max(float(weights.min()), 1e-3)
    return np.maximum(weights, np.float32(floor)).astype(np.float32)


def sliding_window_inference(
    image: np.ndarray,
    roi_size: Sequence[int] | int,
    predict_fn: PredictFn,
    overlap: float | Sequence[float] = 0.25,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    sw_batch_size: int = 4,
    padding_mode: str = "constant",
    cval: float = 0.0,
) -> np.ndarray:
    """Run ``predict_fn`` on overlapping windows of ``image`` and blend the outputs into one map.

    Args:
        image: ``(C, H, W, D)`` or ``(B, C, H, W, D)`` (any number of spatial axes when ``roi_size`` is a
            sequence: its length is the spatial rank). Float arrays keep their dtype (the blending is done in
            it, as MONAI does in the input's dtype); other dtypes are computed in float32.
        roi_size: the window, one size per spatial axis or one for all; a non-positive entry means the
            whole axis. Axes shorter than the window are padded (half before, half after) and the output
            is cropped back.
        predict_fn: ``(n, C, *roi_size) → (n, K, *roi_size)``, ``n <= sw_batch_size`` windows at a time.
        overlap: fraction of the window shared by neighbours, in ``[0, 1)``, one or one per axis.
        mode: ``"gaussian"`` (less weight at the window borders) or ``"constant"`` (plain mean).
        sigma_scale: the Gaussian's ``σ`` as a fraction of the window size (one or one per axis).
        sw_batch_size: windows per ``predict_fn`` call (windows of several images are batched together).
        padding_mode: ``"constant"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (torch's names).
        cval: the fill value of ``"constant"`` padding.

    Returns:
        ``(K, H, W, D)``, or ``(B, K, H, W, D)`` for a batched ``image``: the blended outputs.

    Raises:
        ConfigError: a bad setting, an image whose rank does not fit ``roi_size``, or a ``predict_fn``
            whose output is not ``(n, K, *roi_size)``.
    """
    image = np.asarray(image)
    if isinstance(roi_size, (int, np.integer)):
        spatial = 3
        roi_request: tuple = (int(roi_size),) * spatial
    else:
        roi_request = tuple(roi_size)
        spatial = len(roi_request)
    if image.ndim == spatial + 1:
        batched, batch = False, image[None]
    elif image.ndim == spatial + 2:
        batched, batch = True, image
    else:
        raise ConfigError(
            f"image of shape {image.shape} does not fit a {spatial}-D roi_size: expected (C, *spatial) or "
            f"(B, C, *spatial) with {spatial} spatial axes"
        )
    overlaps = tuple(float(o) for o in _per_dim(overlap, spatial, "overlap"))
    if any(o < 0 or o >= 1 for o in overlaps):
        raise ConfigError(f"overlap must be >= 0 and < 1, got {overlaps}")
    if mode not in BLEND_MODES:
        raise ConfigError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ConfigError(f"padding_mode must be one of {tuple(PADDING_MODES)}, got {padding_mode!r}")
    if int(sw_batch_size) < 1:
        raise ConfigError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    dtype = batch.dtype if np.issubdtype(batch.dtype, np.floating) else np.dtype(np.float32)
    batch = batch.astype(dtype, copy=False)

    n_images, _, *original_size = batch.shape
    roi = tuple(
        int(r) if r is not None and int(r) > 0 else int(s)
        for r, s in zip(roi_request, original_size, strict=True)
    )
    image_size = tuple(max(s, r) for s, r in zip(original_size, roi, strict=True))
    pad_before = [(r - s) // 2 if r > s else 0 for s, r in zip(original_size, roi, strict=True)]
    pad_width = [(0, 0), (0, 0)] + [
        (before, max(r - s, 0) - before) for before, s, r in zip(pad_before, original_size, roi, strict=True)
    ]
    if any(after or before for before, after in pad_width):
        kwargs = {"constant_values": cval} if padding_mode == "constant" else {}
        batch = np.pad(batch, pad_width, mode=PADDING_MODES[padding_mode], **kwargs)

    windows = dense_window_slices(image_size, roi, scan_interval(image_size, roi, overlaps))
    weights = importance_map(roi, mode, sigma_scale).astype(dtype)
    count = np.zeros(image_size, dtype=dtype)
    for window in windows:
        count[window] += weights

    output: np.ndarray | None = None
    total = len(windows) * n_images
    for first in range(0, total, int(sw_batch_size)):
        indices = range(first, min(first + int(sw_batch_size), total))
        where = [(i // len(windows), windows[i % len(windows)]) for i in indices]
        chunk = np.concatenate([batch[(slice(b, b + 1), slice(None), *window)] for b, window in where])
        result = np.asarray(predict_fn(chunk))
        if result.ndim != spatial + 2 or result.shape[0] != len(where) or tuple(result.shape[2:]) != roi:
            raise ConfigError(
                f"predict_fn returned shape {result.shape} for windows of shape {chunk.shape}; it must "
                f"return (n, K, *roi_size) = ({len(where)}, K, {', '.join(map(str, roi))})"
            )
        if output is None:
            output = np.zeros((n_images, result.shape[1], *image_size), dtype=dtype)
        weighted = result.astype(dtype, copy=False) * weights
        for (b, window), values in zip(where, weighted, strict=True):
            output[(b, slice(None), *window)] += values
    if output is None:  # unreachable: there is always at least one window
        raise ConfigError("no window to predict")
    output /= count
    crop = tuple(slice(before, before + s) for before, s in zip(pad_before, original_size, strict=True))
    output = output[(slice(None), slice(None), *crop)]
    return output if batched else output[0]
