# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Fast scoring mode: one plain network, distilled from the multi-task scorer, maps an image to its task maps.

The full scorer runs the learner once per deterministic task view (complementary inpainting masks, shifted jigsaw
grids, every pose, the pseudo-label masks, the pseudo-anomaly view): about twenty forward passes per image. The
student is a MONAI ``UNet`` that predicts, in one pass, every dense task's smoothed, normalised map (what the full
scorer fuses) and, in one more channel per task, a map whose foreground mean is that task's normalised image error
(so global tasks such as orientation, whose evidence is no map, still count in one pass). It is trained to reproduce
them on the training normals and on copies of them with synthetic anomalies (the pseudo-anomaly task's, when the
learner has it, and the unseen lesion family of :func:`~monai_mtlmad.scoring.fusion.insert_validation_lesions`), so
that it learns what the teacher says about anomalous tissue too. Its maps are fused with the teacher's map weights.

From these it builds the full scorer's feature vector (task errors, task-map quantiles, fused-map quantile) and the
same image scores (:func:`~monai_mtlmad.scoring.fusion.image_scores`), so the fast mode decides by the image score
the full mode uses. Calibration is the student's own: its features of the calibration normals (never used to train
it, nor the teacher), and of the same normals with an unseen-family lesion, choose its synthetic-lesion feature
weights, fit its one-class model (cross-fitted) and set its thresholds, p-values and pixel threshold; the teacher's
normalisation statistics only fix the scale of the student's targets.
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
from monai_mtlmad.scoring.fusion import (
    cross_fitted_one_class,
    feature_names,
    feature_vectors,
    image_scores,
    insert_validation_lesions,
    normal_thresholds,
    pixel_auroc,
    synthetic_feature_weights,
)
from monai_mtlmad.transforms.foreground import foreground_mask, foreground_mean, random_subset

if TYPE_CHECKING:
    from monai_mtlmad.scoring.scorer import AnomalyScorer

__all__ = ["DistilledStudent", "distill_student", "FAST_MODE_TOLERANCE"]

logger = logging.getLogger(__name__)

# how far the student's image AUROC on the distillation's synthetic check may fall below the teacher's before the
# fast mode stops being the default (the check is paired: the same normals and lesions for both)
FAST_MODE_TOLERANCE = 0.02


