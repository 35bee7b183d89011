"""X-ray preprocessing as a JSON spec run in numpy, and the numpy maths of the anatomy-preserving views.

Torch-free (numpy, SciPy, Pillow, pydicom): training (:class:`~modalities.xray.adapter.XrayAdapter`) and the
ONNX predictor run the same code, so an exported model sees exactly what it was trained on.

The preprocessing of a radiograph is a list of steps (plain JSON, recorded with runs and exported
models), in this order (:func:`check_spec` enforces it):

==============  ========================================================================================
step            what it does
==============  ========================================================================================
``read``        ``{"op": "read", "voi": "auto"}`` — :func:`~modalities.xray.readers.read_xray`: PNG, JPEG
                or DICOM → float ``(H0, W0)`` in ``[0, 1]``, bright = dense (MONOCHROME1 inverted, DICOM
                VOI LUT/window applied; ``"minmax"`` ignores the file's window)
``letterbox``   ``{"op": "letterbox", "size": [H, W], "interpolation": "linear_antialias", "pad_value":
                0.0}`` — resize keeping the aspect ratio so the image fits ``H × W`` (scale ``s = min(H /
                H0, W / W0)``, resized size ``h = max(1, round(H0 · s))``, ``w`` likewise), then pad with
                ``pad_value`` to ``H × W``, ``(H − h) // 2`` rows above and ``(W − w) // 2`` columns to the
                left (:func:`letterbox`; the resampling is :func:`resize`)
``normalize``   ``{"op": "normalize", "mean": m, "std": s}`` (optional) — ``(x − m) / s``
==============  ========================================================================================

Output: float32 ``(1, H, W)``. :class:`Geometry` records where the original image went, so heatmaps and
points (gaze, annotation boxes) drawn on the original pixels can be put on the same grid
(:meth:`Geometry.apply_heatmap`, :meth:`Geometry.map_points`).

Views (:class:`~modalities.xray.adapter.XrayViewd` draws the parameters; the maths is here): a small
rotation/scale/translation about the image centre (:func:`warp_affine`), contrast, brightness and gamma
(:func:`adjust_intensity`), Gaussian noise — all on ``[0, 1]`` images. No left-right flip by default: on a
radiograph the heart lies on the image's right (the patient's left), and findings and reports are
sided; a flipped image is a different (dextrocardic) anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from medcl.errors import ConfigError
from modalities.xray.readers import XrayImage, read_xray

__all__ = [
    "Geometry",
    "adjust_intensity",
    "check_spec",
    "image_size_of",
    "letterbox",
    "normalization_of",
    "preprocess_file",
    "preprocess_pixels",
    "preprocessing_spec",
    "resize",
    "resize_weights",
    "warp_affine",
    "warp_matrix",
]

_ORDER = ("read", "letterbox", "normalize")
_INTERPOLATIONS = ("linear_antialias",)


# --------------------------------------------------------------------------------------------------
# the spec
# --------------------------------------------------------------------------------------------------


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        sides = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        sides = (int(value[0]), int(value[1]))
        if any(float(v) != int(v) for v in value):
            raise ConfigError(f"{name} must be whole numbers, got {list(value)}")
    else:
        raise ConfigError(f"{name} must be one integer or [height, width], got {value!r}")
    if min(sides) < 8:
        raise ConfigError(f"{name} sides must be >= 8 pixels, got {list(sides)}")
    return sides


def preprocessing_spec(
    image_size: int | Sequence[int] = 224,
    voi: str = "auto",
    normalize: Sequence[float] | None = None,
    pad_value: float = 0.0,
) -> list[dict[str, Any]]:
    """The steps (see the module docstring) for these settings, checked.

    Args:
        image_size: output ``H`` (= ``W``) or ``[H, W]``.
        voi: DICOM VOI handling, ``"auto"`` or ``"minmax"``.
        normalize: ``[mean, std]`` to standardise with, or None to keep ``[0, 1]``.
        pad_value: value of the letterbox padding in ``[0, 1]`` (0: black, like air).

    Raises:
        ConfigError: an invalid setting.
    """
    steps: list[dict[str, Any]] = [
        {"op": "read", "voi": voi},
        {
            "op": "letterbox",
            "size": list(_pair(image_size, "image_size")),
            "interpolation": "linear_antialias",
            "pad_value": float(pad_value),
        },
    ]
    if normalize is not None:
        if len(normalize) != 2:
            raise ConfigError(f"normalize must be [mean, std], got {list(normalize)}")
        steps.append({"op": "normalize", "mean": float(normalize[0]), "std": float(normalize[1])})
    return check_spec(steps)


def check_spec(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate a spec (ops known, in order, each once, ``read`` and ``letterbox`` present, values
    sensible); return it as plain dicts.

    Raises:
        ConfigError: what is wrong, naming the step.
    """
    out = [dict(step) for step in steps]
    ops = [str(step.get("op")) for step in out]
    unknown = [op for op in ops if op not in _ORDER]
    if unknown:
        raise ConfigError(f"unknown X-ray preprocessing step(s) {unknown}; known: {list(_ORDER)}")
    if len(set(ops)) != len(ops) or ops != sorted(ops, key=_ORDER.index):
        raise ConfigError(
            f"X-ray preprocessing steps must be {list(_ORDER)} in this order, each once; got {ops}"
        )
    if ops[:2] != ["read", "letterbox"]:
        raise ConfigError(f"X-ray preprocessing needs 'read' then 'letterbox'; got {ops}")
    for step in out:
        op = step["op"]
        if op == "read":
            if step.get("voi", "auto") not in ("auto", "minmax"):
                raise ConfigError(f"read: voi must be 'auto' or 'minmax', got {step.get('voi')!r}")
            step.setdefault("voi", "auto")
        elif op == "letterbox":
            step["size"] = list(_pair(step.get("size"), "letterbox: size"))
            if step.get("interpolation", "linear_antialias") not in _INTERPOLATIONS:
                raise ConfigError(f"letterbox: interpolation must be one of {_INTERPOLATIONS}")
            step.setdefault("interpolation", "linear_antialias")
            pad = float(step.get("pad_value", 0.0))
            if not (math.isfinite(pad) and 0.0 <= pad <= 1.0):
                raise ConfigError(f"letterbox: pad_value must be in [0, 1], got {pad}")
            step["pad_value"] = pad
        else:
            mean, std = float(step.get("mean", math.nan)), float(step.get("std", math.nan))
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ConfigError(f"normalize: needs a finite mean and a std > 0, got {mean}, {std}")
            step["mean"], step["std"] = mean, std
    return out


