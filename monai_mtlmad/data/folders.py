# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Datalists from users' own folders: normal studies for training, optional test studies with masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from monai_mtlmad.data.files import check_pairs, list_images, stem

__all__ = ["folder_datalist"]


def folder_datalist(
    images: str | Path | Sequence[str | Path],
    masks: str | Path | None = None,
    label: int | None = None,
    recursive: bool = False,
    check: bool = True,
) -> list[dict]:
    """MONAI datalist of the image files (PNG, NIfTI, NRRD, MetaImage, DICOM series folders) in folders.

    Args:
        images: one folder or several (e.g. the normal studies for training).
        masks: folder of ground-truth masks named like their images (same file name or stem); images without a
            mask are normal (``label`` 0) unless ``label`` says otherwise.
        label: force this image label on every item (e.g. 0 for a training folder of normals).
        recursive: also look in sub-folders.
        check: read every header now, failing with the file's name on unreadable files or mask shape mismatch.

    Returns:
        ``[{"image": path, "label": 0 | 1, "mask": path | None}, ...]``. ``LoadImaged`` keeps each file's affine
        and spacing in the image's metadata, so maps can be written back aligned with the input.
    """
    folders = [images] if isinstance(images, (str, Path)) else list(images)
    if not folders:
        raise ValueError("no image folder given.")
    files = [f for folder in folders for f in list_images(folder, recursive)]
    by_name = {}
    if masks is not None:
        for m in list_images(masks, recursive):
            by_name.setdefault(Path(m).name, m)
            by_name.setdefault(stem(m), m)
    items = []
    for f in files:
        mask = by_name.get(Path(f).name) or by_name.get(stem(f))
        items.append({"image": f, "label": label if label is not None else int(mask is not None), "mask": mask})
    if check:
        check_pairs(items)
    return items
