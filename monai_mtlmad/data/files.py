# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Finding medical image files and checking them cheaply (headers only) before a long run starts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES", "RASTER_SUFFIXES", "MASK_FOLDERS", "check_pairs", "image_shape", "is_image_file", "is_mask_folder",
    "is_raster", "list_images", "stem",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # 2D pictures: (rows, columns) on disk


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def stem(path: str | Path) -> str:
    """File name without its image suffix (``.nii.gz`` included); other dots stay (DICOM series folders are often
    named by UIDs such as ``1.2.840.10008.4``, which must not collide once "suffixed")."""
    p = Path(path)
    return p.name[: -len(_suffix(p))] if _suffix(p) in IMAGE_SUFFIXES else p.name


def is_raster(path: str | Path) -> bool:
    """A 2D picture format (PNG, JPEG, BMP, TIFF) rather than a medical volume format with an affine."""
    return _suffix(Path(path)) in RASTER_SUFFIXES


def is_image_file(path: Path) -> bool:
    return path.is_file() and _suffix(path) in IMAGE_SUFFIXES and not path.name.startswith(".")


def _is_dicom_series(path: Path) -> bool:
    return path.is_dir() and any(f.suffix.lower() == ".dcm" for f in path.iterdir())


# sub-folders that hold ground truth, not images to score (BMAD's anomaly_mask/ and label/, RESC's *_label/)
MASK_FOLDERS = ("anomaly_mask", "label", "labels", "mask", "masks", "ground_truth")


def is_mask_folder(path: Path) -> bool:
    name = path.name.lower()
    return name in MASK_FOLDERS or name.endswith("_label")


def list_images(folder: str | Path, recursive: bool = False) -> list[str]:
    """Image files in ``folder`` (sorted); a folder of ``.dcm`` files counts as one DICOM series. With
    ``recursive``, sub-folders at any depth are searched, except mask folders (:data:`MASK_FOLDERS`, ``*_label``).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder.")
    if _is_dicom_series(folder):
        return [str(folder)]
    found = []
    for p in sorted(folder.iterdir()):
        if is_image_file(p) and p.suffix.lower() != ".dcm":
            found.append(str(p))
        elif p.is_dir() and _is_dicom_series(p):
            found.append(str(p))
        elif p.is_dir() and recursive and not is_mask_folder(p) and not p.name.startswith("."):
            found += _list_or_empty(p)
    if not found:
        raise ValueError(f"{folder}: the folder holds no image (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM series).")
    return found


def _list_or_empty(folder: Path) -> list[str]:
    try:
        return list_images(folder, recursive=True)
    except ValueError:  # a sub-folder without images
        return []


def image_shape(path: str | Path) -> tuple[int, ...]:
    """Spatial shape ``(x, y[, z])``, as MONAI's ``LoadImage`` puts it, from the header where the format allows
    (PNG & co. with Pillow, NIfTI with nibabel; NRRD, MetaImage and DICOM series with ITK).

    Raises:
        ValueError: naming the file, when it cannot be read.
    """
    p = Path(path)
    try:
        if is_raster(p):
            from PIL import Image

            with Image.open(p) as im:
                return tuple(im.size)  # (x, y): MONAI's readers put x on the first array axis
        if _suffix(p) in (".nii", ".nii.gz"):
            import nibabel as nib

            return tuple(int(s) for s in nib.load(str(p)).shape[:3])
        import itk

        if p.is_dir():
            names = itk.GDCMSeriesFileNames.New(Directory=str(p)).GetInputFileNames()
            image = itk.imread(list(names))
        else:
            image = itk.imread(str(p))
        return tuple(int(s) for s in image.GetLargestPossibleRegion().GetSize())
    except Exception as e:  # every reader has its own exception types; the user needs the file and the cause
        raise ValueError(f"{p}: cannot read this image ({type(e).__name__}: {e}).") from e


def check_pairs(items: Iterable[dict], keys: Sequence[str] = ("image", "mask")) -> None:
    """Read every file's header; raise ``ValueError`` naming the file if one is unreadable or an image and its
    mask differ in spatial shape."""
    for item in items:
        shapes = {k: image_shape(item[k]) for k in keys if item.get(k)}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{k} {item[k]} {s}" for k, s in shapes.items())
            raise ValueError(f"{item[keys[0]]}: image and mask differ in shape ({detail}).")
