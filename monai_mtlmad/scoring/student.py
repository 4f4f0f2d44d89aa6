# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Fast scoring mode: one plain network, distilled from the multi-task scorer, maps an image to its task maps.

The full scorer runs the learner once per deterministic task view (complementary inpainting masks, shifted jigsaw
grids, every pose, the pseudo-label masks, the pseudo-anomaly view): about twenty forward passes per image. The
student is a MONAI ``UNet`` that predicts, in one pass, every dense task's smoothed, normalised map (what the full
scorer fuses), trained to reproduce them on the training normals and on copies of them with synthetic anomalies
(the pseudo-anomaly task's, when the learner has it, and the unseen lesion family of
:func:`~monai_mtlmad.scoring.fusion.insert_validation_lesions`), so that it learns what the teacher says about
anomalous tissue too. Its maps are fused with the teacher's map weights; the image score is the fused map's
quantile over the foreground (``map_quantile``).

Calibration is the student's own: its scores on the calibration normals (never used to train it, nor the teacher)
set its threshold, p-values and pixel threshold; the teacher's normalisation statistics only fix the scale of the
student's targets.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from monai_mtlmad.networks.padding import forward_padded
from monai_mtlmad.scoring.fusion import insert_validation_lesions, pixel_auroc
from monai_mtlmad.transforms.foreground import foreground_mask

if TYPE_CHECKING:
    from monai_mtlmad.scoring.scorer import AnomalyScorer

__all__ = ["DistilledStudent", "distill_student"]

logger = logging.getLogger(__name__)


