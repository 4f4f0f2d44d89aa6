# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Small helpers the bundle configs call (kept here so the JSON stays declarative)."""

from __future__ import annotations

import re
from pathlib import Path

from monai_mtlmad.data.bmad import bmad_datalist
from monai_mtlmad.data.files import is_image_file
from monai_mtlmad.data.folders import folder_datalist

__all__ = ["latest_checkpoint", "input_datalist", "has_anomalies"]


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The last-epoch checkpoint ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` (None if there is none)."""
    found = []
    for p in Path(ckpt_dir).glob("checkpoint_epoch=*.pt"):
        m = re.search(r"epoch=(\d+)", p.name)
        if m:
            found.append((int(m.group(1)), str(p)))
    return max(found)[1] if found else None


def input_datalist(source: str | Path, split: str = "test") -> list[dict]:
    """Items ``{"image": path}`` to run inference on: one image file, a BMAD dataset folder (its ``split``), or any
    folder of images (searched recursively)."""
    src = Path(source)
    if src.is_file() and is_image_file(src):
        return [{"image": str(src)}]
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder.")
    try:
        items = bmad_datalist(src, split)
    except FileNotFoundError:
        items = folder_datalist(src, recursive=True)
    return [{"image": d["image"]} for d in items]


def has_anomalies(items: list[dict]) -> bool:
    return any(int(d.get("label", 0)) == 1 for d in items)
