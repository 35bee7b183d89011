"""Pretraining objectives: turn encoder outputs of several views into named loss terms."""

from medcl.objectives.base import BatchObjective, EncodedViews, Objective
from medcl.objectives.hierarchical import HierarchicalContrast
from medcl.objectives.simclr import SimCLR

__all__ = ["BatchObjective", "EncodedViews", "HierarchicalContrast", "Objective", "SimCLR"]
