# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""AnomalyScorer: a trained multi-task learner turned into a calibrated anomaly detector, and its model file.

How badly the learner solves each proxy task on an unmodified image (deterministic task views: complementary
inpainting masks, fixed jigsaw permutations, all poses) gives per-task image errors and per-pixel error maps.
Calibration on normal images only puts every task on the same robust scale: maps are smoothed first, then each
task's location (median) and scale (the larger of the MAD and the spread of the upper tail, with a floor relative
to the task's typical error, so a task solved almost perfectly on the calibration normals cannot swamp the fusion)
are taken over normal values. Fused maps are the weighted mean of the normalised task maps, restricted to the
foreground. Four image scores are calibrated from per-task evidence (:mod:`~monai_mtlmad.scoring.fusion`): a high
quantile of the fused map (default), the weighted mean of normalised task errors, a one-class Gaussian over the
per-task feature vector, and feature weights chosen on synthetic lesions put into the calibration normals.

Honest thresholds: the normal score distribution that sets the threshold at a chosen false-positive rate and the
p-values comes from cross-fitting: each calibration image is scored with normalisation statistics fitted on the
other folds, never on itself. Both image scores get their own distribution, so the threshold and p-values are on
the scale of the score in use. The threshold is conformal: an image is flagged exactly when its p-value is at most
``fpr``, so a new normal is flagged with probability at most ``fpr``; with fewer than ``1 / fpr - 1`` calibration
normals (19 at 5 %) none is rare enough, and no image is flagged. The F1-optimal threshold is available when
labelled anomalies are.

The model file (:meth:`AnomalyScorer.save`) describes itself: network arguments, task specs, preprocessing, scorer
settings and calibration, the package version and the training epoch; :meth:`AnomalyScorer.load` rebuilds a ready
detector from it alone. No Ignite here: engines call this.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import nan
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.networks.layers import GaussianFilter

from monai_mtlmad.metrics.functional import f1_max, roc_auc
from monai_mtlmad.networks.mtl_moe_net import MTLMoENet
from monai_mtlmad.safe_io import load_checked, save_checked
from monai_mtlmad.scoring.fusion import (
    FEATURE_SCALES,
    MAP_SELECTIONS,
    MAP_WEIGHTINGS,
    auroc_weights,
    cross_fitted_one_class,
    feature_names,
    feature_vectors,
    fewest_calibration_normals,
    image_scores,
    image_thresholds,
    insert_validation_lesions,
    normal_thresholds,
    pixel_sample,
    synthetic_feature_weights,
)
from monai_mtlmad.scoring.student import DistilledStudent
from monai_mtlmad.transforms.foreground import (  # foreground_quantile, upper_quantile: re-exported, as before
    foreground_mask,
    foreground_mean,
    foreground_quantile,
    quantile_sample,
    random_subset,
    upper_quantile,
)
from monai_mtlmad.tasks.base import ProxyTask, create_tasks

__all__ = ["AnomalyScorer", "AnomalyScores", "foreground_quantile", "upper_quantile", "MODEL_FORMAT", "MIN_CALIBRATION_IMAGES"]

# /2: per-task feature fusion (one-class, synthetic-lesion weights), foreground image errors, shifted jigsaw grids
MODEL_FORMAT = "monai-mtlmad-model/2"
MIN_CALIBRATION_IMAGES = 30  # fewer calibration normals give thresholds and p-values too coarse to trust
_MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation
_Z99 = 2.3263  # the 99th percentile of a standard normal: (q99 - median) / this is its standard deviation
_REL_FLOOR = 0.05  # a scale is at least this fraction of the task's mean absolute error on normals


