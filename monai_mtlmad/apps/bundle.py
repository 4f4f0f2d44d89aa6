# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Small helpers the bundle configs call (kept here so the JSON stays declarative)."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_mtlmad.data.bmad import bmad_datalist
from monai_mtlmad.data.files import is_image_file, is_mask_folder
from monai_mtlmad.data.folders import folder_datalist
from monai_mtlmad.safe_io import keep_previous, verify_checksum

__all__ = [
    "latest_checkpoint", "input_datalist", "has_anomalies", "calibration_split", "load_detector", "guard_training_output",
    "as_flag", "add_fast_mode", "split_as_trained", "image_dataset", "check_image_size",
]

logger = logging.getLogger(__name__)


def as_flag(value: Any, name: str = "flag") -> bool | None:
    """A command-line switch as a bool: ``python -m monai.bundle run --resume false`` passes the *string* "false"
    (Python Fire turns only ``False`` into a bool), which plain truth testing would take for True.

    Raises:
        ValueError: naming the switch, for anything but a bool, None, 0/1 or true/false/yes/no/on/off.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    raise ValueError(f"--{name} takes true or false, got {value!r}.")


_FLAGS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def _same(a, b, dims: int) -> bool:
    """Two sizes or spacings, each a number or one per dimension (None: absent), are equal."""
    from monai.utils import ensure_tuple_rep

    if a is None or b is None:
        return a is None and b is None
    return tuple(float(v) for v in ensure_tuple_rep(a, dims)) == tuple(float(v) for v in ensure_tuple_rep(b, dims))


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The last good checkpoint ``checkpoint_epoch=N.pt`` in ``ckpt_dir``: the newest whose ``.sha256`` matches
    (a damaged checkpoint, or one written just before a kill and never checksummed, is skipped with a warning).
    In a folder without any checksum (older runs), the newest that opens. None if there is none."""
    found = []
    for p in Path(ckpt_dir).glob("checkpoint_epoch=*.pt"):
        m = re.search(r"epoch=(\d+)", p.name)
        if m:
            found.append((int(m.group(1)), p))
    checked = any(Path(ckpt_dir).glob("*.pt.sha256"))
    for _, path in sorted(found, reverse=True):
        verdict = verify_checksum(path)
        if verdict:
            return str(path)
        if checked:
            logger.warning(f"{path}: {'damaged (checksum mismatch)' if verdict is False else 'never checksummed'}; "
                           "skipped, resuming from an earlier checkpoint")
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return str(path)
        except Exception as e:  # an unreadable legacy checkpoint: try the one before
            logger.warning(f"{path}: cannot be read ({type(e).__name__}); skipped")
    return None


def input_datalist(source: str | Path, split: str = "test") -> list[dict]:
    """Items ``{"image": path}`` to run inference on: one image file (or DICOM series folder), a BMAD dataset
    folder (its ``split``), or any folder of images searched recursively (mask folders left out; every folder of
    ``.dcm`` files is one series)."""
    src = Path(source)
    if src.is_file() and is_image_file(src):
        return [{"image": str(src)}]
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder.")
    try:  # headers are not read here: an unreadable file is skipped and recorded when it is loaded
        items = bmad_datalist(src, split, check=False)
    except FileNotFoundError:
        items = folder_datalist(src, recursive=True, check=False)
    masks = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_dir() and is_mask_folder(p))
    left_out = f"; mask folders left out: {', '.join(masks)}" if masks else ""
    logger.info(f"{src}: {len(items)} input(s) to score{left_out}")
    return [{"image": d["image"]} for d in items]


def has_anomalies(items: list[dict]) -> bool:
    return any(int(d.get("label", 0)) == 1 for d in items)