def image_size_of(steps: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """``(H, W)`` of the spec's output."""
    for step in steps:
        if step.get("op") == "letterbox":
            size = step["size"]
            return (int(size[0]), int(size[1]))
    raise ConfigError("the X-ray preprocessing has no letterbox step")


def normalization_of(steps: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """``(mean, std)`` of the spec's normalize step, ``(0, 1)`` without one."""
    for step in steps:
        if step.get("op") == "normalize":
            return (float(step["mean"]), float(step["std"]))
    return (0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# resampling and letterboxing
# --------------------------------------------------------------------------------------------------


def resize_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """``(n_out, n_in)`` weights of antialiased linear resampling along one axis.

    Output sample ``i`` is centred at input coordinate ``c_i = (i + 0.5) · n_in / n_out`` (pixel ``j``
    covers ``[j, j + 1)``). With ``a = max(n_in / n_out, 1)`` (the filter widens when shrinking, so every
    input pixel contributes: antialiasing), input pixel ``j`` gets weight ``max(0, 1 − |j + 0.5 − c_i| / a)``;
    the weights of each output sample are normalised to sum 1 over the pixels inside the image. This is
    Pillow's ``BILINEAR`` resize and torch's ``interpolate(mode="bilinear", antialias=True,
    align_corners=False)``; upsampling (``a = 1``) is ordinary bilinear interpolation with the edges
    clamped.
    """
    if n_in < 1 or n_out < 1:
        raise ConfigError(f"cannot resize {n_in} samples to {n_out}")
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    first = np.floor(centres - support).astype(np.int64)
    width = math.ceil(2 * support) + 2
    columns = first[:, None] + np.arange(width)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(columns + 0.5 - centres[:, None]) / support)
    weights[(columns < 0) | (columns >= n_in)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n_out), width)
    keep = weights.ravel() > 0
    return sparse.csr_matrix(
        (weights.ravel()[keep], (rows[keep], columns.ravel()[keep])), shape=(n_out, n_in)
    )


def resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Antialiased linear resize of ``x`` ``(H0, W0)`` to ``size`` ``(h, w)`` (:func:`resize_weights`
    along rows, then columns; computed in float64). Returns float32 ``(h, w)``."""
    h, w = int(size[0]), int(size[1])
    x = np.asarray(x, dtype=np.float64)
    if x.shape == (h, w):
        return x.astype(np.float32)
    rows = resize_weights(x.shape[0], h) @ x  # (h, W0)
    out = (resize_weights(x.shape[1], w) @ rows.T).T  # (h, w)
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class Geometry:
    """Where an original image ``(H0, W0)`` went in the letterboxed output ``(H, W)``.

    Attributes:
        original: ``(H0, W0)``.
        resized: ``(h, w)``: the image's size inside the output.
        output: ``(H, W)``.
        offset: ``(top, left)`` padding before the image.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    output: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(h / H0, w / W0)`` (equal up to rounding)."""
        return (self.resized[0] / self.original[0], self.resized[1] / self.original[1])

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "original": list(self.original),
            "resized": list(self.resized),
            "output": list(self.output),
            "offset": list(self.offset),
        }

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Points ``(N, 2)`` as ``(x, y)`` = (column, row) in the original's continuous pixel coordinates
        (pixel ``(r, c)`` covers ``[c, c + 1) × [r, r + 1)``) → the same points in the output."""
        xy = np.asarray(xy, dtype=np.float64)
        sy, sx = self.scale
        return np.stack([xy[..., 0] * sx + self.offset[1], xy[..., 1] * sy + self.offset[0]], axis=-1)

    def apply(self, x: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
        """Resize ``x`` ``(H0, W0)`` into the output grid like the image (float32 ``(H, W)``)."""
        if tuple(x.shape) != self.original:
            raise ConfigError(f"array of shape {tuple(x.shape)} does not match the image's {self.original}")
        out = np.full(self.output, pad_value, dtype=np.float32)
        top, left = self.offset
        out[top : top + self.resized[0], left : left + self.resized[1]] = resize(x, self.resized)
        return out

    def apply_heatmap(self, heatmap: np.ndarray) -> np.ndarray | None:
        """A heatmap ``(H0, W0)`` (non-negative) on the output grid, renormalised to sum 1 (float32
        ``(H, W)``; padding 0); None when it holds no mass."""
        heatmap = np.asarray(heatmap, dtype=np.float64)
        if not np.isfinite(heatmap).all() or (heatmap < 0).any():
            raise ConfigError("a heatmap must be finite and non-negative")
        return _renormalised(self.apply(heatmap))


def letterbox(x: np.ndarray, size: Sequence[int], pad_value: float = 0.0) -> tuple[np.ndarray, Geometry]:
    """Fit ``x`` ``(H0, W0)`` into ``size`` ``(H, W)`` keeping its aspect ratio, centred, padded with
    ``pad_value`` (see the module docstring). Returns float32 ``(H, W)`` and the :class:`Geometry`."""
    height, width = int(size[0]), int(size[1])
    h0, w0 = int(x.shape[0]), int(x.shape[1])
    scale = min(height / h0, width / w0)
    h = min(height, max(1, round(h0 * scale)))
    w = min(width, max(1, round(w0 * scale)))
    geometry = Geometry((h0, w0), (h, w), (height, width), ((height - h) // 2, (width - w) // 2))
    return geometry.apply(np.asarray(x), pad_value), geometry


def preprocess_pixels(pixels: np.ndarray, steps: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, Geometry]:
    """Run the spec's steps after ``read`` on grey ``[0, 1]`` pixels ``(H0, W0)``.

    Returns:
        float32 ``(1, H, W)`` and the :class:`Geometry` of the letterbox.
    """
    geometry: Geometry | None = None
    x = np.asarray(pixels, dtype=np.float32)
    for step in check_spec(steps):
        if step["op"] == "letterbox":
            x, geometry = letterbox(x, step["size"], step["pad_value"])
        elif step["op"] == "normalize":
            x = ((x - step["mean"]) / step["std"]).astype(np.float32)
    if geometry is None:  # check_spec guarantees a letterbox step
        raise ConfigError("the X-ray preprocessing has no letterbox step")
    return np.ascontiguousarray(x[None], dtype=np.float32), geometry


def preprocess_file(
    path: str | Path, steps: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, Geometry, XrayImage]:
    """Read a radiograph and run the whole spec: float32 ``(1, H, W)``, its :class:`Geometry` and the
    :class:`~modalities.xray.readers.XrayImage` as read.

    Raises:
        DataError: the file cannot be used (from the reader).
    """
    steps = check_spec(steps)
    image = read_xray(path, voi=steps[0]["voi"])
    x, geometry = preprocess_pixels(image.pixels, steps)
    return x, geometry, image


# --------------------------------------------------------------------------------------------------
# view maths (parameters drawn by modalities.xray.adapter.XrayViewd)
# --------------------------------------------------------------------------------------------------


def warp_matrix(
    shape: Sequence[int], angle_deg: float = 0.0, scale: float = 1.0, shift: Sequence[float] = (0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (2, 2), offset (2,))`` mapping *output* ``(row, col)`` indices to *input* ones, for the
    similarity transform that rotates the content by ``angle_deg`` counter-clockwise as displayed, scales
    it by ``scale`` about the image centre ``((H − 1) / 2, (W − 1) / 2)``, then moves it by ``shift``
    ``(rows, cols)`` pixels: a content point ``p`` lands at ``c + scale · R (p − c) + shift`` with
    ``R = [[cos θ, −sin θ], [sin θ, cos θ]]`` in (row, col) coordinates."""
    theta = math.radians(float(angle_deg))
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]], dtype=np.float64)
    centre = (np.asarray(shape[:2], dtype=np.float64) - 1.0) / 2.0
    matrix = rotation.T / float(scale)
    offset = centre - matrix @ (centre + np.asarray(shift, dtype=np.float64))
    return matrix, offset


def warp_affine(
    x: np.ndarray,
    angle_deg: float = 0.0,
    scale: float = 1.0,
    shift: Sequence[float] = (0.0, 0.0),
    cval: float = 0.0,
) -> np.ndarray:
    """Rotate/scale/translate ``x`` ``(H, W)`` (:func:`warp_matrix`), bilinear, outside filled with
    ``cval``. Returns float32 ``(H, W)``."""
    matrix, offset = warp_matrix(x.shape, angle_deg, scale, shift)
    out = ndimage.affine_transform(
        np.asarray(x, dtype=np.float64), matrix, offset=offset, order=1, mode="constant", cval=float(cval)
    )
    return out.astype(np.float32)


def adjust_intensity(
    x: np.ndarray, contrast: float = 1.0, brightness: float = 0.0, gamma: float = 1.0
) -> np.ndarray:
    """``[0, 1]`` image → ``clip((x − m) · contrast + m + brightness, 0, 1) ** gamma`` with ``m`` the image
    mean (float32)."""
    x = np.asarray(x, dtype=np.float64)
    mean = float(x.mean())
    y = np.clip((x - mean) * float(contrast) + mean + float(brightness), 0.0, 1.0)
    if gamma != 1.0:
        y = y ** float(gamma)
    return y.astype(np.float32)


def _renormalised(heatmap: np.ndarray) -> np.ndarray | None:
    heatmap = np.maximum(np.asarray(heatmap, dtype=np.float64), 0.0)
    total = float(heatmap.sum())
    if not total > 0:
        return None
    return (heatmap / total).astype(np.float32)
