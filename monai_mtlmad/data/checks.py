# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""What makes an input unusable, found before it is scored: every problem named with its file.

A scan that is NaN-filled, constant, binary (a mask in the image folder), of the wrong dimensionality (a 4D series,
a single slice, a 2D picture for a 3D model), tiny, outside its preset's value range, or a DICOM series with
missing slices or foreign files would otherwise be scored,
and a score for garbage looks like any other score. :class:`CheckImage` raises :class:`ImageProblem` instead; the
datasets in :mod:`monai_mtlmad.data.loading` turn it into a fail-fast list (training) or a recorded skip
(inference), see :func:`describe_failure`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform

__all__ = ["ImageProblem", "CheckImage", "CheckImaged", "describe_failure", "dicom_series_problem"]


class ImageProblem(ValueError):
    """An input that cannot be scored meaningfully; the message starts with the file name."""


def _name(img, default: str = "image") -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", default))


def describe_failure(error: BaseException, source: object) -> str:
    """One line for a failed input: the innermost cause of ``error`` (MONAI's ``Compose`` wraps what a transform
    raised), prefixed by ``source`` unless the message already names it."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not isinstance(error, (ImageProblem, ValueError, FileNotFoundError)):
        text = f"{type(error).__name__}: {text}"
    return text if str(source) in text else f"{source}: {text}"


def dicom_series_problem(folder: str | Path) -> str | None:
    """What is wrong with a folder of DICOM slices as one series, or None: files that are not slices of the series
    (unreadable, or another series), duplicate positions, or missing slices (a gap in ImagePositionPatient along
    the slice normal); readers would otherwise stack what they find and assume even spacing."""
    import itk

    files = [p for p in Path(folder).iterdir() if p.suffix.lower() == ".dcm"]
    names = list(itk.GDCMSeriesFileNames.New(Directory=str(folder)).GetInputFileNames())
    if len(names) < len(files):
        extra = len(files) - len(names)
        return f"{extra} of {len(files)} .dcm files are not slices of its series (unreadable or another series)"
    positions, normal = [], None
    for name in names:
        io = itk.GDCMImageIO.New()
        io.SetFileName(name)
        io.ReadImageInformation()
        found, position = io.GetValueFromTag("0020|0032", "")
        if not found:
            return None  # no slice positions recorded: nothing to compare
        positions.append([float(v) for v in position.split("\\")])
        found, orientation = io.GetValueFromTag("0020|0037", "")
        if normal is None and found:
            r = [float(v) for v in orientation.split("\\")]
            normal = np.cross(r[:3], r[3:])
    if len(positions) < 3:
        return None
    p = np.asarray(positions)
    normal = normal if normal is not None and np.linalg.norm(normal) > 0 else p[-1] - p[0]
    gaps = np.diff(np.sort(p @ (normal / max(np.linalg.norm(normal), 1e-12))))
    step = float(np.median(gaps))
    if step <= 1e-6 or gaps.min() < 0.5 * step:
        return "has slices at duplicate positions"
    if gaps.max() > 1.5 * step:
        return f"has missing slices: they are {step:.3g} mm apart, but one gap is {gaps.max():.3g} mm"
    return None


class CheckImage(Transform):
    """Refuse an image that cannot be scored meaningfully; return it unchanged otherwise (DICOM series folders are
    also checked with :func:`dicom_series_problem`).

    Args:
        spatial_dims: what the model expects, 2 or 3.
        channels: 1 (grayscale; pictures stored as grey + alpha, RGB or RGBA are accepted and converted later) or 3.
        value_range: (low, high) the preset can represent (e.g. 8-bit pictures: 0..255); None: any.
        min_size: smallest spatial side accepted.

    Raises:
        ImageProblem: ``"<file>: <what is wrong>"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int = 1,
        value_range: Sequence[float] | None = None,
        min_size: int = 4,
    ) -> None:
        self.spatial_dims, self.channels = spatial_dims, channels
        self.value_range, self.min_size = value_range, min_size

    def problem(self, img: NdarrayOrTensor) -> str | None:
        """What is wrong with ``img`` ``(C, *spatial)``, or None."""
        spatial = tuple(img.shape[1:])
        dims, c = len(spatial), img.shape[0]
        if dims != self.spatial_dims:
            kind = {2: "a 2D image", 3: "a 3D volume"}.get(dims, f"{dims}D data")
            want = "2D images" if self.spatial_dims == 2 else "3D volumes"
            return f"is {kind} of shape {spatial}; this model expects {want}"
        if self.spatial_dims == 3 and c > 1 and self.channels == 1:
            return f"is a 4D series ({c} frames or channels of shape {spatial}); one 3D volume is expected"
        allowed = (1, 2, 3, 4) if self.channels == 1 else (3, 4)
        if self.spatial_dims == 2 and c not in allowed:
            return f"has {c} channels; {'grey, grey + alpha, RGB or RGBA' if self.channels == 1 else 'RGB(A)'} expected"
        if min(spatial) < self.min_size:
            return f"is too small ({spatial}; at least {self.min_size} per side)"
        source = _name(img, "")
        if source and Path(source).is_dir():  # a DICOM series folder (Path("") would be the working folder)
            series = dicom_series_problem(source)
            if series is not None:
                return series
        x = torch.as_tensor(img).detach()
        x = x.float() if not x.is_floating_point() else x
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            return f"holds {bad} NaN or infinite value{'s' * (bad > 1)} of {x.numel()}"
        lo, hi = float(x.min()), float(x.max())
        if lo == hi:
            return f"is constant (every value {lo:g})"
        flat = x.reshape(-1)
        probe = flat[:: max(1, flat.numel() // 1_000_000)]  # a strided sample first: unique() on a whole CT is slow
        if torch.unique(probe).numel() <= 2 and torch.unique(flat).numel() <= 2:
            return f"holds only two values ({lo:g} and {hi:g}): a mask or a binary image, not a scan"
        if self.value_range is not None and (lo < self.value_range[0] or hi > self.value_range[1]):
            return (f"has values {lo:g}..{hi:g}, outside the range {self.value_range[0]:g}..{self.value_range[1]:g} "
                    "of the model's preset (e.g. a 16-bit picture for an 8-bit preset)")
        return None

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        problem = self.problem(img)
        if problem is not None:
            raise ImageProblem(f"{_name(img)}: {problem}.")
        return img


class CheckImaged(MapTransform):
    """Dictionary-based :class:`CheckImage`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckImage(**kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


CheckImageD = CheckImageDict = CheckImaged