class DistilledStudent:
    """A single-pass network that predicts the full scorer's normalised dense-task maps, and its calibration.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        task_names: the dense tasks whose maps it predicts (one output channel each, in this order).
        map_weights: fusion weight of each task's map (the teacher's).
        channels: UNet channels per level (strides of 2 between levels).
        num_res_units: residual units per UNet block.
        quantile: the fused-map quantile over the foreground that is the image score.
        roi_size: sliding-window size for images larger than the training size; None runs whole images.
        overlap: sliding-window overlap (Gaussian blending).
        batch_size: windows per network pass.

    Shapes:
        ``maps(images (B, C, *spatial)) -> {task: (B, 1, *spatial)}``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        task_names: Sequence[str],
        map_weights: Mapping[str, float],
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
        quantile: float = 0.99,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        batch_size: int = 8,
    ) -> None:
        if not task_names:
            raise ValueError("the fast mode needs at least one dense task (it predicts their maps).")
        self.config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "task_names": list(task_names),
            "map_weights": {n: float(map_weights[n]) for n in task_names},
            "channels": [int(c) for c in channels],
            "num_res_units": num_res_units,
            "quantile": quantile,
            "roi_size": list(roi_size) if roi_size is not None else None,
            "overlap": overlap,
            "batch_size": batch_size,
        }
        self.task_names = list(task_names)
        self.map_weights = self.config["map_weights"]
        self.quantile, self.overlap, self.batch_size = quantile, overlap, batch_size
        self.roi_size = tuple(roi_size) if roi_size is not None else None
        self.net = UNet(
            spatial_dims, in_channels, len(task_names), channels=channels, strides=[2] * (len(channels) - 1),
            num_res_units=num_res_units,
        )
        self.size_divisor = 2 ** (len(channels) - 1)
        self.normal_scores: torch.Tensor | None = None  # sorted map_quantile scores of the calibration normals
        self.threshold: float | None = None
        self.pixel_threshold: float | None = None
        self.calibration: dict[str, Any] = {}  # images, fpr, pixel_fpr
        self.training: dict[str, Any] = {}  # steps, images, final loss, fidelity on held-out images

    def to(self, device) -> DistilledStudent:
        self.net.to(device)
        return self

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_padded(self.net, x, self.size_divisor)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised task maps ``(B, T, *spatial)`` of ``images (B, C, *spatial)`` (sliding windows for images
        larger than ``roi_size``)."""
        images = images.to(self._device()).float()
        if self.roi_size is None or tuple(images.shape[2:]) == self.roi_size:
            return torch.cat([self._forward(c) for c in images.split(self.batch_size)])
        inferer = SlidingWindowInferer(self.roi_size, sw_batch_size=self.batch_size, overlap=self.overlap, mode="gaussian")
        return inferer(images, self._forward)

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: (B, 1, *spatial)}`` predicted normalised maps."""
        self.net.eval()
        out = self.predict(images)
        return {n: out[:, i : i + 1] for i, n in enumerate(self.task_names)}

    def fuse(self, task_maps: Mapping[str, torch.Tensor], foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores (B,), fused foreground-masked map (B, 1, *spatial))``, as the full scorer fuses."""
        from monai_mtlmad.scoring.scorer import foreground_quantile

        total = sum(self.map_weights[n] for n in self.task_names)
        fused = sum(self.map_weights[n] * task_maps[n] for n in self.task_names) / max(total, 1e-12)
        return foreground_quantile(fused, foreground.to(fused.device), self.quantile)

    @torch.no_grad()
    def calibrate(self, normal_batches: Iterable[torch.Tensor], rim: float, fpr: float, pixel_fpr: float,
                  seed: int = 0) -> DistilledStudent:
        """Threshold at ``fpr``, the normal score distribution (p-values) and the pixel threshold at ``pixel_fpr``
        from the student's own scores of normal images it was not trained on."""
        from monai_mtlmad.scoring.scorer import _sample, _subset

        g = torch.Generator().manual_seed(seed)
        scores, pixels = [], []
        batches = [b for b in normal_batches]
        n = sum(b.shape[0] for b in batches)
        if n == 0:
            raise ValueError("the fast mode needs calibration normals; none were given.")
        per_image = max(1, 2_000_000 // n)
        for images in batches:
            fg = foreground_mask(images, rim).to(self._device())
            s, fused = self.fuse(self.maps(images), fg)
            scores.append(s.float().cpu())
            pixels += [_subset(m[f].float().cpu(), per_image, g) for m, f in zip(fused, fg)]
        self.normal_scores = torch.sort(torch.cat(scores)).values
        self.threshold = float(torch.quantile(self.normal_scores, 1 - fpr))
        self.pixel_threshold = float(torch.quantile(_sample(torch.cat(pixels)), 1 - pixel_fpr))
        self.calibration = {"images": n, "fpr": fpr, "pixel_fpr": pixel_fpr}
        return self

    def p_values(self, score: torch.Tensor) -> torch.Tensor:
        """Conformal p-values of ``score`` against the student's calibration normals (see
        :func:`~monai_mtlmad.scoring.scorer.conformal_p_values`)."""
        from monai_mtlmad.scoring.scorer import conformal_p_values

        return conformal_p_values(self.normal_scores, score)

    def state_dict(self) -> dict:
        return {
            "config": dict(self.config),
            "network": self.net.state_dict(),
            "normal_scores": self.normal_scores,
            "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold,
            "calibration": dict(self.calibration),
            "training": dict(self.training),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> DistilledStudent:
        student = cls(**state["config"])
        student.net.load_state_dict(state["network"])
        for key in ("normal_scores", "threshold", "pixel_threshold", "calibration", "training"):
            setattr(student, key, state[key])
        return student


def _anomalous_copies(scorer: AnomalyScorer, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Copies of ``images`` with synthetic anomalies: half from the pseudo-anomaly task (when the learner has it),
    half (or all) from the unseen lesion family."""
    fg = foreground_mask(images, scorer.rim)
    out = insert_validation_lesions(images.float(), fg, g)[0]
    task = next((t for t in scorer.tasks if t.name == "pseudo_anomaly"), None)
    if task is not None:
        half = torch.rand(images.shape[0], generator=g) < 0.5
        if half.any():
            out[half] = task.training_views(images[half].float(), g).inputs.to(out.dtype)
    return out


@torch.no_grad()
def _teacher_maps(scorer: AnomalyScorer, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """The full scorer's normalised, smoothed dense-task maps ``(B, T, *spatial)`` (float16 to keep a pool small)."""
    raw = scorer.raw(images)
    _, task_maps = scorer._normalise(raw)
    return torch.cat([task_maps[n] for n in names], 1).half().cpu()


def distill_student(
    scorer: AnomalyScorer,
    training_images: Iterable[torch.Tensor],
    calibration_images: Iterable[torch.Tensor],
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 2e-3,
    max_images: int = 256,
    channels: Sequence[int] = (16, 32, 64, 128),
    seed: int = 0,
    anomalous_copies: int = 3,
) -> DistilledStudent:
    """Distil a calibrated scorer into a :class:`DistilledStudent` and calibrate the student.

    The teacher maps are computed once for a pool of at most ``max_images`` training images, each kept as it is and
    as ``anomalous_copies`` copies with synthetic anomalies; the student then trains for ``steps`` steps of
    ``batch_size`` images on the pool (smooth-L1 on the foreground, AdamW, cosine-decayed ``lr``). One pool image in
    eight is held out to report the student's fidelity (the correlation of its fused maps with the teacher's, and
    its mean absolute error). Then both are compared where no one trained: the calibration normals against copies
    of them with a lesion of the unseen family (image AUROC of ``map_quantile`` and pixel AUROC, teacher and
    student; ``student.training["synthetic_check"]``), with a warning when the student's image AUROC falls more than
    0.02 below the teacher's.

    Args:
        scorer: a calibrated :class:`~monai_mtlmad.scoring.AnomalyScorer` (the teacher).
        training_images: batches ``(B, C, *spatial)`` of the images the learner trained on (normals).
        calibration_images: batches of the calibration normals (the student's threshold and p-values).
        steps: student training steps.
        batch_size: images per step.
        lr: peak learning rate.
        max_images: training images in the pool (each also gets an anomalous copy).
        channels: the student UNet's channels.
        seed: pool order, synthetic anomalies, initialisation.
        anomalous_copies: copies of each pool image with a synthetic anomaly (3 measured better than 1: more of the
            teacher's responses to anomalous tissue to learn from).

    Returns:
        the calibrated student (also set as ``scorer.student``).
    """
    if not scorer.stats:
        raise RuntimeError("distil a calibrated scorer: call scorer.fit(calibration normals) first.")
    names = [t.name for t in scorer.tasks if t.kind == "dense"]
    weights = scorer.fitted_map_weights or {n: scorer.weights[n] for n in names}
    device = scorer._device()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    inputs, targets, fgs, kept = [], [], [], 0
    for images in training_images:
        images = images[: max_images - kept].detach().float().cpu()
        if images.shape[0] == 0:
            break
        kept += images.shape[0]
        for view in (images, *[_anomalous_copies(scorer, images, g) for _ in range(anomalous_copies)]):
            inputs.append(view)
            targets.append(_teacher_maps(scorer, view, names))
            fgs.append(foreground_mask(view, scorer.rim))
    if not inputs:
        raise ValueError("distillation needs training images; none were given.")
    inputs, targets, fgs = torch.cat(inputs), torch.cat(targets), torch.cat(fgs)
    n = inputs.shape[0]
    order = torch.randperm(n, generator=g)
    held = order[: max(1, n // 8)] if n >= 8 else order[:0]
    train = order[held.numel():]
    spatial = tuple(inputs.shape[2:])
    roi = scorer.roi_size
    student = DistilledStudent(
        scorer.net.spatial_dims, scorer.net.in_channels, names, weights, channels=channels, quantile=scorer.quantile,
        roi_size=roi, overlap=scorer.overlap, batch_size=scorer.batch_size,
    ).to(device)
    opt = torch.optim.AdamW(student.net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1))))
    student.net.train()
    losses = []
    for step in range(steps):
        idx = train[torch.randint(train.numel(), (min(batch_size, train.numel()),), generator=g)]
        x, y, fg = inputs[idx].to(device), targets[idx].to(device).float(), fgs[idx].to(device).float()
        if roi is not None and spatial != roi:  # train on windows of the training size, as the student scores
            x, y, fg = _random_window(x, y, fg, roi, g)
        pred = student._forward(x)
        # the foreground carries the signal; background pixels count a little so the output stays tame there
        weight = fg + 0.05 * (1 - fg)
        loss = (F.smooth_l1_loss(pred, y, reduction="none") * weight).sum() / (weight.sum() * y.shape[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    fidelity = _fidelity(student, inputs[held], targets[held].float(), fgs[held], weights) if held.numel() else {}
    student.training = {
        "steps": steps, "batch_size": batch_size, "pool_images": n, "training_images": kept,
        "final_loss": float(sum(losses[-20:]) / max(len(losses[-20:]), 1)) if losses else None, **fidelity,
    }
    calibration = [b.detach().float().cpu() for b in calibration_images]
    student.calibrate(calibration, scorer.rim, scorer.fpr, scorer.pixel_fpr, seed)
    student.training["synthetic_check"] = check = _synthetic_check(scorer, student, calibration, g)
    logger.info(f"fast mode distilled in {steps} steps on {n} images: {student.training}")
    if check["student_image_auroc"] < check["teacher_image_auroc"] - 0.02:
        warnings.warn(
            f"the fast mode separates synthetic lesions from normals less well than the full scorer (image AUROC "
            f"{check['student_image_auroc']:.3f} against {check['teacher_image_auroc']:.3f}): expect lower image-level "
            "quality in the fast mode (more --fast_steps may help; the full mode stays available with --fast false).",
            stacklevel=2,
        )
    scorer.student = student
    return student


@torch.no_grad()
def _synthetic_check(scorer: AnomalyScorer, student: DistilledStudent, normals: list[torch.Tensor],
                     g: torch.Generator) -> dict[str, float]:
    """Teacher and student on the calibration normals and on copies of them with one unseen-family lesion each:
    image AUROC of ``map_quantile`` and pixel AUROC of the fused maps, for both."""
    from monai_mtlmad.metrics.functional import roc_auc

    scores: dict[str, list] = {"teacher": [], "student": []}
    maps: dict[str, list] = {"teacher": [], "student": []}
    masks, fgs, labels = [], [], []
    fast, scorer.fast = scorer.fast, False  # the teacher scores with every task view
    try:
        for images in normals:
            fg = foreground_mask(images, scorer.rim)
            lesioned, lesion = insert_validation_lesions(images, fg, g)
            for x, mask, label in ((images, torch.zeros_like(lesion), 0), (lesioned, lesion, 1)):
                full = scorer.score(x, foreground=fg)
                s, fused = student.fuse(student.maps(x), fg)
                scores["teacher"].append(full.image_scores["map_quantile"].cpu())
                scores["student"].append(s.cpu())
                maps["teacher"].append(full.map.cpu())
                maps["student"].append(fused.cpu())
                masks.append(mask)
                fgs.append(fg)
                labels += [label] * x.shape[0]
    finally:
        scorer.fast = fast
    labels_t, masks_t, fgs_t = torch.tensor(labels), torch.cat(masks), torch.cat(fgs)
    result = {}
    for who in ("teacher", "student"):
        result[f"{who}_image_auroc"] = roc_auc(torch.cat(scores[who]), labels_t)
        result[f"{who}_pixel_auroc"] = pixel_auroc(torch.cat(maps[who]), masks_t, fgs_t)
    return {k: round(float(v), 4) for k, v in result.items()}


def _random_window(x, y, fg, roi, g):
    starts = [int(torch.randint(s - r + 1, (1,), generator=g)) for s, r in zip(x.shape[2:], roi)]
    sl = (..., *[slice(s, s + r) for s, r in zip(starts, roi)])
    return x[sl], y[sl], fg[sl]


@torch.no_grad()
def _fidelity(student: DistilledStudent, inputs, targets, fgs, weights) -> dict[str, float]:
    """How closely the student's fused maps follow the teacher's on held-out pool images (foreground pixels)."""
    pred = student.predict(inputs).cpu()
    total = sum(weights[n] for n in student.task_names)
    w = torch.tensor([weights[n] for n in student.task_names]).view(1, -1, *([1] * (inputs.ndim - 2))) / total
    a, b = (pred * w).sum(1, keepdim=True)[fgs], (targets * w).sum(1, keepdim=True)[fgs]
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    return {"heldout_images": int(inputs.shape[0]), "heldout_map_correlation": float(corr),
            "heldout_map_mae": float((a - b).abs().mean())}