@dataclass
class AnomalyScores:
    """What :meth:`AnomalyScorer.score` returns for a batch of ``B`` images.

    Attributes:
        score: ``(B,)`` the image score in use (``image_score``; higher is more anomalous).
        image_scores: ``{name: (B,)}`` every calibrated image score (see ``AnomalyScorer.image_score``), the one in
            use among them.
        p_value: ``(B,)`` share of calibration normals (scored out of fold) scoring at least as high.
        anomalous: ``(B,)`` bool, ``score >= threshold``.
        task_scores: ``{task: (B,)}`` normalised per-task image errors (in units of the normal scale).
        map: ``(B, 1, *spatial)`` fused, foreground-masked map.
        task_maps: ``{task: (B, 1, *spatial)}`` smoothed, normalised maps of the dense tasks.
        foreground: ``(B, 1, *spatial)`` bool.
        expert_usage: routing while scoring this batch, ``{MoE block: {"selection"|"probability": (T, E)}}``,
            rows in task order (empty for the shared-block network).
    """

    score: torch.Tensor
    image_scores: dict[str, torch.Tensor]
    p_value: torch.Tensor
    anomalous: torch.Tensor
    task_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    map: torch.Tensor | None = None
    task_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    foreground: torch.Tensor | None = None
    expert_usage: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class AnomalyScorer:
    """Per-task errors -> calibrated, fused anomaly scores and maps.

    Args:
        net: the trained learner.
        tasks: its tasks, in the net's task order.
        weights: ``{task: weight}`` for fusion (maps: dense tasks; task-mean score: all tasks); default equal.
        sigma: Gaussian smoothing of the task maps before normalisation, in pixels/voxels (0 disables).
        quantile: the fused-map quantile, over the foreground, that is the image score.
        image_score: which image score decides (all are computed and reported, see :attr:`IMAGE_SCORES`):
            ``"synthetic"`` (the default: every task's image error and every map's quantile, weighted by how well
            each separates the calibration normals from the same normals with a synthetic lesion of a family no
            task trains on; needs ``synthetic_lesions``), ``"map_quantile"`` (``quantile`` over the foreground of the
            mixture of the maps with the user's ``weights``: the fused map unless ``map_weights`` reweighs it),
            ``"task_mean"`` (the weighted mean of normalised task errors) or ``"one_class"`` (one-sided Mahalanobis
            distance of the feature vector from the normals'). See :mod:`~monai_mtlmad.scoring.fusion`;
            the default was chosen on independent 200-image test sets of the harder heads and chests (NOTES_session6).
            None: ``"synthetic"``, or ``"map_quantile"`` without ``synthetic_lesions``.
        map_weights: the fused map's weights: ``"selected"`` (the default: chosen on the synthetic lesions by
            ``map_selection``; in 2D, the user's mixture of the maps less each map whose removal the synthetic lesions
            show to localise them better, :func:`~monai_mtlmad.scoring.fusion.select_map_weights`, which keeps the
            mixture unless a map only blurs the others), ``"equal"`` (the user's ``weights`` only) or
            ``"synthetic"`` (times each dense task's weight from its pixel AUROC on the synthetic lesions). The image
            features keep the user's mixture whatever the map shown. Chosen on the harder heads and chests
            (NOTES_session9, the rule NOTES_session11): the only weighting whose map is at least level with the best
            single task's on both. None: ``"selected"``, or ``"equal"`` without ``synthetic_lesions``.
        map_selection: how ``map_weights="selected"`` selects (:data:`~monai_mtlmad.scoring.fusion.MAP_SELECTIONS`):
            ``"backward"`` (elimination from the user's mixture) or ``"forward"`` (greedy forward selection,
            :func:`~monai_mtlmad.scoring.fusion.forward_select_map_weights`: it leans towards the one map that best
            localises the synthetic lesions). None: forward for 3D learners, backward for 2D ones. Forward localised
            the real lesions of the harder 3D heads better on average on every model measured (five), backward
            those of the harder 2D chests (NOTES_session11, NOTES_session17).
        synthetic_lesions: at calibration, also score every normal with a synthetic lesion of a family the learner
            never trained on (doubles the calibration time); needed by the ``"synthetic"`` options.
        synthetic_copies: lesioned copies of each calibration normal (each one more scoring pass over the normals):
            more copies, less noise in the synthetic-lesion AUROCs that weigh the features.
        feature_scale: ``"raw"`` or ``"normal_std"``: the ``"synthetic"`` score's features as they are, or each divided
            by its spread over the calibration normals (:func:`~monai_mtlmad.scoring.fusion.synthetic_feature_weights`).
        rim: foreground erosion as a fraction of the image side (strip skull and scalp on brain MRI).
        fpr: false-positive rate on calibration normals that sets the default threshold.
        pixel_fpr: share of normal foreground pixels above the pixel threshold (anomaly segmentation, map pictures).
        folds: cross-fitting folds of the calibration normals (see the module docstring).
        roi_size: sliding-window size for images larger than the training size (3D volumes); None runs whole.
        overlap: sliding-window overlap (Gaussian blending).
        batch_size: images per network pass.
        preprocessing: keyword arguments of :func:`monai_mtlmad.data.preprocessing` (besides ``spatial_dims``,
            ``channels``, ``rim`` and ``with_mask``, which come from the network and the scorer) that turn an input
            file into what this scorer expects; stored in the model file, so that a loaded detector preprocesses as
            in training. None: the scorer is only used on tensors.
    """

    IMAGE_SCORES = ("map_quantile", "task_mean", "one_class", "synthetic")

    def __init__(
        self,
        net: MTLMoENet,
        tasks: Sequence[ProxyTask],
        weights: Mapping[str, float] | None = None,
        sigma: float = 2.0,
        quantile: float = 0.99,
        image_score: str | None = None,
        map_weights: str | None = None,
        map_selection: str | None = None,
        synthetic_lesions: bool = True,
        synthetic_copies: int = 1,
        feature_scale: str = "raw",
        rim: float = 0.0,
        fpr: float = 0.05,
        pixel_fpr: float = 0.01,
        folds: int = 5,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        batch_size: int = 8,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> None:
        if image_score is None:
            image_score = "synthetic" if synthetic_lesions else "map_quantile"
        if image_score not in self.IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {self.IMAGE_SCORES}, got {image_score!r}.")
        if feature_scale not in FEATURE_SCALES:
            raise ValueError(f"feature_scale must be one of {FEATURE_SCALES}, got {feature_scale!r}.")
        if map_weights is None:
            map_weights = "selected" if synthetic_lesions else "equal"
        if map_weights not in MAP_WEIGHTINGS:
            raise ValueError(f"map_weights must be one of {MAP_WEIGHTINGS}, got {map_weights!r}.")
        if map_selection is not None and map_selection not in MAP_SELECTIONS:
            raise ValueError(f"map_selection must be one of {tuple(MAP_SELECTIONS)} or None, got {map_selection!r}.")
        if (image_score == "synthetic" or map_weights != "equal") and not synthetic_lesions:
            raise ValueError(f"the 'synthetic' image score and {map_weights!r} map weights need synthetic_lesions=True.")
        net = getattr(net, "module", net)  # a DistributedDataParallel-wrapped learner scores as itself
        names = [t.name for t in tasks]
        if names != list(net.task_names):
            raise ValueError(f"tasks {names} do not match the network's tasks {net.task_names}.")
        unknown = set(weights or {}) - set(names)
        if unknown:
            raise ValueError(f"weights for unknown tasks {sorted(unknown)}.")
        self.net, self.tasks = net, list(tasks)
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in names}
        self.sigma, self.quantile, self.image_score, self.rim, self.fpr = sigma, quantile, image_score, rim, fpr
        self.pixel_fpr, self.folds = pixel_fpr, folds
        self.map_weights, self.map_selection, self.synthetic_lesions = map_weights, map_selection, synthetic_lesions
        self.synthetic_copies, self.feature_scale = int(synthetic_copies), feature_scale
        self.roi_size = tuple(roi_size) if roi_size is not None else None
        self.overlap, self.batch_size = overlap, batch_size
        self.preprocessing_config = _preprocessing_config(preprocessing) if preprocessing is not None else None
        self.training: dict[str, Any] = {}  # provenance the model file reports: epoch, selection, data counts
        self.stats: dict[str, dict[str, float]] = {}
        self.normal_scores: dict[str, torch.Tensor] = {}
        self.thresholds: dict[str, float | None] = {}  # per image score, at ``fpr`` (None: too few normals for it)
        self.pixel_threshold: float | None = None
        self.f1_threshold: float | None = None
        self.calibration: dict[str, int] = {}
        self.selection: dict[str, Any] = {}  # synthetic-lesion AUROCs: per task (pixels), per feature (images)
        self.fitted_map_weights: dict[str, float] = {}  # the shown (fused) map's weights
        self.feature_map_weights: dict[str, float] = {}  # the mixture whose quantile is the fused:map image feature
        self.feature_names: list[str] = []
        self.feature_weights: dict[str, float] = {}
        self.one_class: dict[str, torch.Tensor] = {}
        self.student: DistilledStudent | None = None  # the fast mode (see scoring.student), when distilled
        self.fast = False  # score with the student

    # ------------------------------------------------------------------------------------------- raw errors
    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _predict(self, inputs: torch.Tensor, task: ProxyTask) -> torch.Tensor:
        index = self.net.task_names.index(task.name)

        def run(x):
            return self.net(x, torch.full((x.shape[0],), index, dtype=torch.long, device=x.device))[task.name]

        if self.roi_size is None or tuple(inputs.shape[2:]) == self.roi_size:
            return run(inputs)
        if task.kind == "global":  # one vector per image: look at the whole image at the training size
            mode = "bilinear" if inputs.ndim == 4 else "trilinear"
            return run(F.interpolate(inputs, size=self.roi_size, mode=mode, align_corners=False))
        inferer = SlidingWindowInferer(self.roi_size, sw_batch_size=self.batch_size, overlap=self.overlap, mode="gaussian")
        return inferer(inputs, run)

    @torch.no_grad()
    def raw(
        self, images: torch.Tensor, batch: Mapping | None = None, foreground: torch.Tensor | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Unnormalised per-task ``(errors (B,), maps (B, 1, *spatial) or None)`` for ``images (B, C, *spatial)``;
        maps are smoothed by ``sigma``. With ``foreground (B, 1, *spatial)``, a dense task's image error is the mean
        of its (unsmoothed) map over the foreground only, so rims, skull and background never count."""
        self.net.eval()
        images = images.to(self._device())
        fg = None if foreground is None else foreground.to(images.device).float()
        smooth = GaussianFilter(images.ndim - 2, self.sigma).to(images.device) if self.sigma > 0 else None
        out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size]
            extra = None
            if batch is not None:
                extra = {k: v[start : start + self.batch_size] for k, v in batch.items() if torch.is_tensor(v)}
            for task in self.tasks:
                err, emap = task.score(self._predict, chunk, extra)
                if emap is not None and fg is not None:
                    f = fg[start : start + self.batch_size]
                    err = foreground_mean(emap, f)[:, 0]
                if emap is not None and smooth is not None:
                    emap = smooth(emap)
                prev = out.get(task.name)
                if prev is None:
                    out[task.name] = (err, emap)
                else:
                    out[task.name] = (
                        torch.cat([prev[0], err]),
                        None if emap is None else torch.cat([prev[1], emap]),
                    )
        return out

    # ------------------------------------------------------------------------------------------ calibration
    def _batches(self, images) -> Iterable[torch.Tensor]:
        if torch.is_tensor(images):
            yield images
        else:
            for item in images:
                yield item["image"] if isinstance(item, Mapping) else item

    def fit(self, normal_images: torch.Tensor | Iterable, max_pixels: int = 2_000_000, seed: int = 0) -> AnomalyScorer:
        """Calibrate on normal images only (images the learner was not trained on).

        Sets the per-task normalisation (from all images); with ``synthetic_lesions``, each calibration image is
        also scored with a synthetic lesion of an unseen family (:func:`~monai_mtlmad.scoring.fusion.
        insert_validation_lesions`), which gives each task's pixel AUROC and each feature's image AUROC, hence the
        ``"synthetic"`` map and image weights; the one-class Gaussian over the feature vectors; the normal
        distribution of every image score and of the fused map's foreground values (cross-fitted: each image scored
        with statistics of the other folds), the thresholds at ``fpr`` and the pixel threshold at ``pixel_fpr``.

        Args:
            normal_images: ``(N, C, *spatial)`` or an iterable of such batches (or of dicts with ``"image"``).
            max_pixels: map values per task kept for the pixel statistics (evenly spread over the images).
            seed: assignment of images to folds and the synthetic lesions.
        """
        g = torch.Generator().manual_seed(seed)
        kept = []  # per batch: (raw, foreground, [(raw of a lesioned copy, lesion masks)] per synthetic copy)
        for images in self._batches(normal_images):
            fg = foreground_mask(images, self.rim)
            synthetic = []
            for _ in range(self.synthetic_copies if self.synthetic_lesions else 0):
                lesioned, masks = insert_validation_lesions(images.detach().float().cpu(), fg.cpu(), g)
                synthetic.append((self.raw(lesioned, foreground=fg), masks.to(self._device())))
            fg = fg.to(self._device())
            kept.append((self.raw(images, foreground=fg), fg, synthetic))
        n = sum(fg.shape[0] for _, fg, _ in kept)
        if n == 0:
            raise ValueError("fit needs at least one normal image; none was given.")
        if n < MIN_CALIBRATION_IMAGES:
            warnings.warn(
                f"calibrating on {n} normal images (fewer than {MIN_CALIBRATION_IMAGES}): thresholds and p-values are "
                "coarse; hold out more normal images for calibration.",
                stacklevel=2,
            )
        per_image = max(1, max_pixels // n)
        errors = {t.name: torch.cat([raw[t.name][0].float().cpu() for raw, _, _ in kept]) for t in self.tasks}
        samples: dict[str, list[torch.Tensor]] = {}  # per task and image, a random subset of its foreground map
        for raw, fg, _ in kept:
            for name, (_, emap) in raw.items():
                if emap is not None:
                    values = (random_subset(m[f].float().cpu(), per_image, g) for m, f in zip(emap, fg))
                    samples.setdefault(name, []).extend(values)
        folds = max(1, min(self.folds, n))
        fold_of = torch.randperm(n, generator=g) % folds
        self.stats = _calibration_stats(errors, samples, torch.ones(n, dtype=torch.bool))
        fold_stats = [
            _calibration_stats(errors, samples, fold_of != k) if folds > 1 else self.stats for k in range(folds)
        ]
        # every image normalised out of fold (its lesioned copy with its fold's statistics too)
        normal, lesioned, offset = [], [], 0
        for raw, fg, synthetic in kept:
            fold_here = fold_of[offset : offset + fg.shape[0]]
            normal.append((*self._normalise_by_fold(raw, fold_here, fold_stats), fg))
            for raw_copy, masks in synthetic:
                lesioned.append((*self._normalise_by_fold(raw_copy, fold_here, fold_stats), fg, masks))
            offset += fg.shape[0]
        self.selection = {}
        values = labels = None
        if lesioned:  # one pixel sample of every map over the lesioned copies
            dense = list(lesioned[0][1])
            if dense:
                values, labels = pixel_sample([(m, fg, les) for _, m, fg, les in lesioned], dense)
            self.selection["pixel_auroc"] = {n: roc_auc(values[:, k], labels) for k, n in enumerate(dense)}
            self.selection["images"] = n
            self.selection["lesioned_images"] = sum(f.shape[0] for _, _, f, _ in lesioned)
        # the image features keep the user's mixture whatever map is shown (a map chosen to localise describes the
        # image worse: NOTES_session9); older model files lack it and use the shown map, as they were fitted with
        self.feature_map_weights = {t.name: self.weights[t.name] for t in self.tasks if t.kind == "dense"}
        self.fitted_map_weights = self._map_weights()
        if self.map_weights == "selected" and values is not None:
            use = [k for k, n in enumerate(dense) if self.fitted_map_weights.get(n, 0.0) > 0]
            start = [self.fitted_map_weights[dense[k]] for k in use]  # the user's mixture: the prior
            rule = self.map_selection or ("forward" if self.net.spatial_dims == 3 else "backward")
            self.selection["rule"] = rule
            chosen, auroc = ({}, nan) if not use else MAP_SELECTIONS[rule](
                values[:, use], labels, [dense[k] for k in use], start)
            if auroc == auroc:  # nan: no lesion pixel in the foreground, nothing to select on; keep the user's
                self.fitted_map_weights = {n: chosen.get(n, 0.0) for n in self.fitted_map_weights}
                self.selection["fused_pixel_auroc"] = auroc
        features, pixels = [], []
        for task_scores, task_maps, fg in normal:
            feats, fused = self._features(task_scores, task_maps, fg)
            features.append(feats)
            if fused is not None:
                pixels += [random_subset(m[f].float().cpu(), per_image, g) for m, f in zip(fused, fg)]
        features = torch.cat(features)
        self.feature_names = feature_names(normal[0][0], normal[0][1])
        self.feature_weights = {}
        if lesioned:
            synthetic_features = torch.cat([self._features(ts, tm, fg)[0] for ts, tm, fg, _ in lesioned])
            self.selection["image_auroc"], self.feature_weights = synthetic_feature_weights(
                features, synthetic_features, self.feature_names, self.feature_scale)
        self.one_class, one_class = cross_fitted_one_class(features, fold_of)
        scores = self._image_scores(features, one_class)
        self.normal_scores, self.thresholds, self.pixel_threshold = normal_thresholds(
            scores, pixels, self.fpr, self.pixel_fpr)
        self.calibration = {"images": n, "folds": folds}
        return self

    def _normalise_by_fold(self, raw, fold_here: torch.Tensor, fold_stats) -> tuple[dict, dict]:
        """Normalised task scores and maps of one batch, each image with the statistics of its own fold."""
        task_scores, task_maps = {}, {}
        for k in fold_here.unique().tolist():
            sel = (fold_here == k).nonzero(as_tuple=True)[0]
            sub = {name: (err[sel], None if emap is None else emap[sel]) for name, (err, emap) in raw.items()}
            scores_k, maps_k = self._normalise(sub, fold_stats[k])
            for name, v in scores_k.items():
                task_scores.setdefault(name, torch.empty(fold_here.numel(), device=v.device))[sel] = v.float()
            for name, m in maps_k.items():
                task_maps.setdefault(name, torch.empty((fold_here.numel(), *m.shape[1:]), device=m.device))[sel] = m.float()
        return task_scores, task_maps

    def _map_weights(self) -> dict[str, float]:
        """Map fusion weights of the dense tasks: the user's ``weights``, times the synthetic-lesion weights with
        ``map_weights="synthetic"`` (with ``"selected"``, :meth:`fit` replaces them by its selection)."""
        dense = [t.name for t in self.tasks if t.kind == "dense"]
        w = {n: self.weights[n] for n in dense}
        if self.map_weights == "synthetic" and self.selection.get("pixel_auroc"):
            chosen = auroc_weights({n: self.selection["pixel_auroc"][n] for n in dense})
            w = {n: w[n] * chosen[n] for n in dense}
        return w

    @property
    def threshold(self) -> float | None:
        """The threshold of the image score that decides (:attr:`deciding_score`) at ``fpr``, the fast mode's own
        when ``fast`` (:func:`~monai_mtlmad.scoring.fusion.conformal_threshold`); None before calibration, or when
        too few normals calibrated the scorer for ``fpr`` (then no image is flagged)."""
        if self.fast and self.student is not None:
            return self.student.thresholds.get(self.deciding_score)
        return self.thresholds.get(self.image_score)

    @property
    def map_threshold(self) -> float | None:
        """The pixel threshold of the mode in use (``pixel_threshold``, or the fast mode's own)."""
        if self.fast and self.student is not None:
            return self.student.pixel_threshold
        return self.pixel_threshold

    @property
    def deciding_score(self) -> str:
        """The image score that decides in the mode in use: ``image_score``; in the fast mode too when the student
        was calibrated for it (it predicts every task's error), else its fused map's quantile (``"map_quantile"``)."""
        if self.fast and self.student is not None and self.image_score not in self.student.thresholds:
            return "map_quantile"
        return self.image_score

    @property
    def mode(self) -> str:
        """``"fast"`` (the distilled single-pass student) or ``"full"`` (every task view)."""
        return "fast" if self.fast else "full"

    def use_fast(self, fast: bool = True) -> AnomalyScorer:
        """Score with the distilled student (one pass per image) or with every task view (``fast=False``).

        The student predicts the task maps and errors, so the fast mode computes the same image scores and decides
        by the same ``image_score``, with its own thresholds and p-values (a student of an earlier version predicts
        maps only and decides by its fused map's quantile, see :attr:`deciding_score`).

        Raises:
            ValueError: no student in this scorer.
        """
        if fast and self.student is None:
            raise ValueError("this model holds no fast mode: distil one (distill_student, or the bundle's fast_steps).")
        self.fast = bool(fast)
        return self

    def fit_f1_threshold(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        """Set and return the F1-optimal threshold from labelled validation scores (needs anomalies)."""
        f1, thr = f1_max(scores, labels)
        if thr != thr:  # nan: no positive label
            raise ValueError("fit_f1_threshold needs at least one anomalous image.")
        self.f1_threshold = thr
        return thr

    # ------------------------------------------------------------------------------------------------ fusion
    def _normalise(self, raw, stats=None) -> tuple[dict, dict]:
        """Per-task image errors and maps on the normal scale (units of the normal spread above the normal median)."""
        stats = self.stats if stats is None else stats
        if not stats:
            raise RuntimeError("the scorer is not calibrated: call fit(normal_images) first.")
        task_scores = {n: (err - stats[n]["image_loc"]) / stats[n]["image_scale"] for n, (err, _) in raw.items()}
        task_maps = {
            n: (emap - stats[n]["pixel_loc"]) / stats[n]["pixel_scale"]
            for n, (_, emap) in raw.items()
            if emap is not None
        }
        return task_scores, task_maps

    def _features(self, task_scores: dict, task_maps: dict, fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The feature vectors ``(B, F)`` and the fused, foreground-masked map
        (:func:`~monai_mtlmad.scoring.fusion.feature_vectors`)."""
        weights = self.fitted_map_weights or {n: self.weights[n] for n in task_maps}
        return feature_vectors(task_scores, task_maps, fg, weights, self.quantile, self.feature_map_weights or None)

    def _image_scores(self, features: torch.Tensor, one_class: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every image score from the feature vectors ``(B, F)`` (:func:`~monai_mtlmad.scoring.fusion.image_scores`):
        ``map_quantile``, ``task_mean``, ``one_class`` (when fitted) and ``synthetic`` (when synthetic-lesion weights
        were fitted)."""
        return image_scores(features, self.feature_names, {t.name: self.weights[t.name] for t in self.tasks},
                            self.feature_weights, self.one_class, one_class)

    def score(self, images: torch.Tensor, foreground: torch.Tensor | None = None, batch: Mapping | None = None) -> AnomalyScores:
        """Score ``images (B, C, *spatial)``; ``foreground`` (B, 1, *spatial) overrides the computed mask.

        The routing recorded while scoring is reported in the result and kept apart from the network's running
        statistics (a validation run does not wipe a training epoch's routing). In the fast mode (:meth:`use_fast`)
        one pass of the student gives the dense tasks' maps, the task errors (as it predicts them), the fused map and
        the image scores; there is no routing then."""
        fg = foreground_mask(images, self.rim) if foreground is None else torch.as_tensor(foreground).bool()
        fg = fg.to(self._device()).reshape(images.shape[0], 1, *images.shape[2:])
        if self.fast:
            self.use_fast()  # checks that it can
            scores, task_scores, task_maps, fused = self.student.score(images, fg)
            name = self.deciding_score
            score = scores[name]
            thr = self.threshold if self.threshold is not None else float("inf")
            return AnomalyScores(score, scores, self.student.p_values(score, name), score >= thr, task_scores, fused,
                                 task_maps, fg, {})
        with self.net.separate_usage():
            raw = self.raw(images, batch, foreground=fg)
            usage = self.net.expert_usage()
        task_scores, task_maps = self._normalise(raw)
        features, fused = self._features(task_scores, task_maps, fg)
        scores = {k: v.to(fg.device) for k, v in self._image_scores(features).items()}
        if self.image_score not in scores:
            raise RuntimeError(
                f"image_score {self.image_score!r} was not calibrated (fit with synthetic_lesions for 'synthetic')."
            )
        score = scores[self.image_score]
        p_value = self.p_values(score)
        thr = self.threshold if self.threshold is not None else float("inf")
        return AnomalyScores(score, scores, p_value, score >= thr, task_scores, fused, task_maps, fg, usage)

    def p_values(self, score: torch.Tensor) -> torch.Tensor:
        """Share of the calibration normals (scored out of fold) whose ``image_score`` is at least ``score``,
        ``(k + 1) / (n + 1)`` (conformal); NaN before calibration."""
        return conformal_p_values(self.normal_scores.get(self.image_score), score)

    # ------------------------------------------------------------------------------------------ preprocessing
    def preprocessing(self, with_mask: bool = False):
        """``(deterministic, random)`` MONAI preprocessing that turns input files into what this scorer expects
        (see :func:`monai_mtlmad.data.preprocessing`), as stored with the model."""
        from monai_mtlmad.data.preprocessing import preprocessing

        if self.preprocessing_config is None:
            raise ValueError("this scorer holds no preprocessing settings (it was built for tensors only).")
        return preprocessing(
            **self.preprocessing_config, spatial_dims=self.net.spatial_dims, channels=self.net.in_channels,
            rim=self.rim, with_mask=with_mask,
        )

    # ----------------------------------------------------------------------------------------- persistence
    _SETTINGS = (
        "weights", "sigma", "quantile", "image_score", "map_weights", "map_selection", "synthetic_lesions",
        "synthetic_copies", "feature_scale", "rim", "fpr", "pixel_fpr", "folds", "roi_size", "overlap", "batch_size",
    )
    _CALIBRATION = (
        "stats", "normal_scores", "thresholds", "pixel_threshold", "f1_threshold", "calibration", "selection",
        "fitted_map_weights", "feature_map_weights", "feature_names", "feature_weights", "one_class",
    )

    def state_dict(self) -> dict:
        """Settings and calibration (not the network)."""
        return {k: getattr(self, k) for k in self._SETTINGS + self._CALIBRATION}

    def load_state_dict(self, state: Mapping) -> AnomalyScorer:
        unknown = set(state) - set(self._SETTINGS + self._CALIBRATION)
        if unknown:
            raise ValueError(f"unknown scorer state entries {sorted(unknown)}.")
        for key, value in state.items():
            setattr(self, key, tuple(value) if key == "roi_size" and value is not None else value)
        return self

    def save(self, path: str | Path) -> None:
        """Write the self-describing model file: network arguments and weights, task specs, preprocessing, scorer
        settings and calibration, package version and training provenance; atomically and with its SHA-256
        (:func:`~monai_mtlmad.safe_io.save_checked`), so an interrupted save never leaves a broken file and a
        damaged one is refused on load."""
        from monai_mtlmad import __version__

        save_checked(
            {
                "format": MODEL_FORMAT,
                "package_version": __version__,
                "network_config": self.net.config,
                "tasks": [dict(t.spec) for t in self.tasks],
                "network": self.net.state_dict(),
                "scorer": self.state_dict(),
                "preprocessing": self.preprocessing_config,
                "training": self.training,
                "student": self.student.state_dict() if self.student is not None else None,
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | Path, net: MTLMoENet | None = None, tasks: Sequence[ProxyTask] | None = None, map_location=None
    ) -> AnomalyScorer:
        """A ready detector from a model file written by :meth:`save`: the network and tasks are rebuilt from the
        file unless ``net`` and ``tasks`` are given (weights are loaded into ``net`` then).

        Raises:
            FileNotFoundError: no such file.
            ValueError: naming the file, when it is damaged (:class:`~monai_mtlmad.safe_io.CorruptFileError`), not a
                monai-mtlmad model file, or does not fit ``net``.
        """
        # the calibration stays on the CPU, where fit() keeps it (e.g. the one-class model scores CPU features); only
        # the networks go to map_location
        state = load_checked(path, map_location="cpu")
        if not isinstance(state, dict) or "network" not in state or "scorer" not in state:
            raise ValueError(f"{path}: missing 'network' or 'scorer' entries; not saved by AnomalyScorer.save.")
        if state.get("format", MODEL_FORMAT) != MODEL_FORMAT:
            raise ValueError(
                f"{path}: a {state['format']} model file; this version ({MODEL_FORMAT}) scores differently (per-task "
                "evidence over the foreground, shifted jigsaw grids), so its calibration would not hold: train again with "
                "this version (or put its weights in a new AnomalyScorer and fit that on calibration normals)."
            )
        if net is None:
            if "network_config" not in state or "tasks" not in state:
                raise ValueError(f"{path}: an older model file without its network description; pass net and tasks.")
            config = dict(state["network_config"])
            config["tasks"] = {name: tuple(head) for name, head in config["tasks"].items()}
            if isinstance(config.get("norm"), list):
                config["norm"] = tuple(config["norm"])
            net = MTLMoENet(**config)
            tasks = create_tasks(state["tasks"], config["spatial_dims"], config["in_channels"])
            heads = {t.name: t.head for t in tasks}
            if heads != config["tasks"]:
                raise ValueError(f"{path}: its task specs build heads {heads}, the network has {config['tasks']}.")
        elif tasks is None:
            raise ValueError("pass tasks together with net.")
        try:
            net.load_state_dict(state["network"])
        except RuntimeError as e:
            raise ValueError(f"{path}: the weights do not fit the network ({e}).") from e
        if map_location is not None:
            net.to(map_location)
        preprocessing = state.get("preprocessing")
        if preprocessing is not None:
            # files from before the crop (no key) preprocess as trained, and so do those of sessions 14-15, when
            # the crop was the 3D default and a file stored it as None
            crop = preprocessing.get("crop_to_body", False)
            if crop is None:
                crop = net.spatial_dims == 3
            preprocessing = {**preprocessing, "crop_to_body": bool(crop)}
        scorer = cls(net, tasks, preprocessing=preprocessing)
        scorer.load_state_dict(state["scorer"])
        scorer.thresholds = _conformal_thresholds(scorer.thresholds, scorer.normal_scores, scorer.fpr, f"{path}")
        scorer.training = dict(state.get("training") or {})
        if state.get("student") is not None:
            scorer.student = student = DistilledStudent.from_state(state["student"])
            student.thresholds = _conformal_thresholds(student.thresholds, student.normal_scores,
                                                       student.calibration.get("fpr", scorer.fpr), f"{path} (fast mode)")
            if map_location is not None:
                scorer.student.to(map_location)
        return scorer


def _conformal_thresholds(stored: Mapping[str, float | None], normal: Mapping[str, torch.Tensor], fpr: float,
                          source: str) -> dict[str, float | None]:
    """The image thresholds of a loaded model file, set again from its kept calibration scores: files written before
    session 18 hold interpolated quantiles, which flag a new normal more often than ``fpr`` when the normals are few
    (about one time in five at 5 % over 5 normals). A warning names the file when that changes a threshold."""
    fresh = image_thresholds(normal, fpr, warn=False)
    changed = [k for k in fresh if fresh[k] != stored.get(k)]
    if changed:
        needed = fewest_calibration_normals(fpr)
        warnings.warn(
            f"{source}: image thresholds set again as conformal thresholds at fpr {fpr} from its "
            f"{next(iter(normal.values())).numel()} calibration normals (None: fewer than {needed}, nothing flagged): "
            + ", ".join(f"{k} {stored.get(k)} -> {fresh[k]}" for k in changed),
            stacklevel=3,
        )
    return fresh


def _preprocessing_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocessing keyword arguments with every default written out (a later version changing a default must
    not change how a stored model preprocesses)."""
    from monai_mtlmad.data.preprocessing import preprocessing

    derived = {"spatial_dims", "channels", "rim", "with_mask"}  # from the network and the scorer
    given = {k: v for k, v in config.items() if k not in derived}
    bound = inspect.signature(preprocessing).bind_partial(**given)
    bound.apply_defaults()
    bound.arguments["crop_to_body"] = bool(bound.arguments["crop_to_body"])  # None (a bundle's null) means no
    out = {k: v for k, v in bound.arguments.items() if k not in derived}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _calibration_stats(errors: dict, samples: dict, use: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per task: robust location/scale of the image errors and of the map values of the images in ``use``."""
    stats = {}
    for name, err in errors.items():
        loc, scale = _robust(err[use])
        entry = {"image_loc": loc, "image_scale": scale}
        if name in samples:
            values = torch.cat([v for v, keep in zip(samples[name], use.tolist()) if keep])
            entry["pixel_loc"], entry["pixel_scale"] = _robust(values)
        stats[name] = entry
    return stats


def conformal_p_values(normal: torch.Tensor | None, score: torch.Tensor) -> torch.Tensor:
    """``(k + 1) / (n + 1)``: the share of the ``n`` sorted calibration scores ``normal`` at least as high as each
    ``score`` (``k`` of them), counting the scored image itself; NaN without calibration scores."""
    if normal is None:
        return torch.full_like(score, float("nan"))
    normal = normal.to(score.device)
    return (normal.numel() - torch.searchsorted(normal, score.contiguous(), right=False) + 1) / (normal.numel() + 1)


def _robust(v: torch.Tensor) -> tuple[float, float]:
    """Median, and a scale that cannot collapse: the largest of 1.4826 MAD, the upper tail's spread
    ``(q99 - median) / 2.326`` (both the standard deviation for Gaussian values; the tail term keeps a heavy-tailed
    task from producing huge normalised values on normal images) and 5 % of the mean absolute value."""
    v = quantile_sample(v.float())
    loc = float(v.median())
    mad = float((v - loc).abs().median()) * _MAD_TO_STD
    tail = (float(torch.quantile(v, 0.99)) - loc) / _Z99 if v.numel() > 1 else 0.0
    return loc, max(mad, tail, _REL_FLOOR * float(v.abs().mean()), 1e-6)