def calibration_split(
    train: Sequence[dict], valid: Sequence[dict], size: int = 100, max_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Training items and calibration normals (images the learner never trains on).

    Calibration takes every normal of the validation split; when those are fewer than ``size``, the shortfall is
    held out of the training normals (chosen at random with ``seed``), at most ``max_fraction`` of them.

    Returns:
        ``(training items, calibration items)``; each calibration item says where it came from (``"source"``:
        ``"valid"`` or ``"train"``).
    """
    normals = [{**d, "source": "valid"} for d in valid if int(d.get("label", 0)) == 0]
    hold = max(0, min(size - len(normals), int(max_fraction * len(train))))
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:hold])
    kept = [d for i, d in enumerate(train) if i not in held]
    calibration = normals + [{**train[i], "source": "train"} for i in sorted(held)]
    if not calibration:
        raise ValueError("no normal image to calibrate on: the valid split holds none and none could be held out.")
    logger.info(f"calibration normals: {len(normals)} from valid + {hold} held out of {len(train)} training images")
    return kept, calibration


def load_detector(
    model_path: str | Path,
    device=None,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    image_size: int | Sequence[int] | None = None,
    preset: str | None = None,
    rim: float | None = None,
    spacing: float | Sequence[float] | None = None,
    image_score: str | None = None,
    fast: bool | None = None,
):
    """The :class:`~monai_mtlmad.scoring.AnomalyScorer` of a model file, everything rebuilt from the file.

    Arguments left None come from the file. ``spatial_dims`` or ``in_channels`` that differ from the file's are
    refused; ``image_size``, ``preset``, ``rim`` or ``spacing`` that differ are applied with a warning, since the
    calibration (threshold, p-values) no longer holds for images preprocessed differently. ``image_score`` picks
    another of the calibrated image scores to decide (each has its own threshold and p-values in the file).
    ``fast``: score with the distilled single-pass student (True), with every task view (False), or (None) with the
    student whenever the file holds one that kept the full mode's quality on the distillation's synthetic check
    (:meth:`~monai_mtlmad.scoring.student.DistilledStudent.keeps_quality`), else in the full mode, with a warning.

    Raises:
        ValueError: naming the file and the contradicting setting.
    """
    from monai_mtlmad.scoring.scorer import AnomalyScorer

    scorer = AnomalyScorer.load(model_path, map_location=device)
    net = scorer.net
    # settings that define the network are refused when they differ; those of the preprocessing are applied with a
    # warning (the model then sees images unlike its calibration normals)
    structural = (("spatial_dims", spatial_dims, net.spatial_dims), ("in_channels", in_channels, net.in_channels))
    for key, given, stored in structural:
        if given is not None and int(given) != stored:
            raise ValueError(f"{model_path}: the model was trained with {key}={stored}, not {given}; leave {key} out "
                             "(the model file sets it) or train another model.")
    if image_score is not None:
        if image_score not in scorer.thresholds:
            raise ValueError(f"{model_path}: image_score {image_score!r} is not calibrated in this model file; it holds "
                             f"{sorted(scorer.thresholds)}.")
        scorer.image_score = image_score
    fast = as_flag(fast, "fast")
    if fast is None:
        fast = scorer.student is not None and scorer.student.keeps_quality()
        if scorer.student is not None and not fast:
            check = scorer.student.training["synthetic_check"]
            logger.warning(
                f"{model_path}: its fast mode separated synthetic lesions less well than the full mode when it was "
                f"distilled (image AUROC {check['student_image_auroc']:.3f} against {check['teacher_image_auroc']:.3f}), "
                "so scoring is in the full mode (--fast true uses the fast mode anyway)."
            )
    try:
        scorer.use_fast(bool(fast))
    except ValueError as e:
        raise ValueError(f"{model_path}: {e}") from e
    logger.info(f"{model_path}: scoring in {scorer.mode} mode" + (
        "" if scorer.student is None else f" (the file holds a fast mode; fast={not scorer.fast} switches)"))
    config = scorer.preprocessing_config
    if config is None:
        raise ValueError(f"{model_path}: the model file holds no preprocessing settings; export it with this version.")
    changed = {}
    dims = net.spatial_dims
    # None means "as in the file"
    if image_size is not None and not _same(image_size, config["spatial_size"], dims):
        try:  # whole images go through the network (the fast mode's student pads, sliding windows have their size)
            if scorer.roi_size is None and not scorer.fast:
                check_image_size(image_size, dims, net.size_divisor)
        except ValueError as e:
            raise ValueError(f"{model_path}: {e}") from e
        changed["spatial_size"] = (config["spatial_size"], image_size)
    if preset is not None and preset != config["preset"]:
        changed["preset"] = (config["preset"], preset)
    if spacing is not None and not _same(spacing, config["spacing"], dims):
        changed["spacing"] = (config["spacing"], spacing)
    if rim is not None and float(rim) != float(scorer.rim):
        changed["rim"] = (scorer.rim, rim)
    if changed:
        detail = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        logger.warning(f"{model_path}: overriding the model's preprocessing ({detail}): its calibration no longer "
                       "holds, so thresholds, p-values and 'anomalous' flags are not valid; retrain or recalibrate.")
        for key, (_, new) in changed.items():
            if key == "rim":
                scorer.rim = float(new)
            else:
                config[key] = new
    return scorer


def split_as_trained(
    scorer,
    model_path: str | Path,
    dataset_dir: str | Path,
    bmad_dataset: str | None = None,
    calibration_images: int = 100,
    calibration_max_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """The training items and calibration normals of a trained model's dataset, split as ``train.json`` split them
    (:func:`calibration_split` with the same settings), for work on a trained model (a new fast mode, another
    calibration) that must not touch images the model trained on.

    Raises:
        ValueError: naming the model file, when the split does not give as many calibration images as the
            ``scorer`` (loaded from ``model_path``) was calibrated on (another dataset, or other split settings).
    """
    train = bmad_datalist(dataset_dir, "train", bmad_dataset, check=False)
    valid = bmad_datalist(dataset_dir, "valid", bmad_dataset, check=False)
    kept, calibration = calibration_split(train, valid, calibration_images, calibration_max_fraction, seed)
    if len(calibration) != scorer.calibration.get("images"):
        raise ValueError(
            f"{model_path}: calibrated on {scorer.calibration.get('images')} normal images, but {dataset_dir} split with "
            f"calibration_images={calibration_images}, calibration_max_fraction={calibration_max_fraction}, seed={seed} "
            f"gives {len(calibration)}: pass the dataset and the settings the model was trained with."
        )
    return kept, calibration


def image_dataset(items: Sequence[dict], deterministic, random_part=None, what: str = "input"):
    """The images of ``items`` alone (labels and masks play no part), cached after the ``deterministic`` transforms
    (:func:`~monai_mtlmad.data.loading.make_dataset`); files that fail are listed by name in one error."""
    from monai_mtlmad.data.loading import make_dataset

    return make_dataset([{"image": d["image"]} for d in items], deterministic, random_part, what=what, num_workers=0)


def add_fast_mode(
    model_path: str | Path,
    dataset_dir: str | Path,
    bmad_dataset: str | None = None,
    steps: int = 1000,
    calibration_images: int = 100,
    calibration_max_fraction: float = 0.2,
    seed: int = 0,
    device=None,
    output_path: str | Path | None = None,
    batch_size: int = 8,
    options: Mapping[str, Any] | None = None,
):
    """Distil the fast scoring mode into a trained model file (or replace the one it holds), without retraining.

    The training and calibration images are split as ``train.json`` split them (:func:`calibration_split` with the
    same ``calibration_images``, ``calibration_max_fraction`` and ``seed``): the student learns from the training
    images (with the training augmentations) and calibrates on the calibration normals, which neither network saw.
    ``options`` are further keyword arguments of :func:`~monai_mtlmad.scoring.student.distill_student` (e.g.
    ``error_weight``, ``task_errors``, ``channels``).

    Returns:
        the scorer with its new student, written to ``output_path`` (default: ``model_path``, replaced atomically).

    Raises:
        ValueError: naming the file, when the split does not give the calibration images the model was calibrated on
            (another dataset, or other split settings than training used).
    """
    from monai.data import DataLoader

    from monai_mtlmad.engines.workflows import batch_images
    from monai_mtlmad.scoring.scorer import AnomalyScorer
    from monai_mtlmad.scoring.student import distill_student

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scorer = AnomalyScorer.load(model_path, map_location=device)
    kept, calibration = split_as_trained(scorer, model_path, dataset_dir, bmad_dataset, calibration_images,
                                         calibration_max_fraction, seed)
    deterministic, random_part = scorer.preprocessing()
    training = DataLoader(image_dataset(kept, deterministic, random_part, "training"), batch_size=batch_size,
                          shuffle=True, generator=torch.Generator().manual_seed(seed))
    normals = DataLoader(image_dataset(calibration, deterministic, what="calibration"), batch_size=batch_size)
    distill_student(scorer, (batch_images(b, "image", device) for b in training),
                    [batch_images(b, "image", device) for b in normals], steps=steps, seed=seed, **(options or {}))
    out = Path(output_path or model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    scorer.save(out)
    logger.info(f"{out}: fast mode distilled in {steps} steps ({scorer.student.training['synthetic_check']})")
    return scorer


def check_image_size(image_size: int | Sequence[int], spatial_dims: int, size_divisor: int) -> None:
    """Refuse, before any image is read, an ``image_size`` the network cannot take (otherwise the error comes at the
    first training or scoring step, after the whole dataset was loaded).

    Args:
        image_size: the side, or one side per spatial dimension.
        spatial_dims: 2 or 3.
        size_divisor: what every side must be a multiple of (the product of the network's strides,
            ``MTLMoENet.size_divisor``). Configs pass the product of ``network_def#strides``: instantiating the
            network before ``set_determinism`` would draw its initial weights unseeded.

    Raises:
        ValueError: naming the sides and the nearest sizes the network takes.
    """
    from monai.utils import ensure_tuple_rep

    sides = [int(s) for s in ensure_tuple_rep(image_size, spatial_dims)]
    bad = sorted({s for s in sides if s % size_divisor})
    if bad:
        near = sorted({m for s in bad for m in (s // size_divisor * size_divisor, (s // size_divisor + 1) * size_divisor)
                       if m > 0})
        raise ValueError(f"image_size {image_size}: every side must be a multiple of {size_divisor} (the network "
                         f"downsamples by {size_divisor}); {', '.join(map(str, bad))} is not. Nearest: "
                         f"{' or '.join(map(str, near))}.")


def guard_training_output(output_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Before training writes anything: an ``output_dir`` that already holds a trained model or checkpoints is
    continued with ``resume``, or, with ``overwrite``, its earlier results are moved into ``previous/<time>/``;
    otherwise training refuses to start, so nothing written before is lost."""
    import torch.distributed as dist

    resume, overwrite = as_flag(resume, "resume"), as_flag(overwrite, "overwrite")
    if dist.is_initialized() and dist.get_rank() > 0:
        return  # rank 0 decides and moves; the others write nothing
    output_dir = Path(output_dir)
    earlier = [n for n in ("models", "checkpoints") if any((output_dir / n).glob("*.pt"))]
    if not earlier or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a training run ({' and '.join(earlier)}): continue it with --resume true, "
            "keep it and start over with --overwrite true (it moves to previous/), or choose another --output_dir."
        )
    runs = [p.name for p in output_dir.glob("events.out.tfevents.*")]
    keep_previous(output_dir, ["models", "checkpoints", "metrics.json", "scores.csv", "overlays", *runs])
