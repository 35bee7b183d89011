"""Pretraining objectives: turn encoder outputs of several views into named loss terms."""

from medcl.objectives.asymmetry import AsymmetryContrast, SymmetricCropd
from medcl.objectives.base import BatchObjective, EncodedViews, Objective
from medcl.objectives.gaze_alignment import GazeAlignment, GazeAlignmentInputs
from medcl.objectives.hierarchical import HierarchicalContrast
from medcl.objectives.participant import ParticipantContrast, ParticipantViews
from medcl.objectives.simclr import SimCLR
from medcl.objectives.voco import VoCo
from medcl.objectives.voco_geometry import VoCoCropsd

__all__ = [
    "AsymmetryContrast",
    "BatchObjective",
    "EncodedViews",
    "GazeAlignment",
    "GazeAlignmentInputs",
    "HierarchicalContrast",
    "Objective",
    "ParticipantContrast",
    "ParticipantViews",
    "SimCLR",
    "SymmetricCropd",
    "VoCo",
    "VoCoCropsd",
]
