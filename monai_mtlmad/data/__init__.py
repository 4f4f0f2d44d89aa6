# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Data: BMAD and folder datalists, modality preprocessing, cached datasets, and the embedded demo phantoms."""

from monai_mtlmad.data.bmad import BMAD_DATASETS, BMADInfo, bmad_datalist, bmad_info
from monai_mtlmad.data.checks import CheckImage, CheckImaged, ImageProblem, describe_failure
from monai_mtlmad.data.demo import ANATOMIES, DEMO_AFFINE, make_demo_dataset
from monai_mtlmad.data.files import IMAGE_SUFFIXES, check_pairs, image_shape, list_images
from monai_mtlmad.data.folders import folder_datalist
from monai_mtlmad.data.loading import (
    CheckedCacheDataset,
    SkippingDataset,
    make_dataset,
    make_loader,
    raise_on_failures,
    skipping_collate,
)
from monai_mtlmad.data.phantom import (
    CHEST_LESION_KINDS,
    HEAD_LESION_KINDS,
    LESION_KINDS,
    chest_phantoms,
    head_phantoms,
    insert_chest_lesions,
    insert_lesions,
)
from monai_mtlmad.data.preprocessing import (
    PRESET_RIM,
    PRESETS,
    AsGrayscale,
    AsGrayscaled,
    CropToBodyd,
    DropAlpha,
    DropAlphad,
    FitSpacingd,
    InvertMap,
    LoadMaskd,
    ScaleIntensityInForeground,
    ScaleIntensityInForegroundd,
    default_rim,
    preprocessing,
)

__all__ = [
    "BMAD_DATASETS", "BMADInfo", "bmad_datalist", "bmad_info",
    "CheckImage", "CheckImaged", "ImageProblem", "describe_failure",
    "ANATOMIES", "DEMO_AFFINE", "make_demo_dataset",
    "IMAGE_SUFFIXES", "check_pairs", "image_shape", "list_images",
    "folder_datalist",
    "CheckedCacheDataset", "SkippingDataset", "make_dataset", "make_loader", "raise_on_failures", "skipping_collate",
    "LESION_KINDS", "HEAD_LESION_KINDS", "CHEST_LESION_KINDS", "head_phantoms", "insert_lesions", "chest_phantoms",
    "insert_chest_lesions",
    "PRESETS", "PRESET_RIM", "default_rim", "AsGrayscale", "AsGrayscaled", "DropAlpha", "DropAlphad", "LoadMaskd", "ScaleIntensityInForeground",
    "ScaleIntensityInForegroundd", "FitSpacingd", "CropToBodyd", "InvertMap", "preprocessing",
]
