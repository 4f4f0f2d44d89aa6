# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Proxy-task transforms, usable alone in any MONAI pipeline (they do not import the learner)."""

from monai_mtlmad.transforms.array import (
    PseudoLabel,
    RandCoarseNoise,
    RandInpaintMask,
    RandJigsaw,
    RandOrientation,
    RandPseudoAnomaly,
)
from monai_mtlmad.transforms.dictionary import (
    PseudoLabelD,
    PseudoLabeld,
    PseudoLabelDict,
    RandCoarseNoiseD,
    RandCoarseNoised,
    RandCoarseNoiseDict,
    RandInpaintMaskD,
    RandInpaintMaskd,
    RandInpaintMaskDict,
    RandJigsawD,
    RandJigsawd,
    RandJigsawDict,
    RandOrientationD,
    RandOrientationd,
    RandOrientationDict,
    RandPseudoAnomalyD,
    RandPseudoAnomalyd,
    RandPseudoAnomalyDict,
)
from monai_mtlmad.transforms.foreground import (
    ForegroundMask,
    ForegroundMaskD,
    ForegroundMaskd,
    ForegroundMaskDict,
    foreground_mask,
)
from monai_mtlmad.transforms.functional import lattice_masks, maximal_hamming_permutations, pose_table

__all__ = [
    "PseudoLabel", "PseudoLabeld", "PseudoLabelD", "PseudoLabelDict",
    "RandInpaintMask", "RandInpaintMaskd", "RandInpaintMaskD", "RandInpaintMaskDict",
    "RandJigsaw", "RandJigsawd", "RandJigsawD", "RandJigsawDict",
    "RandOrientation", "RandOrientationd", "RandOrientationD", "RandOrientationDict",
    "RandPseudoAnomaly", "RandPseudoAnomalyd", "RandPseudoAnomalyD", "RandPseudoAnomalyDict",
    "RandCoarseNoise", "RandCoarseNoised", "RandCoarseNoiseD", "RandCoarseNoiseDict",
    "ForegroundMask", "ForegroundMaskd", "ForegroundMaskD", "ForegroundMaskDict", "foreground_mask",
    "lattice_masks", "maximal_hamming_permutations", "pose_table",
]
