"""Task heads fine-tuned on pretrained encoders: classification (linear probe, fine-tune, from scratch),
segmentation (fine-tune, frozen encoder, from scratch), label fractions by patient, metrics, and the
evaluation of image-report models (zero-shot classification, retrieval)."""

from tasks.classification import MODES, ClassificationModule, build_head
from tasks.data import ClassificationDataModule
from tasks.fractions import label_fraction_patients, patient_order, select_label_fraction
from tasks.image_text import ImageTextModel, evaluate_image_text
from tasks.metrics import classification_metrics
from tasks.probe import LogisticProbe, extract_embeddings
from tasks.segmentation import SegmentationModule, load_segmentation_model, run_segmentation_efficiency
from tasks.segmentation_data import SegmentationDataModule

__all__ = [
    "MODES",
    "ClassificationDataModule",
    "ClassificationModule",
    "ImageTextModel",
    "LogisticProbe",
    "SegmentationDataModule",
    "SegmentationModule",
    "build_head",
    "classification_metrics",
    "evaluate_image_text",
    "extract_embeddings",
    "label_fraction_patients",
    "load_segmentation_model",
    "patient_order",
    "run_segmentation_efficiency",
    "select_label_fraction",
]
