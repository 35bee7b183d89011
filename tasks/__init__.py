"""Task heads fine-tuned on pretrained encoders: classification (linear probe, fine-tune, from scratch),
label fractions by patient, and metrics."""

from tasks.classification import MODES, ClassificationModule, build_head
from tasks.data import ClassificationDataModule
from tasks.fractions import label_fraction_patients, patient_order, select_label_fraction
from tasks.metrics import classification_metrics
from tasks.probe import LogisticProbe, extract_embeddings

__all__ = [
    "MODES",
    "ClassificationDataModule",
    "ClassificationModule",
    "LogisticProbe",
    "build_head",
    "classification_metrics",
    "extract_embeddings",
    "label_fraction_patients",
    "patient_order",
    "select_label_fraction",
]
