"""Loss functions of medcl: pure typed functions with thin ``nn.Module`` wrappers."""

from medcl.losses.alignment import alignment, uniformity
from medcl.losses.asymmetry import AsymmetryLoss, asymmetry_loss, asymmetry_loss_terms, flip_lr
from medcl.losses.gaze import (
    GazeAlignmentLoss,
    GazeTerms,
    gaze_alignment_loss,
    gaze_alignment_loss_terms,
    jensen_shannon,
    pool_heatmaps_to_patches,
)
from medcl.losses.infonce import (
    InfoNCELoss,
    MultiPositiveInfoNCELoss,
    NTXentLoss,
    SupConLoss,
    info_nce_loss,
    multi_positive_info_nce_loss,
    nt_xent_loss,
    supcon_loss,
)
from medcl.losses.koleo import KoLeoLoss, koleo_loss
from medcl.losses.paired import PairedInfoNCELoss, paired_info_nce_loss
from medcl.losses.ts2vec import (
    TS2VecLoss,
    ts2vec_hierarchical_loss,
    ts2vec_instance_loss,
    ts2vec_pyramid_losses,
    ts2vec_temporal_loss,
)
from medcl.losses.voco import (
    VoCoPredictionLoss,
    VoCoRegularizationLoss,
    voco_logits,
    voco_prediction_loss,
    voco_prediction_loss_parts,
    voco_regularization_loss,
)

__all__ = [
    "AsymmetryLoss",
    "GazeAlignmentLoss",
    "GazeTerms",
    "InfoNCELoss",
    "KoLeoLoss",
    "MultiPositiveInfoNCELoss",
    "NTXentLoss",
    "PairedInfoNCELoss",
    "SupConLoss",
    "TS2VecLoss",
    "VoCoPredictionLoss",
    "VoCoRegularizationLoss",
    "alignment",
    "asymmetry_loss",
    "asymmetry_loss_terms",
    "flip_lr",
    "gaze_alignment_loss",
    "gaze_alignment_loss_terms",
    "info_nce_loss",
    "jensen_shannon",
    "koleo_loss",
    "multi_positive_info_nce_loss",
    "nt_xent_loss",
    "paired_info_nce_loss",
    "pool_heatmaps_to_patches",
    "supcon_loss",
    "ts2vec_hierarchical_loss",
    "ts2vec_instance_loss",
    "ts2vec_pyramid_losses",
    "ts2vec_temporal_loss",
    "uniformity",
    "voco_logits",
    "voco_prediction_loss",
    "voco_prediction_loss_parts",
    "voco_regularization_loss",
]
