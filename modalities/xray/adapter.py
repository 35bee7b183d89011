"""The chest X-ray adapter: real files → validated manifest → letterboxed images (+ report, gaze) → views.

:class:`XrayAdapter` implements :class:`medcl.data.Adapter` for radiographs (PNG, JPEG, DICOM). It

1. indexes a dataset (covid_cxr, MIMIC-CXR-JPG, CheXpert, NIH ChestX-ray14; every image decoded and
   checked, bad ones quarantined: :func:`~modalities.xray.indexing.index_xrays`) or reads a saved
   ``medcl index --modality xray`` output, keeping the views asked for (frontal PA/AP by default);
2. preprocesses each image by running its preprocessing spec (:meth:`XrayAdapter.input_spec`, numpy code
   in :mod:`modalities.xray.transforms` that the torch-free predictor runs too): read → grey ``[0, 1]``
   (bright = dense) → letterbox to ``image_size`` → optional standardisation;
3. makes one sample per image (DESIGN.md §1.1, see :meth:`XrayAdapter.load_sample`): ``image`` float32
   ``(1, H, W)``, ids (patient, study, image within the study), the multi-hot ``label`` of the findings,
   the ``report`` text and a ``gaze`` heatmap on the image's grid when a provider gives one;
4. makes contrastive views (:class:`XrayViewd`: small rotation, scaling, translation, contrast,
   brightness, gamma and noise, each drawn from the view's own seeded generator; no left-right flip by
   default: the heart's side and the sides named in reports matter);
5. provides a default encoder (:class:`~modalities.xray.encoders.XrayResNet`, or
   :class:`~modalities.xray.encoders.XrayViT` with ``encoder="vit"``).

Plug-ins (not implemented here): ``report_cleaner`` (a callable ``str → str``, e.g. the text module's
cleaning) and ``gaze`` (an object with ``heatmap(row, image_shape) → (H0, W0) array | None`` on the
*original* image's pixels, or ``(array, source)``; its ``source`` attribute names the kind,
``"reflacx"``, ``"egd-cxr"``, ``"annotation:lung_mask"``, ...). Either may be given as an object or as a
``{"class_path", "init_args"}`` spec of a medcl class (then the adapter stays rebuildable from
checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from monai.transforms import MapTransform, Randomizable
from monai.utils import MAX_SEED
from torch import nn

from medcl.configurable import Configurable, instantiate_spec
from medcl.data.adapter import IndexedData
from medcl.errors import ConfigError
from modalities.bundled import resolve_root
from modalities.xray.encoders import ENCODERS, build_encoder
from modalities.xray.indexing import MIN_SIZE, index_xrays, load_index
from modalities.xray.manifests import BUILDERS, build_manifest, filter_views, read_report, view_set
from modalities.xray.transforms import (
    Geometry,
    adjust_intensity,
    image_size_of,
    normalization_of,
    preprocess_file,
    preprocessing_spec,
    warp_affine,
)

__all__ = ["XrayAdapter", "XrayViewd"]


class XrayViewd(Randomizable, MapTransform):
    """A random, anatomy-preserving view of a preprocessed X-ray sample.

    One draw per call, from this transform's own generator (``set_random_state``; nothing touches the
    global ones), applied to ``image_key`` ``(C, H, W)`` and, geometry only, to each of
    ``heatmap_keys`` ``(H, W)`` present (renormalised to sum 1; all zeros when the warp moved all its mass
    off the image):

    1. with probability ``affine_prob``: rotation by ``U(−max_rotation, max_rotation)`` degrees, scaling
       by ``U(*scale_range)`` about the centre and translation by ``U(−max_translation,
       max_translation)`` of the height/width (:func:`~modalities.xray.transforms.warp_affine`, bilinear,
       the uncovered border filled with ``pad_value``);
    2. with probability ``flip_prob`` (default 0): a left-right flip — off by default, because it turns a
       normal chest into a dextrocardic one and swaps the sides that reports name;
    3. with probability ``intensity_prob``: contrast ``U(1 − contrast, 1 + contrast)`` about the image
       mean, brightness ``U(−brightness, brightness)``, clipping to ``[0, 1]``, gamma
       ``exp(U(log gamma_range[0], log gamma_range[1]))``;
    4. with probability ``noise_prob``: Gaussian noise of std ``U(0, noise_std)``, then clipping to
       ``[0, 1]``.

    The steps run on ``[0, 1]`` intensities: an image standardised by the preprocessing (``(x − mean) /
    std``) is mapped back first and standardised again after. Output float32 arrays of the input shapes.
    """

    def __init__(
        self,
        image_key: str = "image",
        heatmap_keys: Sequence[str] = ("gaze",),
        max_rotation: float = 10.0,
        scale_range: Sequence[float] = (0.9, 1.1),
        max_translation: float = 0.05,
        affine_prob: float = 0.8,
        flip_prob: float = 0.0,
        contrast: float = 0.1,
        brightness: float = 0.1,
        gamma_range: Sequence[float] = (0.8, 1.25),
        intensity_prob: float = 0.8,
        noise_std: float = 0.02,
        noise_prob: float = 0.5,
        pad_value: float = 0.0,
        normalization: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        MapTransform.__init__(self, [image_key, *heatmap_keys], allow_missing_keys=True)
        for name, value in (
            ("affine_prob", affine_prob),
            ("flip_prob", flip_prob),
            ("intensity_prob", intensity_prob),
            ("noise_prob", noise_prob),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        lo, hi = (float(v) for v in scale_range)
        g_lo, g_hi = (float(v) for v in gamma_range)
        checks = (
            (
                0.0 <= float(max_rotation) <= 45.0,
                f"max_rotation must be in [0, 45] degrees, got {max_rotation}",
            ),
            (0.0 < lo <= hi, f"scale_range must be 0 < low <= high, got {list(scale_range)}"),
            (
                0.0 <= float(max_translation) < 0.5,
                f"max_translation must be in [0, 0.5), got {max_translation}",
            ),
            (0.0 <= float(contrast) < 1.0, f"contrast must be in [0, 1), got {contrast}"),
            (0.0 <= float(brightness) <= 1.0, f"brightness must be in [0, 1], got {brightness}"),
            (0.0 < g_lo <= g_hi, f"gamma_range must be 0 < low <= high, got {list(gamma_range)}"),
            (0.0 <= float(noise_std) <= 1.0, f"noise_std must be in [0, 1], got {noise_std}"),
            (float(normalization[1]) > 0, f"normalization std must be > 0, got {normalization[1]}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.image_key = image_key
        self.heatmap_keys = tuple(heatmap_keys)
        self.max_rotation = float(max_rotation)
        self.scale_range = (lo, hi)
        self.max_translation = float(max_translation)
        self.affine_prob = float(affine_prob)
        self.flip_prob = float(flip_prob)
        self.contrast = float(contrast)
        self.brightness = float(brightness)
        self.gamma_range = (g_lo, g_hi)
        self.intensity_prob = float(intensity_prob)
        self.noise_std = float(noise_std)
        self.noise_prob = float(noise_prob)
        self.pad_value = float(pad_value)
        self.normalization = (float(normalization[0]), float(normalization[1]))
        self.params: dict[str, Any] = {}
        self.set_random_state(seed=int(seed))

    def randomize(self, data: Any = None) -> None:
        """Draw every parameter of one view (always the same number of draws)."""
        r = self.R
        self.params = {
            "affine": bool(r.rand() < self.affine_prob),
            "angle": float(r.uniform(-self.max_rotation, self.max_rotation)),
            "scale": float(r.uniform(*self.scale_range)),
            "shift_fraction": (float(r.uniform(-1, 1)), float(r.uniform(-1, 1))),
            "flip": bool(r.rand() < self.flip_prob),
            "intensity": bool(r.rand() < self.intensity_prob),
            "contrast": float(r.uniform(1 - self.contrast, 1 + self.contrast)),
            "brightness": float(r.uniform(-self.brightness, self.brightness)),
            "gamma": float(math.exp(r.uniform(math.log(self.gamma_range[0]), math.log(self.gamma_range[1])))),
            "noise": bool(r.rand() < self.noise_prob),
            "noise_std": float(r.uniform(0.0, self.noise_std)),
            "noise_seed": int(r.randint(MAX_SEED, dtype="uint32")),
        }

    def _geometry(self, x: np.ndarray, cval: float) -> np.ndarray:
        p = self.params
        if p["affine"]:
            h, w = x.shape
            shift = (
                p["shift_fraction"][0] * self.max_translation * h,
                p["shift_fraction"][1] * self.max_translation * w,
            )
            x = warp_affine(x, p["angle"], p["scale"], shift, cval=cval)
        if p["flip"]:
            x = x[:, ::-1]
        return np.asarray(x, dtype=np.float32)

    def _image(self, image: np.ndarray) -> np.ndarray:
        p = self.params
        mean, std = self.normalization
        x = np.asarray(image, dtype=np.float32) * std + mean
        channels = []
        for c, plane in enumerate(x):
            plane = self._geometry(plane, self.pad_value)
            if p["intensity"]:
                plane = adjust_intensity(plane, p["contrast"], p["brightness"], p["gamma"])
            if p["noise"] and p["noise_std"] > 0:
                noise = np.random.default_rng([p["noise_seed"], c]).standard_normal(plane.shape)
                plane = np.clip(plane + p["noise_std"] * noise, 0.0, 1.0)
            channels.append(np.asarray(plane, dtype=np.float32))
        return np.ascontiguousarray((np.stack(channels) - mean) / std, dtype=np.float32)

    def _heatmap(self, heatmap: np.ndarray) -> np.ndarray:
        warped = np.maximum(self._geometry(np.asarray(heatmap, dtype=np.float32), 0.0), 0.0)
        total = float(warped.sum(dtype=np.float64))
        out = warped / total if total > 0 else np.zeros_like(warped)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if self.image_key in d:
            d[self.image_key] = self._image(np.asarray(d[self.image_key]))
        for key in self.heatmap_keys:
            if key in d and d[key] is not None:
                d[key] = self._heatmap(np.asarray(d[key]))
        return d


def _plugin(value: Any, name: str) -> Any:
    """An object, or one built from a ``{"class_path", "init_args"}`` spec (medcl's classes only)."""
    if isinstance(value, Mapping):
        return instantiate_spec(dict(value))
    if value is not None and name == "gaze" and not callable(getattr(value, "heatmap", None)):
        raise ConfigError(f"gaze must have a heatmap(row, image_shape) method, got {type(value).__name__}")
    if value is not None and name == "report_cleaner" and not callable(value):
        raise ConfigError(f"report_cleaner must be callable (str → str), got {type(value).__name__}")
    return value


class XrayAdapter(Configurable):
    """Chest X-ray adapter (see the module docstring).

    Args:
        root: the dataset folder.
        dataset: layout — ``"auto"``, ``"covid_cxr"``, ``"mimic_cxr"``, ``"chexpert"`` or ``"nih"``.
        views: views to keep (``["PA", "AP"]``; ``"FRONTAL"``, ``"LATERAL"``, ``"OTHER"``, ``"UNKNOWN"``
            also; None keeps every image).
        image_size: model input ``H`` (= ``W``) or ``[H, W]``.
        normalize: ``[mean, std]`` standardisation after the letterbox, or None for ``[0, 1]``.
        voi: DICOM VOI handling, ``"auto"`` (the file's VOI LUT/window) or ``"minmax"``.
        pad_value: letterbox padding value in ``[0, 1]``.
        labels: make multi-hot finding labels (False: unlabelled pretraining).
        class_names: the findings to label, in order (default: the layout's); others are dropped from a
            sample's label set.
        uncertain: CheXpert-labeller ``-1`` findings count as ``"negative"`` (U-Zeros) or
            ``"positive"`` (U-Ones).
        labelled_only: keep only images the dataset labels.
        report: put the report text in samples (when the dataset has one).
        report_cleaner: a callable ``str → str`` applied to report text, or its class spec.
        gaze: a heatmap provider (see the module docstring), or its class spec.
        min_size: smallest usable image side in pixels (smaller ones are quarantined).
        index_dir: a folder written by ``medcl index --modality xray``; used instead of indexing.
        max_rotation, scale_range, max_translation, affine_prob, flip_prob, contrast, brightness,
            gamma_range, intensity_prob, noise_std, noise_prob: the views (:class:`XrayViewd`).
        encoder: ``"resnet"`` (MONAI ResNet-18 in 2-D) or ``"vit"`` (MONAI ViT).
        encoder_kwargs: extra arguments of the encoder class (tiny configs for tests, ...).
        dataset_kwargs: extra arguments of the layout's builder (``{"csv": "valid.csv"}``, ...).
    """

    input_key = "image"
    modality = "xray"

    def __init__(
        self,
        root: str,
        dataset: str = "auto",
        views: Sequence[str] | None = ("PA", "AP"),
        image_size: int | Sequence[int] = 224,
        normalize: Sequence[float] | None = None,
        voi: str = "auto",
        pad_value: float = 0.0,
        labels: bool = True,
        class_names: Sequence[str] | None = None,
        uncertain: str = "negative",
        labelled_only: bool = False,
        report: bool = True,
        report_cleaner: Any = None,
        gaze: Any = None,
        min_size: int = MIN_SIZE,
        index_dir: str | None = None,
        max_rotation: float = 10.0,
        scale_range: Sequence[float] = (0.9, 1.1),
        max_translation: float = 0.05,
        affine_prob: float = 0.8,
        flip_prob: float = 0.0,
        contrast: float = 0.1,
        brightness: float = 0.1,
        gamma_range: Sequence[float] = (0.8, 1.25),
        intensity_prob: float = 0.8,
        noise_std: float = 0.02,
        noise_prob: float = 0.5,
        encoder: str = "resnet",
        encoder_kwargs: dict[str, Any] | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if dataset not in ("auto", *BUILDERS):
            raise ConfigError(f"dataset must be auto or one of {', '.join(BUILDERS)}, got {dataset!r}")
        if encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if uncertain not in ("negative", "positive"):
            raise ConfigError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
        self.root = str(root)
        self.dataset = dataset
        self.views = None if views is None else [str(v) for v in views]
        self._view_set = view_set(self.views)
        self.labels = bool(labels)
        self._class_names = None if class_names is None else [str(n) for n in class_names]
        self.uncertain = uncertain
        self.labelled_only = bool(labelled_only)
        self.report = bool(report)
        self.report_cleaner = _plugin(report_cleaner, "report_cleaner")
        self.gaze = _plugin(gaze, "gaze")
        self.min_size = int(min_size)
        self.index_dir = index_dir
        self.encoder_name = encoder
        self.encoder_kwargs = dict(encoder_kwargs or {})
        self.dataset_kwargs = dict(dataset_kwargs or {})
        if "views" in self.dataset_kwargs:
            raise ConfigError("give views as the adapter's views, not in dataset_kwargs")
        # Checks every preprocessing setting (ConfigError) and fixes the spec once.
        self._steps = preprocessing_spec(image_size, voi, normalize, pad_value)
        self.image_size = image_size_of(self._steps)
        self._view_settings = {
            "max_rotation": max_rotation,
            "scale_range": tuple(scale_range),
            "max_translation": max_translation,
            "affine_prob": affine_prob,
            "flip_prob": flip_prob,
            "contrast": contrast,
            "brightness": brightness,
            "gamma_range": tuple(gamma_range),
            "intensity_prob": intensity_prob,
            "noise_std": noise_std,
            "noise_prob": noise_prob,
        }
        self.view_transform()  # validates the view settings now, not in a worker
        self._layout_labels: tuple[str, ...] | None = None
        self._layout_labels_known = False

    # ----------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        """The findings of the multi-hot labels, or None without labels."""
        if not self.labels:
            return None
        if self._class_names is not None:
            return list(self._class_names)
        names = self._labels_from_layout()
        return None if names is None else list(names)

    @property
    def label_mode(self) -> str:
        return "multilabel"

    def _labels_from_layout(self) -> tuple[str, ...] | None:
        """The layout's finding names (from its tables; no image is read), read once."""
        if not self._layout_labels_known:
            if self.index_dir is not None:
                self._layout_labels = load_index(self.index_dir).label_names
            else:
                manifest = build_manifest(self.dataset, resolve_root(self.root), **self.dataset_kwargs)
                self._layout_labels = manifest.label_names
            self._layout_labels_known = True
        return self._layout_labels

    # ----------------------------------------------------------------------------------------------
    def index(self) -> IndexedData:
        """Index and validate the dataset (or read ``index_dir``), keeping :attr:`views`; bad files go to
        the quarantine. ``trials`` has one row per image (``trial_id`` = its study)."""
        if self.index_dir is not None:
            manifest = load_index(self.index_dir)
            trials = filter_views(manifest.trials, self.views)
            return IndexedData(
                trials.reset_index(drop=True), manifest.missing, None, source=str(self.index_dir)
            )
        result = index_xrays(
            self.dataset,
            resolve_root(self.root),
            min_size=self.min_size,
            voi=self._steps[0]["voi"],
            views=self.views,
            **self.dataset_kwargs,
        )
        self._layout_labels = result.manifest.label_names
        self._layout_labels_known = True
        return IndexedData(
            result.manifest.trials, result.quarantine, None, source=f"{result.dataset} at {self.root}"
        )

    def _sample_labels(self, trials: pd.DataFrame) -> list[str | None]:
        """``|``-joined findings per image among :attr:`class_names` (uncertain ones per
        :attr:`uncertain`); None for images the dataset does not label."""
        names = self.class_names
        if names is None:
            return [None] * len(trials)
        order = {n: k for k, n in enumerate(names)}
        known = trials.get("labels_known", pd.Series("1", index=trials.index)).astype(str)
        positives = trials.get("labels", pd.Series("", index=trials.index)).fillna("").astype(str)
        uncertain = trials.get("uncertain", pd.Series("", index=trials.index)).fillna("").astype(str)
        out: list[str | None] = []
        for is_known, pos, unc in zip(known, positives, uncertain, strict=True):
            if is_known != "1":
                out.append(None)
                continue
            found = [n for n in pos.split("|") if n]
            if self.uncertain == "positive":
                found += [n for n in unc.split("|") if n]
            out.append("|".join(sorted({n for n in found if n in order}, key=order.__getitem__)))
        return out

    def make_samples(self, trials: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
        """One sample per image: ``patient_id``, ``trial_id``, ``sample_index``, ``path``, ``image_id``,
        ``view``, ``labels`` (``|``-joined findings; None when the image is unlabelled), ``report`` and
        ``report_path``, plus the layout's columns (``offset``, ``license``, ``orig_width``, ...).

        Raises:
            ConfigError: no image left (views, ``labelled_only``).
        """
        trials = filter_views(trials.reset_index(drop=True), self.views).reset_index(drop=True)
        samples = trials.copy()
        for column in ("patient_id", "trial_id", "path"):
            samples[column] = samples[column].astype(str)
        samples["sample_index"] = pd.to_numeric(samples["sample_index"]).astype(np.int64)
        for column in ("image_id", "view", "report", "report_path"):
            if column not in samples.columns:
                samples[column] = ""
        samples["labels"] = pd.Series(self._sample_labels(samples), index=samples.index, dtype=object)
        if self.labelled_only:
            samples = samples[samples["labels"].notna()].reset_index(drop=True)
        if not len(samples):
            raise ConfigError(
                f"no image to make samples from (views {self.views}"
                + (", labelled_only" if self.labelled_only else "")
                + f"; {len(trials)} image(s) given)"
            )
        first = ["patient_id", "trial_id", "sample_index", "path", "image_id", "view", "labels"]
        return samples[[*first, *[c for c in samples.columns if c not in first]]]

    def _label_vector(self, text: Any) -> np.ndarray | None:
        names = self.class_names
        if names is None or not isinstance(text, str):
            return None
        vector = np.zeros(len(names), dtype=np.float32)
        position = {n: k for k, n in enumerate(names)}
        for name in text.split("|"):
            if name in position:
                vector[position[name]] = 1.0
        return vector

    def load_sample(self, row: pd.Series) -> dict[str, Any]:
        """The preprocessed image and what goes with it (DESIGN.md §1.1):

        - ``image`` float32 ``(1, H, W)`` (``[0, 1]`` or standardised; bright = dense; rows head→feet,
          the patient's right on the image's left);
        - ``patient_id``, ``trial_id`` (study), ``sample_index`` (image within the study);
        - ``label`` float32 ``(K,)`` multi-hot over :attr:`class_names`, when the image is labelled;
        - ``report`` (str, cleaned by ``report_cleaner`` when given), when there is one;
        - ``gaze`` float32 ``(H, W)`` summing to 1 on the image's grid and ``gaze_source``, when the
          provider gives a heatmap;
        - ``meta``: ``path``, ``image_id``, ``view``, ``original_size`` ``[H0, W0]``, ``geometry``
          (:meth:`~modalities.xray.transforms.Geometry.to_dict`), ``pixel_spacing`` (mm, original grid,
          or None), ``source_format``, ``photometric``, ``voi``.

        Raises:
            DataError: the image cannot be used (names the file; the dataset's skip policy relies on it).
        """
        path = str(row["path"])
        image, geometry, raw = preprocess_file(path, self._steps)
        sample: dict[str, Any] = {
            self.input_key: image,
            "patient_id": str(row["patient_id"]),
            "trial_id": str(row["trial_id"]),
            "sample_index": int(row.get("sample_index", 0)),
            "meta": {
                "path": path,
                "image_id": str(row.get("image_id", "") or ""),
                "view": str(row.get("view", "") or ""),
                "original_size": list(raw.shape),
                "geometry": geometry.to_dict(),
                "pixel_spacing": None if raw.pixel_spacing is None else list(raw.pixel_spacing),
                "source_format": raw.source_format,
                "photometric": raw.photometric,
                "voi": raw.extra.get("voi", ""),
            },
        }
        label = self._label_vector(row.get("labels"))
        if label is not None:
            sample["label"] = label
        if self.report:
            text = read_report(row)
            if text and self.report_cleaner is not None:
                text = str(self.report_cleaner(text))
            if text.strip():
                sample["report"] = text
        if self.gaze is not None:
            self._add_gaze(sample, row, geometry)
        return sample

    def _add_gaze(self, sample: dict[str, Any], row: pd.Series, geometry: Geometry) -> None:
        made = self.gaze.heatmap(row, geometry.original)
        source = getattr(self.gaze, "source", None)
        if isinstance(made, tuple):
            made, source = made
        if made is None:
            return
        heatmap = np.asarray(made, dtype=np.float64)
        if heatmap.shape != geometry.original:
            raise ConfigError(
                f"{type(self.gaze).__name__}.heatmap gave shape {heatmap.shape} for an image of "
                f"{geometry.original} ({row['path']}): heatmaps are on the original image's pixels"
            )
        on_grid = geometry.apply_heatmap(heatmap)
        if on_grid is not None:
            sample["gaze"] = on_grid
            sample["gaze_source"] = str(source or type(self.gaze).__name__)

    # ----------------------------------------------------------------------------------------------
    def view_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A fresh random view (:class:`XrayViewd`; the dataset seeds it per sample and view)."""
        return XrayViewd(
            image_key=self.input_key,
            heatmap_keys=("gaze",),
            pad_value=self._steps[1]["pad_value"],
            normalization=normalization_of(self._steps),
            seed=0,
            **self._view_settings,
        )

    def default_encoder(self) -> nn.Module:
        """``XrayResNet(in_channels=1, **encoder_kwargs)`` or ``XrayViT(1, image_size, **encoder_kwargs)``."""
        return build_encoder(self.encoder_name, 1, self.image_size, **self.encoder_kwargs)

    def example_windows(self, n: int = 16) -> np.ndarray:
        """Up to ``n`` preprocessed images ``(N, 1, H, W)`` from the first images the dataset lists (for
        export parity checks on real data).

        Raises:
            ConfigError: no image could be read.
        """
        if self.index_dir is not None:
            trials = load_index(self.index_dir).trials
        else:
            trials = build_manifest(
                self.dataset, resolve_root(self.root), views=self.views, **self.dataset_kwargs
            ).trials
        images: list[np.ndarray] = []
        for path in trials["path"]:
            try:
                images.append(preprocess_file(str(path), self._steps)[0])
            except Exception:  # a bad file is skipped here; indexing reports it
                continue
            if len(images) >= n:
                break
        if not images:
            raise ConfigError(f"no image could be read from {self.root}")
        return np.stack(images)

    def input_spec(self) -> dict[str, Any]:
        """What the model sees and every step that turns a raw file into it (JSON-able)."""
        return {
            "modality": self.modality,
            "input_key": self.input_key,
            "layout": "(C, H, W)",
            "channels": 1,
            "image_size": list(self.image_size),
            "photometric": "MONOCHROME2",
            "views": None if self.views is None else list(self.views),
            "label_mode": self.label_mode,
            "preprocessing": [dict(step) for step in self._steps],
        }
