# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The embedded demo dataset: head phantoms written in the BMAD layout (PNG in 2D, NIfTI in 3D).

**A phantom for smoke tests, demos and CI, not clinical data.** Normals vary from subject to subject (shape,
skull, grey/white texture, ventricles, intensity inhomogeneity, noise); test and validation images also hold
lesions of three kinds (ring-enhancing tumours with mass effect, flat hypo-intense infarcts, bright bleeds) with
their masks. Generated in seconds, deterministic for a seed, nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monai_mtlmad.data.phantom import head_phantoms, insert_lesions

__all__ = ["make_demo_dataset", "DEMO_AFFINE"]

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
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    root = Path(root)
    size = size or (128 if spatial_dims == 2 else 48)
    shape = (size,) * spatial_dims
    ext = ".png" if spatial_dims == 2 else ".nii.gz"
    for i, img in enumerate(head_phantoms(n_train, shape, seed=seed)):
        _write(root / "train" / "good" / "img" / f"normal_{i:04d}{ext}", img[0], spatial_dims)
    for k, (split, n) in enumerate((("valid", n_valid), ("test", n_test))):
        n_normal, n_sick = n - n // 2, n // 2
        for i, img in enumerate(head_phantoms(n_normal, shape, seed=seed + 10 * k + 1)):
            _write(root / split / "good" / "img" / f"normal_{i:04d}{ext}", img[0], spatial_dims)
        if n_sick:
            sick, brain = head_phantoms(n_sick, shape, seed=seed + 10 * k + 2, return_brain=True)
            sick, masks = insert_lesions(sick, brain, seed=seed + k)
            for i, (img, m) in enumerate(zip(sick, masks)):
                name = f"lesion_{i:04d}{ext}"
                _write(root / split / "Ungood" / "img" / name, img[0], spatial_dims)
                _write(root / split / "Ungood" / "anomaly_mask" / name, m[0].astype(np.float32), spatial_dims, mask=True)
    (root / "README.txt").write_text(
        "monai-mtlmad demo dataset: synthetic head PHANTOMS for smoke tests and demos, NOT clinical data.\n"
        f"spatial_dims={spatial_dims} size={size} seed={seed}; layout as BMAD (train/valid/test, good/Ungood).\n"
    )
    return root
