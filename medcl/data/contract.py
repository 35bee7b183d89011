"""The data contract shared by adapters, datasets, objectives and tasks (DESIGN.md §1.1).

A *sample* is a dict, MONAI-style, so MONAI dictionary transforms apply unchanged:

=================  ==========================================================================
key                value
=================  ==========================================================================
``<input_key>``    the main array, channel first: signals ``(C, T)``, X-ray ``(C, H, W)``,
                   volumes ``(C, H, W, D)``. The adapter names the key (``"signal"``,
                   ``"image"``).
``patient_id``     str, the person (drives patient-level positives and disjoint splits)
``trial_id``       str, a recording / session / study of that patient
``sample_index``   int, a segment within the trial
``label``          optional: class index, multi-hot vector or mask
``meta``           dict: sampling rate, channel names, spacing, affine, source ``path``, ...
=================  ==========================================================================

A *batch* made by :class:`medcl.data.ManifestDataset` for training carries integer codes instead of the
string ids (``patient``, ``trial``: ``(B,)`` long; codes come from the manifest, so no patient identifier
travels through the training loop or its logs), the sample's position in the sample table (``index``),
and either the preprocessed input under ``<input_key>`` ``(B, C, ...)`` or, for contrastive training,
``views`` ``(B, V, C, ...)``. Labels: ``label`` ``(B, K)`` float multi-hot or ``(B,)`` long, with
``has_label`` ``(B,)`` bool.
"""

from __future__ import annotations

__all__ = [
    "HAS_LABEL",
    "INDEX",
    "LABEL",
    "META",
    "N_SKIPPED",
    "PATIENT",
    "PATIENT_ID",
    "SAMPLE_INDEX",
    "TRIAL",
    "TRIAL_ID",
    "VIEWS",
]

PATIENT_ID = "patient_id"
TRIAL_ID = "trial_id"
SAMPLE_INDEX = "sample_index"
LABEL = "label"
HAS_LABEL = "has_label"
META = "meta"

# Batch keys (integer codes and tensors only).
PATIENT = "patient"
TRIAL = "trial"
INDEX = "index"
VIEWS = "views"
N_SKIPPED = "n_skipped"
