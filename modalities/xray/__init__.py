"""Chest X-rays with reports and radiologist gaze: readers, manifests, indexing, preprocessing, adapter,
image encoders, the text side and gaze heatmaps.

- :mod:`~modalities.xray.readers`: PNG/JPEG (8/16 bit) and DICOM radiographs (photometric
  interpretation, bit depth, modality and VOI LUT / windowing) → ``(H, W)`` float32 in [0, 1];
- :mod:`~modalities.xray.manifests`, :mod:`~modalities.xray.indexing`: MIMIC-CXR-JPG, CheXpert, NIH
  ChestX-ray14 and the ``covid_cxr`` layout, view filtering, validation with a quarantine;
- :mod:`~modalities.xray.transforms`: the JSON preprocessing spec (letterbox resize) run in numpy by
  training and by the torch-free predictor alike;
- :mod:`~modalities.xray.adapter`: :class:`XrayAdapter` and anatomy-preserving random views (no
  left-right flip by default);
- :mod:`~modalities.xray.encoders`: MONAI ResNet and ViT image encoders with patch tokens;
- :mod:`~modalities.xray.text`, :mod:`~modalities.xray.text_encoder`: report cleaning, sentence
  splitting, a BPE tokenizer fitted on the corpus, a small transformer text encoder, and an offline hook
  for a locally installed Hugging Face model;
- :mod:`~modalities.xray.gaze`: REFLACX and EGD-CXR fixation readers, duration-weighted Gaussian heatmaps
  (σ = 1° of visual angle), and spatial priors derived from annotations (lung masks, boxes).

Names are imported lazily, so that ``import modalities.xray`` pulls in neither torch nor MONAI (the
predictor reads X-rays through :mod:`~modalities.xray.transforms` without them).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BPETokenizer": "modalities.xray.text",
    "CHEXPERT_LABELS": "modalities.xray.manifests",
    "Fixations": "modalities.xray.gaze",
    "GazeHeatmapProvider": "modalities.xray.gaze",
    "HuggingFaceTextEncoder": "modalities.xray.text_encoder",
    "NIH_LABELS": "modalities.xray.manifests",
    "TransformerTextEncoder": "modalities.xray.text_encoder",
    "XrayAdapter": "modalities.xray.adapter",
    "XrayImage": "modalities.xray.readers",
    "XrayIndexResult": "modalities.xray.indexing",
    "XrayManifest": "modalities.xray.manifests",
    "XrayResNet": "modalities.xray.encoders",
    "XrayViT": "modalities.xray.encoders",
    "XrayViewd": "modalities.xray.adapter",
    "build_encoder": "modalities.xray.encoders",
    "build_manifest": "modalities.xray.manifests",
    "chexpert_manifest": "modalities.xray.manifests",
    "clean_report": "modalities.xray.text",
    "covid_cxr_manifest": "modalities.xray.manifests",
    "encode_sentences": "modalities.xray.text_encoder",
    "fixation_heatmap": "modalities.xray.gaze",
    "heatmap_from_boxes": "modalities.xray.gaze",
    "heatmap_from_mask": "modalities.xray.gaze",
    "index_xrays": "modalities.xray.indexing",
    "load_index": "modalities.xray.indexing",
    "mimic_cxr_manifest": "modalities.xray.manifests",
    "nih_manifest": "modalities.xray.manifests",
    "pool_to_grid": "modalities.xray.gaze",
    "preprocess_file": "modalities.xray.transforms",
    "preprocessing_spec": "modalities.xray.transforms",
    "read_egd_fixations": "modalities.xray.gaze",
    "read_reflacx_fixations": "modalities.xray.gaze",
    "read_xray": "modalities.xray.readers",
    "save_index": "modalities.xray.indexing",
    "split_sentences": "modalities.xray.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modalities.xray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
