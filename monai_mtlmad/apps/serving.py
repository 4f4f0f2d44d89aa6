# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""One study at a time, for servers (the MONAI Label app): a model file loaded once and reloaded when a new version
replaces it, each study scored and its map brought back to the study's own grid, and the results written beside
each other in the study's format.

Nothing here imports MONAI Label, so it is tested with the rest of the package.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["StudyResult", "StudyScorer", "write_study_map"]


@dataclass
class StudyResult:
    """One scored study.

    Attributes:
        map: ``(1, *spatial)`` float32 ``MetaTensor``, the fused map in the study's own grid (its affine in ``meta``).
        segmentation: ``(1, *spatial)`` uint8, 1 where the map reaches the model's pixel threshold.
        info: JSON-ready figures (image score, p-value, decision, thresholds, per-task scores, expert usage, model).
    """

    map: Any
    segmentation: Any
    info: dict[str, Any] = field(default_factory=dict)


class StudyScorer:
    """A model file served to many requests: loaded on first use and again whenever the file changes (a retraining
    published a new version), one study scored at a time.

    Args:
        model_path: the self-describing model file (``models/model.pt`` of a bundle run).
        device: where to score; default CUDA when available.
        fast: as :func:`~monai_mtlmad.apps.bundle.load_detector` (None: the fast mode when the file holds one that
            kept the full mode's quality).
    """

    def __init__(self, model_path: str | Path, device: str | torch.device | None = None, fast: bool | None = None):
        self.model_path = Path(model_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.fast = fast
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.detector = None

    def _load(self) -> None:
        """(Re)load the model when the file is new or was replaced since it was loaded."""
        from monai_mtlmad.apps.bundle import load_detector
        from monai_mtlmad.data.preprocessing import InvertMap

        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: no model file; train one (bundle train.json) or point the app at one.")
        stat = self.model_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self.detector = load_detector(self.model_path, self.device, fast=self.fast)
        self.preprocessing = self.detector.preprocessing(with_mask=False)[0]
        self.invert = InvertMap(self.preprocessing)
        self._stamp = stamp

    @property
    def version(self) -> int:
        """The model file's version (1 for a bundle export; each published retraining adds one)."""
        with self._lock:
            self._load()
            return int(self.detector.training.get("version", 1))

    @property
    def threshold(self) -> float | None:
        """The served detector's image threshold (None: too few calibration normals, no study is flagged)."""
        with self._lock:
            self._load()
            return self.detector.threshold

    def __call__(self, path: str | Path) -> StudyResult:
        """Score one study (a file or a DICOM series folder).

        Raises:
            FileNotFoundError: no such study, or no model file.
            ValueError: a study the model cannot score (unreadable, other dimensions or channels), naming it.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such study.")
        with self._lock, torch.no_grad():
            self._load()
            det = self.detector
            try:
                image = self.preprocessing({"image": str(path)})["image"]
            except Exception as e:  # MONAI wraps the reader's or check's error: keep the innermost, it names the problem
                cause = e
                while cause.__cause__ is not None:
                    cause = cause.__cause__
                raise ValueError(f"{path}: cannot be scored by this model: {cause}") from e
            scores = det.score(image[None].to(self.device))
            if scores.map is None:
                raise ValueError(f"{self.model_path}: the model's tasks are all global; it draws no anomaly map.")
            amap = self.invert(image, scores.map[0])
            threshold = det.map_threshold
            segmentation = (amap >= threshold).to(torch.uint8) if threshold is not None else torch.zeros_like(amap, dtype=torch.uint8)
            usage = {
                block: {t.name: [round(float(v), 4) for v in row] for t, row in zip(det.tasks, u["selection"])}
                for block, u in scores.expert_usage.items()
            }
            info = {
                "score": float(scores.score[0]),
                "p_value": float(scores.p_value[0]),
                "anomalous": bool(scores.anomalous[0]),
                "threshold": det.threshold,
                "nominal_fpr": det.fpr,
                "image_score": det.deciding_score,
                "mode": det.mode,
                "pixel_threshold": threshold,
                "anomalous_voxels": int(segmentation.sum()),
                "task_scores": {k: float(v[0]) for k, v in scores.task_scores.items()},
                "expert_usage": usage,
                "model": {"path": str(self.model_path), "version": int(det.training.get("version", 1))},
            }
        return StudyResult(amap, segmentation, info)


def write_study_map(array, study: str | Path, path: str | Path, dtype=np.float32) -> Path:
    """Write ``array (1, *spatial)`` (in the study's grid, e.g. :attr:`StudyResult.map`) in the study's format.

    Pictures (PNG, JPEG, ...): a float map as a float32 TIFF, a segmentation (integer dtype) as an 8-bit PNG, both
    ``(rows, columns)`` like ``numpy.asarray(PIL.Image.open(study))``. Volumes: NIfTI with the study's affine; give
    ``path`` the suffix you want (``.nii.gz``), the picture suffixes are chosen here.

    Returns:
        the written file.
    """
    from monai.data import NibabelWriter
    from PIL import Image

    from monai_mtlmad.data.files import is_raster

    path = Path(path)
    if is_raster(study):
        grid = np.asarray(array)[0].T.astype(dtype)  # MONAI's readers put x first; pictures are stored rows first
        if np.issubdtype(dtype, np.integer):
            path = path.with_name(path.name.split(".")[0] + ".png")
            Image.fromarray(grid.astype(np.uint8)).save(path)
        else:
            path = path.with_name(path.name.split(".")[0] + ".tif")
            Image.fromarray(grid.astype(np.float32), mode="F").save(path)
        return path
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(array, channel_dim=0)
    writer.set_metadata(array.meta, resample=False)
    writer.write(str(path))
    return path
