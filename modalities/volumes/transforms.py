"""Volume preprocessing as a JSON-able spec, the MONAI pipeline that runs it, its disk cache, and views.

The preprocessing of a volume is a list of steps, each a dict with an ``"op"`` and its settings (plain
JSON, so runs and exported models record it, and a torch-free predictor can re-implement it). The
steps, in the order :func:`preprocessing_spec` writes them (:func:`check_spec` enforces this order):

=====================  ====================================================================================
step                   what it does (MONAI transform; ``image`` and, where there is one, ``mask``)
=====================  ====================================================================================
``load``               ``{"op": "load", "channels": C}`` — read with
                       :func:`~modalities.volumes.readers.read_volume` / ``read_mask`` (MONAI's
                       NIfTI/NRRD/DICOM readers),
                       channel first ``(C, H, W, D)`` float32; the image must have ``C`` channels and the
                       mask must lie on the image's grid (:class:`LoadVolumed`)
``orientation``        ``{"op": "orientation", "axcodes": "RAS"}`` — ``Orientationd``: permute/flip the
                       voxel axes so that axis 1 runs left→right, axis 2 posterior→anterior, axis 3
                       inferior→superior (no interpolation)
``spacing``            ``{"op": "spacing", "pixdim": [x, y, z], "image_mode": "bilinear", "mask_mode":
                       "nearest", "padding_mode": "border", "align_corners": false}`` — ``Spacingd``
                       (computed in float32); for an axis-aligned affine: output voxel ``i`` samples input
                       coordinate ``i · pixdim / spacing`` (trilinear, edges clamped) and the output has
                       ``round((n − 1) · spacing / pixdim) + 1`` voxels; masks nearest-neighbour
``window``             ``{"op": "window", "a_min": -175, "a_max": 250, "b_min": 0, "b_max": 1, "clip":
                       true}`` — ``ScaleIntensityRanged``: ``(x − a_min) / (a_max − a_min) · (b_max −
                       b_min) + b_min``, then clipped to ``[b_min, b_max]`` (CT default)
``zscore``             ``{"op": "zscore", "nonzero": true, "channel_wise": true}`` —
                       ``NormalizeIntensityd``: per channel, over the voxels ≠ 0, ``(x − mean) / std``
                       (population std; std 0 → 1); zero voxels stay 0 (MR default)
``crop_foreground``    ``{"op": "crop_foreground", "background": 0.0, "margin": 0}`` — ``CropForegroundd``:
                       crop image and mask to the bounding box of the voxels where any channel ≠
                       ``background``, widened by ``margin`` voxels and clipped to the volume (optional)
``pad``                ``{"op": "pad", "min_size": [32, 32, 32], "method": "symmetric", "value": 0.0}`` —
                       ``SpatialPadd``: pad every side shorter than ``min_size`` (the ROI) with ``value``
                       (mask: 0), ``(min_size − n) // 2`` voxels before and the rest after
=====================  ====================================================================================

:func:`build_pipeline` turns the steps into a MONAI ``Compose``; :func:`preprocess` runs it on one case,
through MONAI's ``PersistentDataset`` when a cache folder is given. The cache key of a case is the hash
of its file paths and their size and modification time; the transform hash is :class:`SpecHash` —
the JSON of the spec, the transform classes, MONAI's version and :data:`PIPELINE_VERSION` — so changing
any setting (or editing a file) makes a new cache entry and a stale one is never reused. (MONAI's own
``json_hashing`` of the transform objects cannot serialise them and falls back to hashing their class
names, which ignores every setting.)

:func:`volume_views` makes contrastive views: a random ROI crop, optional flips along non-left-right
axes, random intensity scale and shift, and Gaussian noise, each transform with its own generator.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import MetaKeys, SpaceKeys

from medcl.errors import ConfigError, DataError, InvalidVolumeError
from modalities.volumes.readers import GRID_ATOL, Volume, read_mask, read_volume

__all__ = [
    "CT_WINDOW",
    "PIPELINE_VERSION",
    "FinishVolumed",
    "LoadVolumed",
    "SpecHash",
    "build_pipeline",
    "check_spec",
    "file_stamp",
    "preprocess",
    "preprocessing_spec",
    "spec_hash",
    "volume_views",
]

PIPELINE_VERSION = 1
"""Bumped whenever the code of a step changes what it computes (part of every cache key)."""

CT_WINDOW: tuple[float, float] = (-175.0, 250.0)
"""Default CT window in HU (soft tissue, as in the BTCV/UNETR/SwinUNETR recipes), mapped to 0…1."""

IMAGE_KEY = "image"
MASK_KEY = "mask"
AFFINE_KEY = "affine"
STAMP_KEY = "stamp"

_INTERP_MODES = ("bilinear", "nearest")
_PADDING_MODES = ("border", "zeros", "reflection")
_ORDER = ("load", "orientation", "spacing", "intensity", "crop_foreground", "pad")
_KIND_NAMES: dict[Any, str] = {
    int: "an integer",
    bool: "true or false",
    str: "a string",
    list: "a list",
    (int, float): "a number",
}
_STEP_KEYS: dict[str, dict[str, Any]] = {
    "load": {"channels": int},
    "orientation": {"axcodes": str},
    "spacing": {
        "pixdim": list,
        "image_mode": str,
        "mask_mode": str,
        "padding_mode": str,
        "align_corners": bool,
    },
    "window": {
        "a_min": (int, float),
        "a_max": (int, float),
        "b_min": (int, float),
        "b_max": (int, float),
        "clip": bool,
    },
    "zscore": {"nonzero": bool, "channel_wise": bool},
    "crop_foreground": {"background": (int, float), "margin": int},
    "pad": {"min_size": list, "method": str, "value": (int, float)},
}


# --------------------------------------------------------------------------------------------------
# the spec
# --------------------------------------------------------------------------------------------------


def preprocessing_spec(
    image_modality: str = "MR",
    channels: int = 1,
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    roi: Sequence[int] = (32, 32, 32),
    intensity: str = "auto",
    window: Sequence[float] = CT_WINDOW,
    crop_foreground: bool = False,
    foreground_margin: int = 0,
    image_interp: str = "bilinear",
) -> list[dict[str, Any]]:
    """The steps for one setting (see the module docstring), checked by :func:`check_spec`.

    Args:
        image_modality: ``"CT"`` or ``"MR"``; picks the intensity step when ``intensity="auto"``.
        channels: image channels (MSD BrainTumour: 4).
        spacing: target voxel size in mm, or None to keep the file's spacing (no resampling).
        roi: the smallest spatial size (the training crop); smaller volumes are padded.
        intensity: ``"auto"`` (CT: ``window``, MR: ``zscore``), ``"window"``, ``"zscore"`` or ``"none"``.
        window: ``(a_min, a_max)`` in HU, mapped to 0…1 and clipped.
        crop_foreground: crop to the bounding box of the non-background voxels first.
        foreground_margin: voxels kept around the foreground.
        image_interp: ``"bilinear"`` or ``"nearest"`` for the image (masks are always nearest).

    Raises:
        ConfigError: an invalid setting.
    """
    if image_modality not in ("CT", "MR"):
        raise ConfigError(f"image_modality must be 'CT' or 'MR', got {image_modality!r}")
    if intensity == "auto":
        intensity = "window" if image_modality == "CT" else "zscore"
    if intensity not in ("window", "zscore", "none"):
        raise ConfigError(f"intensity must be 'auto', 'window', 'zscore' or 'none', got {intensity!r}")
    steps: list[dict[str, Any]] = [
        {"op": "load", "channels": int(channels)},
        {"op": "orientation", "axcodes": "RAS"},
    ]
    if spacing is not None:
        steps.append(
            {
                "op": "spacing",
                "pixdim": [float(s) for s in _triple(spacing, "spacing")],
                "image_mode": image_interp,
                "mask_mode": "nearest",
                "padding_mode": "border",
                "align_corners": False,
            }
        )
    background = 0.0
    if intensity == "window":
        if len(window) != 2:
            raise ConfigError(f"window must be (a_min, a_max), got {window!r}")
        steps.append(
            {
                "op": "window",
                "a_min": float(window[0]),
                "a_max": float(window[1]),
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            }
        )
    elif intensity == "zscore":
        steps.append({"op": "zscore", "nonzero": True, "channel_wise": True})
    if crop_foreground:
        steps.append({"op": "crop_foreground", "background": background, "margin": int(foreground_margin)})
    steps.append(
        {
            "op": "pad",
            "min_size": [int(s) for s in _triple(roi, "roi")],
            "method": "symmetric",
            "value": background,
        }
    )
    return check_spec(steps)


def _triple(values: Sequence[Any], name: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or len(values) != 3:
        raise ConfigError(f"{name} must have three values (one per spatial axis), got {values!r}")
    return list(values)


def check_spec(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate a preprocessing spec and return a plain copy of it.

    Rules: every step is a dict with a known ``"op"`` and exactly its keys (types checked); ``load``
    comes first; at most one of each step; at most one intensity step (``window``/``zscore``); the
    order is load → orientation → spacing → intensity → crop_foreground → pad; ``pad`` is required
    (it fixes the smallest size); values are finite and in range.

    Raises:
        ConfigError: naming the step and what is wrong.
    """
    if isinstance(steps, Mapping) or not isinstance(steps, Sequence):
        raise ConfigError(f"a preprocessing spec is a list of steps, got {type(steps).__name__}")
    plain = json.loads(json.dumps(list(steps)))
    seen: list[str] = []
    for position, step in enumerate(plain):
        if not isinstance(step, dict) or "op" not in step:
            raise ConfigError(f"preprocessing step {position} must be a dict with an 'op', got {step!r}")
        op = step["op"]
        if op not in _STEP_KEYS:
            raise ConfigError(f"unknown preprocessing op {op!r}; known: {', '.join(_STEP_KEYS)}")
        expected = _STEP_KEYS[op]
        keys = set(step) - {"op"}
        if keys != set(expected):
            missing, extra = sorted(set(expected) - keys), sorted(keys - set(expected))
            raise ConfigError(
                f"preprocessing step {op!r}: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(extra)}" if extra else "",
                    )
                    if part
                )
            )
        for key, kind in expected.items():
            value = step[key]
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind in (int, (int, float)):
                ok = isinstance(value, kind) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind)
            if not ok:
                raise ConfigError(
                    f"preprocessing step {op!r}: {key} must be {_KIND_NAMES[kind]}, got {value!r}"
                )
            if kind == (int, float):
                if not math.isfinite(value):
                    raise ConfigError(f"preprocessing step {op!r}: {key} must be finite, got {value!r}")
                step[key] = float(value)  # -175 and -175.0 are one setting (and one cache key)
        _check_step_values(step)
        stage = "intensity" if op in ("window", "zscore") else op
        if stage in seen:
            raise ConfigError(f"preprocessing has two {stage} steps")
        if seen and _ORDER.index(stage) < _ORDER.index(seen[-1]):
            raise ConfigError(
                f"preprocessing step {op!r} comes after {seen[-1]!r}; the order is {' → '.join(_ORDER)}"
            )
        seen.append(stage)
    if not seen or seen[0] != "load":
        raise ConfigError("a preprocessing spec starts with a 'load' step")
    if "pad" not in seen:
        raise ConfigError("a preprocessing spec ends with a 'pad' step (the smallest size, the ROI)")
    return plain