class DistilledStudent:
    """A single-pass network that predicts the full scorer's normalised dense-task maps and task errors, and its
    calibration.

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
        score_tasks: the tasks whose normalised image error it predicts (one more channel each, after the maps: the
            error is ``sinh`` of the channel's foreground mean); empty: maps only, and ``map_quantile`` is its only
            image score.
        task_weights: each score task's weight in ``task_mean`` (the teacher's ``weights``); default equal.
        feature_map_weights: the mixture of the maps whose quantile is the ``fused:map`` image feature (the
            teacher's); None: ``map_weights``.

    Shapes:
        ``maps(images (B, C, *spatial)) -> {task: (B, 1, *spatial)}``;
        ``evidence(images, foreground (B, 1, *spatial)) -> ({task: (B,)}, {task: (B, 1, *spatial)})``.
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
        score_tasks: Sequence[str] = (),
        task_weights: Mapping[str, float] | None = None,
        feature_map_weights: Mapping[str, float] | None = None,
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
            "score_tasks": list(score_tasks),
            "task_weights": {n: float((task_weights or {}).get(n, 1.0)) for n in score_tasks},
            "feature_map_weights": {n: float((feature_map_weights or map_weights)[n]) for n in task_names},
        }
        self.task_names = list(task_names)
        self.score_tasks = list(score_tasks)
        self.map_weights, self.task_weights = self.config["map_weights"], self.config["task_weights"]
        self.feature_map_weights = self.config["feature_map_weights"]
        self.quantile, self.overlap, self.batch_size = quantile, overlap, batch_size
        self.roi_size = tuple(roi_size) if roi_size is not None else None
        self.net = UNet(
            spatial_dims, in_channels, len(task_names) + len(score_tasks), channels=channels,
            strides=[2] * (len(channels) - 1), num_res_units=num_res_units,
        )
        self.size_divisor = 2 ** (len(channels) - 1)
        self.normal_scores: dict[str, torch.Tensor] = {}  # per image score, sorted scores of the calibration normals
        self.thresholds: dict[str, float | None] = {}  # per image score, at the scorer's fpr (None: too few normals)
        self.pixel_threshold: float | None = None
        self.feature_weights: dict[str, float] = {}  # synthetic-lesion weights of its own features
        self.one_class: dict[str, torch.Tensor] = {}
        self.calibration: dict[str, Any] = {}  # images, fpr, pixel_fpr, feature AUROCs on synthetic lesions
        self.training: dict[str, Any] = {}  # steps, images, final loss, fidelity on held-out images

    def to(self, device) -> DistilledStudent:
        self.net.to(device)
        return self

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_padded(self.net, x, self.size_divisor)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Every output ``(B, T + S, *spatial)`` of ``images (B, C, *spatial)``: the T normalised task maps, then the
        S task-error channels, ``asinh`` of the error over the foreground (sliding windows for images larger than
        ``roi_size``)."""
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

    @torch.no_grad()
    def evidence(self, images: torch.Tensor, foreground: torch.Tensor) -> tuple[dict, dict]:
        """Predicted ``({task: normalised image error (B,)}, {task: normalised map (B, 1, *spatial)})``."""
        self.net.eval()
        out = self.predict(images)
        t = len(self.task_names)
        task_maps = {n: out[:, i : i + 1] for i, n in enumerate(self.task_names)}
        errors = _from_asinh(foreground_mean(out[:, t:], foreground.to(out.device)))
        task_scores = {n: errors[:, i] for i, n in enumerate(self.score_tasks)}
        return task_scores, task_maps

    @property
    def feature_names(self) -> list[str]:
        """The feature vector's entries, as the full scorer names them."""
        return feature_names(self.score_tasks, self.task_names)

    def features(self, task_scores: Mapping, task_maps: Mapping, foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (B, F) in :attr:`feature_names` order, fused foreground-masked map)``
        (:func:`~monai_mtlmad.scoring.fusion.feature_vectors`)."""
        fg = foreground.to(next(iter(task_maps.values())).device)
        return feature_vectors({n: task_scores[n] for n in self.score_tasks}, {n: task_maps[n] for n in self.task_names},
                               fg, self.map_weights, self.quantile, self.feature_map_weights)

    def image_scores(self, features: torch.Tensor, one_class: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every image score the student can give from its features (``map_quantile`` always; ``task_mean``,
        ``one_class`` and ``synthetic`` when it predicts task errors and was calibrated with them)."""
        if not self.score_tasks:
            return {"map_quantile": features[:, -1]}
        return image_scores(features, self.feature_names, self.task_weights, self.feature_weights, self.one_class,
                            one_class)

    @torch.no_grad()
    def score(self, images: torch.Tensor, foreground: torch.Tensor) -> tuple[dict, dict, dict, torch.Tensor]:
        """``(image scores {name: (B,)}, task errors {task: (B,)}, task maps, fused map (B, 1, *spatial))``."""
        task_scores, task_maps = self.evidence(images, foreground)
        features, fused = self.features(task_scores, task_maps, foreground)
        scores = {k: v.to(fused.device) for k, v in self.image_scores(features).items()}
        return scores, task_scores, task_maps, fused

    @torch.no_grad()
    def calibrate(self, normal_batches: Iterable[torch.Tensor], rim: float, fpr: float, pixel_fpr: float,
                  seed: int = 0, folds: int = 5, feature_scale: str = "raw") -> DistilledStudent:
        """The student's own calibration from normal images it was not trained on: with task errors, its
        synthetic-lesion feature weights (each normal also scored with an unseen-family lesion; ``feature_scale`` as
        the full scorer's, :func:`~monai_mtlmad.scoring.fusion.synthetic_feature_weights`) and its one-class
        model (cross-fitted over ``folds``); the normal distribution and the threshold at ``fpr`` of every image
        score (p-values), and the pixel threshold at ``pixel_fpr``."""
        g = torch.Generator().manual_seed(seed)
        batches = [b for b in normal_batches]
        n = sum(b.shape[0] for b in batches)
        if n == 0:
            raise ValueError("the fast mode needs calibration normals; none were given.")
        per_image = max(1, 2_000_000 // n)
        features, lesioned, pixels = [], [], []
        for images in batches:
            fg = foreground_mask(images, rim).to(self._device())
            feats, fused = self.features(*self.evidence(images, fg), fg)
            features.append(feats)
            pixels += [random_subset(m[f].float().cpu(), per_image, g) for m, f in zip(fused, fg)]
            if self.score_tasks:
                copies = insert_validation_lesions(images.float().cpu(), fg.cpu(), g)[0]
                lesioned.append(self.features(*self.evidence(copies, fg), fg)[0])
        features = torch.cat(features)
        self.calibration = {"images": n, "fpr": fpr, "pixel_fpr": pixel_fpr}
        one_class = None
        if self.score_tasks:
            aurocs, self.feature_weights = synthetic_feature_weights(features, torch.cat(lesioned), self.feature_names,
                                                                     feature_scale)
            self.calibration.update(image_auroc=aurocs, feature_scale=feature_scale)
            fold_of = torch.randperm(n, generator=g) % max(1, min(folds, n))
            self.one_class, one_class = cross_fitted_one_class(features, fold_of)
        scores = self.image_scores(features, one_class)
        self.normal_scores, self.thresholds, self.pixel_threshold = normal_thresholds(scores, pixels, fpr, pixel_fpr)
        return self

    def keeps_quality(self, tolerance: float = FAST_MODE_TOLERANCE) -> bool:
        """Whether the distillation's synthetic check found the student's image AUROC within ``tolerance`` of the
        full scorer's (True when no check was recorded)."""
        check = self.training.get("synthetic_check") or {}
        if "student_image_auroc" not in check:
            return True
        return check["student_image_auroc"] >= check["teacher_image_auroc"] - tolerance

    def p_values(self, score: torch.Tensor, image_score: str = "map_quantile") -> torch.Tensor:
        """Conformal p-values of ``score`` (an ``image_score``) against the student's calibration normals (see
        :func:`~monai_mtlmad.scoring.scorer.conformal_p_values`)."""
        from monai_mtlmad.scoring.scorer import conformal_p_values

        return conformal_p_values(self.normal_scores.get(image_score), score)

    def state_dict(self) -> dict:
        return {
            "config": dict(self.config),
            "network": self.net.state_dict(),
            **{key: getattr(self, key) for key in self._CALIBRATION},
            "training": dict(self.training),
        }

    _CALIBRATION = ("normal_scores", "thresholds", "pixel_threshold", "feature_weights", "one_class", "calibration")

    @classmethod
    def from_state(cls, state: Mapping) -> DistilledStudent:
        student = cls(**state["config"])
        student.net.load_state_dict(state["network"])
        if "thresholds" not in state:  # a student of an earlier version: maps only, decided by map_quantile
            state = {**state, "normal_scores": {"map_quantile": state["normal_scores"]},
                     "thresholds": {"map_quantile": state["threshold"]}, "feature_weights": {}, "one_class": {}}
        for key in (*cls._CALIBRATION, "training"):
            setattr(student, key, state[key])
        return student


def _from_asinh(x: torch.Tensor, limit: float = 12.0) -> torch.Tensor:
    """A task error from the student's ``asinh`` of it, bounded (|error| <= sinh(12), about 8e4 normal scales): far
    outside what it trained on, the linear head can extrapolate to values whose ``sinh`` overflows."""
    return torch.sinh(x.clamp(-limit, limit))


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
def _teacher_targets(scorer: AnomalyScorer, images: torch.Tensor, names: Sequence[str], score_names: Sequence[str],
                     foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The full scorer's normalised, smoothed dense-task maps ``(B, T, *spatial)`` (float16 to keep a pool small) and
    normalised task errors over the foreground ``(B, S)``, as :meth:`AnomalyScorer.score` computes them."""
    raw = scorer.raw(images, foreground=foreground)
    task_scores, task_maps = scorer._normalise(raw)
    maps = torch.cat([task_maps[n] for n in names], 1).half().cpu()
    scores = torch.stack([task_scores[n].float().cpu() for n in score_names], 1) if score_names else torch.zeros(len(images), 0)
    return maps, scores


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
    task_errors: bool = True,
    error_weight: float = 0.2,
) -> DistilledStudent:
    """Distil a calibrated scorer into a :class:`DistilledStudent` and calibrate the student.

    The teacher maps are computed once for a pool of at most ``max_images`` training images, each kept as it is and
    as ``anomalous_copies`` copies with synthetic anomalies; the student then trains for ``steps`` steps of
    ``batch_size`` images on the pool (smooth-L1 on the foreground, AdamW, cosine-decayed ``lr``). One pool image in
    eight is held out to report the student's fidelity (the correlation of its fused maps with the teacher's, and
    its mean absolute error). Then both are compared where no one trained: the calibration normals against copies
    of them with a lesion of the unseen family (image AUROC of the score each decides by, and pixel AUROC, teacher
    and student; ``student.training["synthetic_check"]``), with a warning when the student's image AUROC falls more than
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
        task_errors: also predict every task's image error, so that the fast mode has the full mode's feature vector
            and image scores (False: maps only, deciding by ``map_quantile``, as before version 0.7).
        error_weight: weight of the task-error loss beside the maps' (errors are regressed as ``asinh(error)``: the
            errors of anomalous copies run to tens of normal scales, and unweighted and uncompressed they swamped the
            maps, held-out map correlation 0.66-0.74 against 0.91-0.93 without them).

    Returns:
        the calibrated student (also set as ``scorer.student``).
    """
    if not scorer.stats:
        raise RuntimeError("distil a calibrated scorer: call scorer.fit(calibration normals) first.")
    names = [t.name for t in scorer.tasks if t.kind == "dense"]
    score_names = [t.name for t in scorer.tasks] if task_errors else []
    weights = scorer.fitted_map_weights or {n: scorer.weights[n] for n in names}
    device = scorer._device()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    inputs, targets, errors, fgs, kept = [], [], [], [], 0
    for images in training_images:
        images = images[: max_images - kept].detach().float().cpu()
        if images.shape[0] == 0:
            break
        kept += images.shape[0]
        for view in (images, *[_anomalous_copies(scorer, images, g) for _ in range(anomalous_copies)]):
            fg = foreground_mask(view, scorer.rim)
            maps, scores = _teacher_targets(scorer, view, names, score_names, fg)
            inputs.append(view)
            targets.append(maps)
            errors.append(scores)
            fgs.append(fg.cpu())
    if not inputs:
        raise ValueError("distillation needs training images; none were given.")
    inputs, targets, errors, fgs = torch.cat(inputs), torch.cat(targets), torch.cat(errors), torch.cat(fgs)
    n = inputs.shape[0]
    order = torch.randperm(n, generator=g)
    held = order[: max(1, n // 8)] if n >= 8 else order[:0]
    train = order[held.numel():]
    spatial = tuple(inputs.shape[2:])
    roi = scorer.roi_size
    student = DistilledStudent(
        scorer.net.spatial_dims, scorer.net.in_channels, names, weights, channels=channels, quantile=scorer.quantile,
        roi_size=roi, overlap=scorer.overlap, batch_size=scorer.batch_size, score_tasks=score_names,
        task_weights={n: scorer.weights[n] for n in score_names},
        feature_map_weights=scorer.feature_map_weights or weights,
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
        out = student._forward(x)
        pred = out[:, : len(names)]
        # the foreground carries the signal; background pixels count a little so the output stays tame there
        weight = fg + 0.05 * (1 - fg)
        loss = (F.smooth_l1_loss(pred, y, reduction="none") * weight).sum() / (weight.sum() * y.shape[1])
        if score_names:  # a window's task errors are the whole image's: the global evidence is the image's
            err = foreground_mean(out[:, len(names) :], fg)
            loss = loss + error_weight * F.smooth_l1_loss(err, torch.asinh(errors[idx].to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    fidelity = _fidelity(student, inputs[held], targets[held].float(), errors[held], fgs[held]) if held.numel() else {}
    student.training = {
        "steps": steps, "batch_size": batch_size, "pool_images": n, "training_images": kept,
        "final_loss": float(sum(losses[-20:]) / max(len(losses[-20:]), 1)) if losses else None, **fidelity,
    }
    calibration = [b.detach().float().cpu() for b in calibration_images]
    student.calibrate(calibration, scorer.rim, scorer.fpr, scorer.pixel_fpr, seed, scorer.folds, scorer.feature_scale)
    student.training["synthetic_check"] = check = _synthetic_check(scorer, student, calibration, g)
    logger.info(f"fast mode distilled in {steps} steps on {n} images: {student.training}")
    if not student.keeps_quality():
        warnings.warn(
            f"the fast mode separates synthetic lesions from normals less well than the full scorer (image AUROC "
            f"{check['student_image_auroc']:.3f} against {check['teacher_image_auroc']:.3f}, "
            f"{check['student_image_score']}): the model file keeps it, but scores in the full mode unless the fast "
            "mode is asked for (--fast true); more --fast_steps may help.",
            stacklevel=2,
        )
    scorer.student = student
    return student


@torch.no_grad()
def _synthetic_check(scorer: AnomalyScorer, student: DistilledStudent, normals: list[torch.Tensor],
                     g: torch.Generator) -> dict[str, Any]:
    """Teacher and student on the calibration normals and on copies of them with one unseen-family lesion each:
    image AUROC of the image score each decides by in its mode, and pixel AUROC of the fused maps, for both."""
    from monai_mtlmad.metrics.functional import roc_auc

    name = scorer.image_score if scorer.image_score in student.thresholds else "map_quantile"
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
                fast_scores, _, _, fused = student.score(x, fg)
                scores["teacher"].append(full.image_scores[scorer.image_score].cpu())
                scores["student"].append(fast_scores[name].cpu())
                maps["teacher"].append(full.map.cpu())
                maps["student"].append(fused.cpu())
                masks.append(mask)
                fgs.append(fg)
                labels += [label] * x.shape[0]
    finally:
        scorer.fast = fast
    labels_t, masks_t, fgs_t = torch.tensor(labels), torch.cat(masks), torch.cat(fgs)
    result: dict[str, Any] = {"teacher_image_score": scorer.image_score, "student_image_score": name}
    for who in ("teacher", "student"):
        result[f"{who}_image_auroc"] = round(float(roc_auc(torch.cat(scores[who]), labels_t)), 4)
        result[f"{who}_pixel_auroc"] = round(float(pixel_auroc(torch.cat(maps[who]), masks_t, fgs_t)), 4)
    return result


def _random_window(x, y, fg, roi, g):
    starts = [int(torch.randint(s - r + 1, (1,), generator=g)) for s, r in zip(x.shape[2:], roi)]
    sl = (..., *[slice(s, s + r) for s, r in zip(starts, roi)])
    return x[sl], y[sl], fg[sl]


@torch.no_grad()
def _fidelity(student: DistilledStudent, inputs, targets, errors, fgs) -> dict[str, float]:
    """How closely the student follows the teacher on held-out pool images: the correlation and mean absolute
    difference of the fused maps (foreground pixels) and the mean absolute difference of the task errors' asinh."""
    pred = student.predict(inputs).cpu()
    t, weights = len(student.task_names), student.map_weights
    total = sum(weights[n] for n in student.task_names)
    w = torch.tensor([weights[n] for n in student.task_names]).view(1, -1, *([1] * (inputs.ndim - 2))) / total
    a, b = (pred[:, :t] * w).sum(1, keepdim=True)[fgs], (targets * w).sum(1, keepdim=True)[fgs]
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    out = {"heldout_images": int(inputs.shape[0]), "heldout_map_correlation": float(corr),
           "heldout_map_mae": float((a - b).abs().mean())}
    if student.score_tasks:
        err = foreground_mean(pred[:, t:], fgs)
        out["heldout_task_error_mae_asinh"] = float((err - torch.asinh(errors)).abs().mean())  # what it regresses
    return out
