"""Loss functions of medcl: pure typed functions with thin ``nn.Module`` wrappers."""

from medcl.losses.alignment import alignment, uniformity
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
from medcl.losses.ts2vec import (
    TS2VecLoss,
    ts2vec_hierarchical_loss,
    ts2vec_instance_loss,
    ts2vec_pyramid_losses,
    ts2vec_temporal_loss,
)

__all__ = [
    "InfoNCELoss",
    "KoLeoLoss",
    "MultiPositiveInfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
    "TS2VecLoss",
    "alignment",
    "info_nce_loss",
    "koleo_loss",
    "multi_positive_info_nce_loss",
    "nt_xent_loss",
    "supcon_loss",
    "ts2vec_hierarchical_loss",
    "ts2vec_instance_loss",
    "ts2vec_pyramid_losses",
    "ts2vec_temporal_loss",
    "uniformity",
]