def _check_step_values(step: dict[str, Any]) -> None:
    op = step["op"]
    if op == "load" and step["channels"] < 1:
        raise ConfigError(f"load: channels must be >= 1, got {step['channels']}")
    if op == "orientation" and step["axcodes"] != "RAS":
        raise ConfigError(f"orientation: medcl orients volumes to 'RAS', got {step['axcodes']!r}")
    if op == "spacing":
        pixdim = step["pixdim"]
        if len(pixdim) != 3 or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) for p in pixdim
        ):
            raise ConfigError(f"spacing: pixdim must be three numbers, got {pixdim!r}")
        if not all(math.isfinite(p) and p > 0 for p in pixdim):
            raise ConfigError(f"spacing: pixdim must be finite and > 0, got {pixdim!r}")
        step["pixdim"] = [float(p) for p in pixdim]
        if step["image_mode"] not in _INTERP_MODES:
            raise ConfigError(
                f"spacing: image_mode must be one of {_INTERP_MODES}, got {step['image_mode']!r}"
            )
        if step["mask_mode"] != "nearest":
            raise ConfigError(f"spacing: mask_mode must be 'nearest' (labels), got {step['mask_mode']!r}")
        if step["padding_mode"] not in _PADDING_MODES:
            raise ConfigError(
                f"spacing: padding_mode must be one of {_PADDING_MODES}, got {step['padding_mode']!r}"
            )
    if op == "window" and not step["a_max"] > step["a_min"]:
        raise ConfigError(f"window: a_max must exceed a_min, got {step['a_min']}…{step['a_max']}")
    if op == "window" and not step["b_max"] > step["b_min"]:
        raise ConfigError(f"window: b_max must exceed b_min, got {step['b_min']}…{step['b_max']}")
    if op == "crop_foreground" and step["margin"] < 0:
        raise ConfigError(f"crop_foreground: margin must be >= 0, got {step['margin']}")
    if op == "pad":
        size = step["min_size"]
        if len(size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ConfigError(f"pad: min_size must be three positive integers, got {size!r}")
        if step["method"] != "symmetric":
            raise ConfigError(f"pad: method must be 'symmetric', got {step['method']!r}")


def spec_hash(steps: Sequence[Mapping[str, Any]]) -> str:
    """A short stable hash of a (checked) spec: the first 16 hex digits of its JSON's SHA-256."""
    return json_hashing(check_spec(steps)).decode()[:16]


# --------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------


def _metatensor(volume: Volume, dtype: torch.dtype = torch.float32) -> MetaTensor:
    affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    meta = {
        MetaKeys.ORIGINAL_AFFINE: volume.affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
        "filename_or_obj": volume.path,
    }
    return MetaTensor(torch.as_tensor(volume.array, dtype=dtype), affine=affine, meta=meta)


class LoadVolumed(MapTransform):
    """Read the image (and mask) paths of a case into channel-first MetaTensors with their RAS affine.

    ``data[image_key]`` is the image path; ``data[mask_key]``, when present and not empty/None, the mask
    path (a missing or empty mask is dropped from the output). The image must have ``channels``
    channels; the mask must be on the image's grid (within ``grid_atol`` mm). Both become float32
    MetaTensors ``(C, H, W, D)`` / ``(1, H, W, D)`` (the mask holds whole numbers), with ``space`` RAS.

    Raises:
        DataError: from the readers, naming the file (truncated, wrong format, bad geometry, NaN, a mask
            off the grid or with fractional labels), or an image with the wrong number of channels.
    """

    def __init__(
        self,
        image_key: str = IMAGE_KEY,
        mask_key: str = MASK_KEY,
        channels: int = 1,
        grid_atol: float = GRID_ATOL,
    ) -> None:
        super().__init__([image_key, mask_key], allow_missing_keys=True)
        self.image_key = image_key
        self.mask_key = mask_key
        self.channels = int(channels)
        self.grid_atol = float(grid_atol)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = read_volume(d[self.image_key])
        if image.channels != self.channels:
            raise InvalidVolumeError(
                image.path,
                f"the image has {image.channels} channel(s), the preprocessing expects {self.channels}",
                f"set channels: {image.channels} (or give images with {self.channels})",
            )
        d[self.image_key] = _metatensor(image)
        mask_path = d.get(self.mask_key)
        if mask_path is None or (isinstance(mask_path, str) and not mask_path):
            d.pop(self.mask_key, None)
        else:
            mask = read_mask(mask_path, image=image, atol=self.grid_atol)
            d[self.mask_key] = _metatensor(mask)
        return d


class FinishVolumed(MapTransform):
    """Last step: plain numpy arrays — image float32 ``(C, H, W, D)``, mask int64 ``(1, H, W, D)`` — and the
    image's final voxel-to-RAS affine ``(4, 4)`` float64 under ``affine_key``."""

    def __init__(
        self, image_key: str = IMAGE_KEY, mask_key: str = MASK_KEY, affine_key: str = AFFINE_KEY
    ) -> None:
        super().__init__([image_key, mask_key], allow_missing_keys=True)
        self.image_key = image_key
        self.mask_key = mask_key
        self.affine_key = affine_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        affine = image.affine if isinstance(image, MetaTensor) else torch.eye(4)
        d[self.affine_key] = np.asarray(affine, dtype=np.float64)
        d[self.image_key] = np.ascontiguousarray(_numpy(image), dtype=np.float32)
        if self.mask_key in d:
            d[self.mask_key] = np.ascontiguousarray(np.rint(_numpy(d[self.mask_key])), dtype=np.int64)
        return d


#: the most voxels (all channels) a resampling may produce: 2**28 float32 voxels = 1 GiB
MAX_RESAMPLED_VOXELS = 2**28


class CheckResampledSized(MapTransform):
    """Refuse, naming the file, a volume whose resampling to ``pixdim`` would exceed
    :data:`MAX_RESAMPLED_VOXELS` voxels (a corrupted voxel size in a header must be a :class:`DataError`
    an ``on_error="skip"`` run can report, not a tens-of-gigabytes allocation inside MONAI)."""

    def __init__(
        self, pixdim: Sequence[float], image_key: str = IMAGE_KEY, max_voxels: int = MAX_RESAMPLED_VOXELS
    ) -> None:
        super().__init__([image_key])
        self.pixdim = np.asarray([float(p) for p in pixdim], dtype=np.float64)
        self.image_key = image_key
        self.max_voxels = int(max_voxels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        affine = np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        shape = np.asarray(image.shape[1:], dtype=np.float64)
        target = np.ceil(shape * spacing / self.pixdim)
        voxels = float(np.prod(target)) * int(image.shape[0])
        if not np.isfinite(voxels) or voxels > self.max_voxels:
            meta = image.meta if isinstance(image, MetaTensor) else {}
            path = meta.get("filename_or_obj", "the volume")
            raise InvalidVolumeError(
                path,
                f"resampling its {'x'.join(str(int(n)) for n in shape)} voxels of "
                f"{'x'.join(f'{v:.3g}' for v in spacing)} mm to {'x'.join(f'{v:g}' for v in self.pixdim)} mm "
                f"would make {voxels:.3g} voxels (limit {self.max_voxels:.3g})",
                "check the voxel size in the header (a corrupted pixdim?) or choose a coarser spacing",
            )
        return d


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy() if not isinstance(x, MetaTensor) else x.as_tensor().cpu().numpy()
    return np.asarray(x)


class _Differs:
    """``select_fn`` of the foreground crop: voxels that differ from the background value (picklable)."""

    def __init__(self, background: float) -> None:
        self.background = float(background)

    def __call__(self, x: Any) -> Any:
        return x != self.background


def build_pipeline(
    steps: Sequence[Mapping[str, Any]],
    image_key: str = IMAGE_KEY,
    mask_key: str = MASK_KEY,
    grid_atol: float = GRID_ATOL,
) -> Compose:
    """The MONAI ``Compose`` that runs a preprocessing spec on ``{image_key: path, mask_key: path}`` dicts
    and returns :class:`FinishVolumed`'s numpy arrays and ``affine``. Deterministic (no random step)."""
    keys = [image_key, mask_key]
    transforms: list[Any] = []
    for step in check_spec(steps):
        op = step["op"]
        if op == "load":
            transforms.append(LoadVolumed(image_key, mask_key, step["channels"], grid_atol))
        elif op == "orientation":
            transforms.append(
                Orientationd(keys, axcodes=step["axcodes"], labels=None, allow_missing_keys=True)
            )
        elif op == "spacing":
            transforms.append(CheckResampledSized(step["pixdim"], image_key))
            transforms.append(
                Spacingd(
                    keys,
                    pixdim=tuple(step["pixdim"]),
                    mode=(step["image_mode"], step["mask_mode"]),
                    padding_mode=step["padding_mode"],
                    align_corners=step["align_corners"],
                    dtype=np.float32,
                    allow_missing_keys=True,
                )
            )
        elif op == "window":
            transforms.append(
                ScaleIntensityRanged(
                    image_key,
                    a_min=step["a_min"],
                    a_max=step["a_max"],
                    b_min=step["b_min"],
                    b_max=step["b_max"],
                    clip=step["clip"],
                    dtype=np.float32,
                )
            )
        elif op == "zscore":
            transforms.append(
                NormalizeIntensityd(image_key, nonzero=step["nonzero"], channel_wise=step["channel_wise"])
            )
        elif op == "crop_foreground":
            transforms.append(
                CropForegroundd(
                    keys,
                    source_key=image_key,
                    select_fn=_Differs(step["background"]),
                    margin=step["margin"],
                    allow_smaller=True,
                    start_coord_key=None,
                    end_coord_key=None,
                    allow_missing_keys=True,
                )
            )
        elif op == "pad":
            size = tuple(step["min_size"])
            transforms.append(
                SpatialPadd(image_key, spatial_size=size, method="symmetric", value=step["value"])
            )
            transforms.append(
                SpatialPadd(mask_key, spatial_size=size, method="symmetric", value=0, allow_missing_keys=True)
            )
    transforms.append(FinishVolumed(image_key, mask_key))
    return Compose(transforms)


class SpecHash:
    """``hash_transform`` for MONAI's ``PersistentDataset``: hashes the spec's JSON, the classes of the
    cached transforms, MONAI's version and :data:`PIPELINE_VERSION` (``json_hashing``'s SHA-256)."""

    def __init__(self, steps: Sequence[Mapping[str, Any]]) -> None:
        self.steps = check_spec(steps)

    def __call__(self, transforms: Sequence[Any]) -> bytes:
        import monai

        return json_hashing(
            {
                "spec": self.steps,
                "transforms": [type(t).__qualname__ for t in transforms],
                "monai": monai.__version__,
                "pipeline_version": PIPELINE_VERSION,
            }
        )


def file_stamp(path: str | Path) -> str:
    """``"<bytes>:<mtime ns>"`` of a file, or of all files of a (DICOM) folder together: part of the cache
    key, so an edited or replaced file is preprocessed again."""
    path = Path(path)
    try:
        if path.is_dir():
            stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
            newest = max((s.st_mtime_ns for s in stats), default=0)
            return f"{len(stats)}:{sum(s.st_size for s in stats)}:{newest}"
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _data_error_in(error: BaseException) -> DataError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DataError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def preprocess(
    steps: Sequence[Mapping[str, Any]],
    image: str | Path,
    mask: str | Path | None = None,
    cache_dir: str | Path | None = None,
    grid_atol: float = GRID_ATOL,
) -> dict[str, Any]:
    """Run the preprocessing spec on one case.

    Args:
        steps: the spec (:func:`preprocessing_spec`).
        image: the image file or DICOM folder.
        mask: its mask, or None.
        cache_dir: a folder for MONAI ``PersistentDataset`` files (one ``.pt`` per case and setting), or
            None to compute every time.
        grid_atol: tolerance of the mask/image grid check in mm.

    Returns:
        ``{"image": float32 (C, H, W, D), "mask": int64 (1, H, W, D) (only with a mask), "affine": float64
        (4, 4)}`` in RAS orientation, after every step.

    Raises:
        DataError: the file (or its mask) cannot be used — raised as such, not wrapped by MONAI.
    """
    item: dict[str, Any] = {IMAGE_KEY: os.fspath(image), STAMP_KEY: file_stamp(image)}
    if mask is not None and str(mask):
        item[MASK_KEY] = os.fspath(mask)
        item[STAMP_KEY] += "|" + file_stamp(mask)
    pipeline = build_pipeline(steps, grid_atol=grid_atol)
    try:
        if cache_dir is None:
            out = pipeline(item)
        else:
            dataset = PersistentDataset(
                [item], pipeline, cache_dir=cache_dir, hash_func=json_hashing, hash_transform=SpecHash(steps)
            )
            out = dataset[0]
    except (RuntimeError, DataError) as raised:
        error = _data_error_in(raised)
        if error is None:
            raise
        raise error from None
    result: dict[str, Any] = {
        IMAGE_KEY: np.ascontiguousarray(_numpy(out[IMAGE_KEY]), dtype=np.float32),
        AFFINE_KEY: np.asarray(_numpy(out[AFFINE_KEY]), dtype=np.float64),
    }
    if MASK_KEY in out:
        result[MASK_KEY] = np.ascontiguousarray(_numpy(out[MASK_KEY]), dtype=np.int64)
    return result


# --------------------------------------------------------------------------------------------------
# contrastive views
# --------------------------------------------------------------------------------------------------


def volume_views(
    roi: Sequence[int],
    image_key: str = IMAGE_KEY,
    mask_key: str = MASK_KEY,
    flip_axes: Sequence[int] = (),
    flip_prob: float = 0.5,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    intensity_prob: float = 0.5,
    noise_std: float = 0.05,
    noise_prob: float = 0.5,
    seed: int = 0,
) -> Compose:
    """A random view of a preprocessed sample (image ``(C, H, W, D)``, every side ≥ ``roi``).

    Steps (each a MONAI random dictionary transform with its own generator, seeded from ``seed`` by
    ``Compose.set_random_state``; nothing draws from the global generator):

    1. ``RandSpatialCropd`` (image and mask alike) to ``roi`` at a uniformly random position;
    2. ``RandFlipd`` along each of ``flip_axes`` (spatial axes 1 = posterior→anterior, 2 =
       inferior→superior; axis 0, left-right, is refused: asymmetry objectives rely on it), each with
       probability ``flip_prob``, image and mask alike;
    3. ``RandScaleIntensityd``: ``x · (1 + f)``, ``f ~ U(−intensity_scale, intensity_scale)``, with
       probability ``intensity_prob`` (image only);
    4. ``RandShiftIntensityd``: ``x + o``, ``o ~ U(−intensity_shift, intensity_shift)``, with probability
       ``intensity_prob`` (image only);
    5. ``RandGaussianNoised``: ``x + N(0, σ²)`` with ``σ ~ U(0, noise_std)``, probability ``noise_prob``
       (image only);

    then numpy arrays out (``EnsureTyped``). Zero strengths or probabilities switch a step off.

    Raises:
        ConfigError: an invalid setting (a flip of axis 0, probabilities outside [0, 1], ...).
    """
    roi = [int(s) for s in _triple(roi, "roi")]
    if min(roi) < 1:
        raise ConfigError(f"roi sides must be >= 1, got {roi}")
    axes = [int(a) for a in flip_axes]
    if any(a not in (1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ConfigError(
            f"flip_axes must be distinct spatial axes among 1 (posterior-anterior) and 2 "
            f"(inferior-superior), got {list(flip_axes)}; axis 0 is left-right, which asymmetry "
            "objectives rely on"
        )
    for name, value in (
        ("flip_prob", flip_prob),
        ("intensity_prob", intensity_prob),
        ("noise_prob", noise_prob),
    ):
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value}")
    for name, value in (
        ("intensity_scale", intensity_scale),
        ("intensity_shift", intensity_shift),
        ("noise_std", noise_std),
    ):
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ConfigError(f"{name} must be finite and >= 0, got {value}")
    keys = [image_key, mask_key]
    transforms: list[Any] = [
        RandSpatialCropd(keys, roi_size=roi, random_center=True, random_size=False, allow_missing_keys=True)
    ]
    for axis in axes:
        transforms.append(RandFlipd(keys, prob=float(flip_prob), spatial_axis=axis, allow_missing_keys=True))
    if intensity_scale > 0 and intensity_prob > 0:
        transforms.append(
            RandScaleIntensityd(image_key, factors=float(intensity_scale), prob=float(intensity_prob))
        )
    if intensity_shift > 0 and intensity_prob > 0:
        transforms.append(
            RandShiftIntensityd(image_key, offsets=float(intensity_shift), prob=float(intensity_prob))
        )
    if noise_std > 0 and noise_prob > 0:
        transforms.append(
            RandGaussianNoised(image_key, prob=float(noise_prob), mean=0.0, std=float(noise_std))
        )
    transforms.append(EnsureTyped(keys, data_type="numpy", track_meta=False, allow_missing_keys=True))
    compose = Compose(transforms)
    compose.set_random_state(seed=int(seed))
    return compose
