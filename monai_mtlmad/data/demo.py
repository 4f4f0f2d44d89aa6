# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The embedded demo dataset and the harder generated sets: phantoms written in the BMAD layout (PNG in 2D,
NIfTI in 3D).

**Phantoms for smoke tests, demos, CI and comparisons, not clinical data.** The demo: head phantoms whose normals
vary from subject to subject (shape, skull, grey/white texture, ventricles, intensity inhomogeneity, noise); test
and validation images also hold lesions of three kinds (ring-enhancing tumours with mass effect, flat hypo-intense
infarcts, bright bleeds) with their masks. It saturates (image AUROC ~0.95-1.0), so comparisons use the harder
sets (``hard=True``): heads that are not skull-stripped (scalp, skull), sliced at different levels (the amount of
tissue varies, as in real stacks), with a stronger bias field, more noise, a fourth lesion kind (diffuse edema)
and lesions blended in at 35-100 % of their contrast; and chest-CT-like slices or volumes with nodules,
ground-glass opacities, pleural masses and consolidations at 40-100 % contrast. Generated in seconds,
deterministic for a seed, nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monai_mtlmad.data.phantom import (
    CHEST_LESION_KINDS,
    HEAD_LESION_KINDS,
    chest_phantoms,
    head_phantoms,
    insert_chest_lesions,
    insert_lesions,
)

__all__ = ["make_demo_dataset", "DEMO_AFFINE", "ANATOMIES"]

ANATOMIES = ("head", "chest")

# 3D volumes: anisotropic spacing and an offset, so that tests see affines carried through
DEMO_AFFINE = np.array([[1.2, 0, 0, -40.0], [0, 1.0, 0, -35.0], [0, 0, 1.5, 10.0], [0, 0, 0, 1]])


def _write(path: Path, array: np.ndarray, spatial_dims: int, mask: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if spatial_dims == 2:
        from PIL import Image

        # rows of the picture = first axis of the array, as any picture library reads it back
        Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)
    else:
        import nibabel as nib

        data = array.astype(np.uint8) if mask else (array * 1000).astype(np.int16)
        nib.save(nib.Nifti1Image(data, DEMO_AFFINE), path)


def make_demo_dataset(
    root: str | Path,
    spatial_dims: int = 2,
    n_train: int = 64,
    n_valid: int = 8,
    n_test: int = 32,
    size: int | None = None,
    seed: int = 0,
    anatomy: str = "head",
    hard: bool = False,
    paired: bool = False,
) -> Path:
    """Write the phantom dataset under ``root`` in the BMAD layout and return ``root``.

    Layout: ``train/good/img``, ``valid|test/good/img``, ``valid|test/Ungood/img`` and ``Ungood/anomaly_mask``;
    half of the valid and test images are lesioned. 2D: 8-bit PNG; 3D: ``.nii.gz`` (int16 images scaled by 1000,
    uint8 masks) with the affine :data:`DEMO_AFFINE`.

    Args:
        root: output folder (created).
        spatial_dims: 2 or 3.
        n_train, n_valid, n_test: image counts (valid and test split half normal, half lesioned).
        size: image side; default 128 (2D) or 48 (3D).
        seed: everything is a deterministic function of it.
        anatomy: ``"head"`` (MRI-like) or ``"chest"`` (CT-like, lung window).
        hard: the harder variant (see the module docstring); chests are always sliced at different levels.
        paired: the normal half of the valid and test splits is the lesioned half's own lesion-free originals
            (``good/img/normal_i`` is ``Ungood/img/lesion_i`` before its lesion), so both halves hold the same
            anatomy and an image-level comparison measures only the response to the lesions. The lesioned half is
            the same as without it; with an odd count the extra normal is left out.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}.")
    if anatomy == "head":
        options = dict(size_range=(0.55, 1.0), scalp=True, bias=0.25, noise=0.04) if hard else {}
        lesion_options = dict(kinds=HEAD_LESION_KINDS, contrast_range=(0.35, 1.0)) if hard else {}

        def normals(n, s, organ=False):
            return head_phantoms(n, shape, seed=s, return_brain=organ, **options)

        def lesions(images, organ, s):
            return insert_lesions(images, organ, seed=s, **lesion_options)
    else:
        lesion_options = dict(kinds=CHEST_LESION_KINDS, contrast_range=(0.4, 1.0) if hard else (1.0, 1.0))

        def normals(n, s, organ=False):
            return chest_phantoms(n, shape, seed=s, return_lungs=organ)

        def lesions(images, organ, s):
            return insert_chest_lesions(images, organ, seed=s, **lesion_options)

    root = Path(root)
    size = size or (128 if spatial_dims == 2 else 48)
    shape = (size,) * spatial_dims
    ext = ".png" if spatial_dims == 2 else ".nii.gz"
    for i, img in enumerate(normals(n_train, seed)):
        _write(root / "train" / "good" / "img" / f"normal_{i:04d}{ext}", img[0], spatial_dims)
    for k, (split, n) in enumerate((("valid", n_valid), ("test", n_test))):
        n_normal, n_sick = n - n // 2, n // 2
        if n_sick:
            sick, organ = normals(n_sick, seed + 10 * k + 2, organ=True)
        for i, img in enumerate(sick if paired and n_sick else normals(n_normal, seed + 10 * k + 1)):
            _write(root / split / "good" / "img" / f"normal_{i:04d}{ext}", img[0], spatial_dims)
        if n_sick:
            sick, masks = lesions(sick, organ, seed + k)
            for i, (img, m) in enumerate(zip(sick, masks)):
                name = f"lesion_{i:04d}{ext}"
                _write(root / split / "Ungood" / "img" / name, img[0], spatial_dims)
                _write(root / split / "Ungood" / "anomaly_mask" / name, m[0].astype(np.float32), spatial_dims, mask=True)
    (root / "README.txt").write_text(
        f"monai-mtlmad {'hard ' if hard else ''}{anatomy} dataset: synthetic PHANTOMS for smoke tests, demos and "
        "comparisons, NOT clinical data.\n"
        f"spatial_dims={spatial_dims} size={size} seed={seed} anatomy={anatomy} hard={hard} paired={paired}; "
        "layout as BMAD (train/valid/test, good/Ungood).\n"
    )
    return root
