"""Lightning modules for pretraining."""

from medcl.training.pretrain import PretrainModule

__all__ = ["PretrainModule"]
