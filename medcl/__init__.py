"""medcl: contrastive self-supervised learning for medical imaging and physiological time series."""

__version__ = "0.1.0"
