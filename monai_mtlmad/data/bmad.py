# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""BMAD (Bao et al., CVPRW 2024) folders as MONAI datalists, in every layout seen in the wild.

Accepted layouts (``<split>`` is train / valid / test, any capitalisation)::

    <root>/<split>/good/img/*.png          or  <root>/<split>/good/*.png
    <root>/<split>/Ungood/img/*.png        or  <root>/<split>/Ungood/*.png
    <root>/<split>/Ungood/anomaly_mask/*   or  <root>/<split>/Ungood/label/*
    RESC: <root>/Train/..., <root>/Val/val/{good,Ungood}/..., <root>/Val/val_label/Ungood/...,
          <root>/Test/test/..., <root>/Test/test_label/Ungood/...

Masks share the image's file name (or its stem). Image-label-only datasets have no mask folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monai_mtlmad.data.files import check_pairs, list_images, stem

__all__ = ["BMADInfo", "BMAD_DATASETS", "bmad_datalist", "bmad_info"]


@dataclass(frozen=True)
class BMADInfo:
    """Defaults of one BMAD dataset."""

    name: str
    modality: str
    image_size: tuple[int, int]
    channels: int  # what the detector should see: 3 only for histopathology; BraTS PNGs are RGB-stored grayscale
    has_masks: bool
    preset: str  # preprocessing preset, see monai_mtlmad.data.preprocessing


BMAD_DATASETS = {
    "brats": BMADInfo("BraTS2021", "brain MRI (FLAIR)", (240, 240), 1, True, "mri"),
    "liver": BMADInfo("Liver CT (BTCV + LiTS)", "abdominal CT", (512, 512), 1, True, "png"),
    "resc": BMADInfo("RESC", "retinal OCT", (512, 1024), 1, True, "png"),
    "oct2017": BMADInfo("OCT2017", "retinal OCT", (512, 496), 1, False, "png"),
    "rsna": BMADInfo("RSNA", "chest X-ray", (1024, 1024), 1, False, "png"),
    "camelyon16": BMADInfo("Camelyon16", "histopathology (RGB)", (256, 256), 3, False, "rgb"),
}

_ALIASES = {
    "brats": ("brats", "brats2021", "brainmri", "brain"),
    "liver": ("liver", "livert", "liverct", "hist_liver"),
    "resc": ("resc", "retinaresc", "retina_resc"),
    "oct2017": ("oct2017", "retinaoct2017", "oct"),
    "rsna": ("rsna", "chestxray", "chestrsna"),
    "camelyon16": ("camelyon16", "camelyon", "histopathology"),
}

_SPLITS = {
    "train": (("train",), ("Train",)),
    "valid": (("valid",), ("val",), ("Valid",), ("Val", "val"), ("Val",)),
    "test": (("test",), ("Test", "test"), ("Test",)),
}


def bmad_info(dataset: str | None, root: str | Path | None = None) -> BMADInfo | None:
    """The dataset's defaults, from its name or, when ``dataset`` is None, from the root folder's name."""
    key = (dataset or (Path(root).name if root else "")).lower().replace("-", "").replace(" ", "")
    for name, aliases in _ALIASES.items():
        if key in aliases or key.replace("_", "") in aliases:
            return BMAD_DATASETS[name]
    if dataset is not None:
        raise ValueError(f"unknown BMAD dataset {dataset!r}; known: {sorted(BMAD_DATASETS)}.")
    return None


def _child(folder: Path, name: str) -> Path | None:
    """``folder/name`` matched case-insensitively."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def _split_dir(root: Path, split: str) -> Path:
    tried = []
    for parts in _SPLITS[split]:
        d: Path | None = root
        for part in parts:
            d = _child(d, part) if d is not None else None
        tried.append("/".join(parts))
        if d is not None and (_child(d, "good") or _child(d, "ungood")):
            return d
    raise FileNotFoundError(f"{root}: no '{split}' split (looked for {', '.join(tried)} holding good/ or Ungood/).")


def _class_images(split_dir: Path, cls: str) -> list[str]:
    d = _child(split_dir, cls)
    if d is None:
        return []
    img = _child(d, "img")
    return list_images(img if img is not None else d)


def _mask_dir(root: Path, split: str, split_dir: Path) -> Path | None:
    ungood = _child(split_dir, "ungood")
    for name in ("anomaly_mask", "label", "mask", "masks"):
        d = _child(ungood, name) if ungood is not None else None
        if d is not None:
            return d
    # RESC: <root>/Val/val_label/Ungood, <root>/Test/test_label/Ungood
    parent = split_dir.parent
    for name in (f"{split_dir.name}_label", "val_label" if split == "valid" else f"{split}_label"):
        d = _child(parent, name)
        if d is not None:
            inner = _child(d, "ungood") or d
            return _child(inner, "img") or inner
    return None


def bmad_datalist(root: str | Path, split: str, dataset: str | None = None, check: bool = True) -> list[dict]:
    """MONAI datalist of one BMAD split.

    Args:
        root: the dataset folder (e.g. ``.../BraTS2021``).
        split: ``"train"``, ``"valid"`` or ``"test"``.
        dataset: BMAD dataset name; by default guessed from the folder name (only used to require masks).
        check: read every header to fail now, naming the file, on unreadable files and image/mask shape mismatch.

    Returns:
        ``[{"image": path, "label": 0 | 1, "mask": path | None}, ...]``: normals first, sorted by name.

    Raises:
        FileNotFoundError: no such root or split.
        ValueError: an empty folder, an anomalous image without its mask (when the split has masks), an
            unreadable file, or an image and mask of different shape; the message names the file or folder.
    """
    root = Path(root)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}.")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder.")
    info = bmad_info(dataset, root)
    split_dir = _split_dir(root, split)
    normal = _class_images(split_dir, "good")
    abnormal = _class_images(split_dir, "ungood")
    if split == "train" and abnormal:
        raise ValueError(f"{split_dir}: the training split must hold normal images only, found Ungood/.")
    if not normal and not abnormal:
        raise ValueError(f"{split_dir}: no image in good/ or Ungood/.")
    mask_dir = _mask_dir(root, split, split_dir) if abnormal else None
    if abnormal and mask_dir is None and info is not None and info.has_masks:
        raise ValueError(f"{split_dir}: {info.name} has pixel masks, but no anomaly_mask/ or label/ folder was found.")
    masks = {}
    if mask_dir is not None:
        for m in list_images(mask_dir):
            masks.setdefault(Path(m).name, m)
            masks.setdefault(stem(m), m)
    items = [{"image": p, "label": 0, "mask": None} for p in normal]
    for p in abnormal:
        mask = masks.get(Path(p).name) or masks.get(stem(p)) if mask_dir is not None else None
        if mask_dir is not None and mask is None:
            raise ValueError(f"{p}: anomalous image without a mask of the same name in {mask_dir}.")
        items.append({"image": p, "label": 1, "mask": mask})
    if check:
        check_pairs(items)
    return items
