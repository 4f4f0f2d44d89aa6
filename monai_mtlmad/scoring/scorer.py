# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""AnomalyScorer: a trained multi-task learner turned into a calibrated anomaly detector, and its model file.

How badly the learner solves each proxy task on an unmodified image (deterministic task views: complementary
inpainting masks, fixed jigsaw permutations, all poses) gives per-task image errors and per-pixel error maps.
Calibration on normal images only puts every task on the same robust scale: maps are smoothed first, then each
task's location (median) and scale (the larger of the MAD and the spread of the upper tail, with a floor relative
to the task's typical error, so a task solved almost perfectly on the calibration normals cannot swamp the fusion)
are taken over normal values. Fused maps are the weighted mean of the normalised task maps, restricted to the
foreground; the image score is a high quantile of the fused map (default) or the weighted mean of normalised task
errors.

Honest thresholds: the normal score distribution that sets the threshold at a chosen false-positive rate and the
p-values comes from cross-fitting: each calibration image is scored with normalisation statistics fitted on the
other folds, never on itself. Both image scores get their own distribution, so the threshold and p-values are on
the scale of the score in use. The F1-optimal threshold is available when labelled anomalies are.

The model file (:meth:`AnomalyScorer.save`) describes itself: network arguments, task specs, preprocessing, scorer
settings and calibration, the package version and the training epoch; :meth:`AnomalyScorer.load` rebuilds a ready
detector from it alone. No Ignite here: engines call this.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.networks.layers import GaussianFilter

from monai_mtlmad.metrics.functional import f1_max
from monai_mtlmad.networks.mtl_moe_net import MTLMoENet
from monai_mtlmad.safe_io import load_checked, save_checked
from monai_mtlmad.transforms.foreground import foreground_mask
from monai_mtlmad.tasks.base import ProxyTask, create_tasks

__all__ = ["AnomalyScorer", "AnomalyScores", "foreground_quantile", "MODEL_FORMAT", "MIN_CALIBRATION_IMAGES"]

MODEL_FORMAT = "monai-mtlmad-model/1"
MIN_CALIBRATION_IMAGES = 30  # fewer calibration normals give thresholds and p-values too coarse to trust
_MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation
_Z99 = 2.3263  # the 99th percentile of a standard normal: (q99 - median) / this is its standard deviation
_REL_FLOOR = 0.05  # a scale is at least this fraction of the task's mean absolute error on normals


@dataclass
class AnomalyScores:
    """What :meth:`AnomalyScorer.score` returns for a batch of ``B`` images.

    Attributes:
        score: ``(B,)`` the image score in use (``image_score``; higher is more anomalous).
        score_task_mean: ``(B,)`` the weighted mean of normalised task errors (one of the two image scores).
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
    score_task_mean: torch.Tensor
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
        image_score: ``"map_quantile"`` (default) or ``"task_mean"``.
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

    def __init__(
        self,
        net: MTLMoENet,
        tasks: Sequence[ProxyTask],
        weights: Mapping[str, float] | None = None,
        sigma: float = 2.0,
        quantile: float = 0.99,
        image_score: str = "map_quantile",
        rim: float = 0.0,
        fpr: float = 0.05,
        pixel_fpr: float = 0.01,
        folds: int = 5,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        batch_size: int = 8,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> None:
        if image_score not in ("map_quantile", "task_mean"):
            raise ValueError(f"image_score must be 'map_quantile' or 'task_mean', got {image_score!r}.")
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
        self.roi_size = tuple(roi_size) if roi_size is not None else None
        self.overlap, self.batch_size = overlap, batch_size
        self.preprocessing_config = _preprocessing_config(preprocessing) if preprocessing is not None else None
        self.training: dict[str, Any] = {}  # provenance the model file reports: epoch, selection, data counts
        self.stats: dict[str, dict[str, float]] = {}
        self.normal_scores: dict[str, torch.Tensor] = {}
        self.thresholds: dict[str, float] = {}  # per image score, at ``fpr`` on the calibration normals
        self.pixel_threshold: float | None = None
        self.f1_threshold: float | None = None
        self.calibration: dict[str, int] = {}

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
    def raw(self, images: torch.Tensor, batch: Mapping | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Unnormalised per-task ``(errors (B,), maps (B, 1, *spatial) or None)`` for ``images (B, C, *spatial)``;
        maps are smoothed by ``sigma``."""
        self.net.eval()
        images = images.to(self._device())
        smooth = GaussianFilter(images.ndim - 2, self.sigma).to(images.device) if self.sigma > 0 else None
        out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size]
            extra = None
            if batch is not None:
                extra = {k: v[start : start + self.batch_size] for k, v in batch.items() if torch.is_tensor(v)}
            for task in self.tasks:
                err, emap = task.score(self._predict, chunk, extra)
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

        Sets the per-task normalisation (from all images), the normal distribution of both image scores and of
        the fused map's foreground values (cross-fitted: each image scored with statistics of the other folds),
        the threshold at ``fpr`` and the pixel threshold at ``pixel_fpr``.

        Args:
            normal_images: ``(N, C, *spatial)`` or an iterable of such batches (or of dicts with ``"image"``).
            max_pixels: map values per task kept for the pixel statistics (evenly spread over the images).
            seed: assignment of images to folds.
        """
        kept = []
        for images in self._batches(normal_images):
            fg = foreground_mask(images, self.rim).to(self._device())
            kept.append((self.raw(images), fg))
        n = sum(fg.shape[0] for _, fg in kept)
        if n == 0:
            raise ValueError("fit needs at least one normal image; none was given.")
        if n < MIN_CALIBRATION_IMAGES:
            warnings.warn(
                f"calibrating on {n} normal images (fewer than {MIN_CALIBRATION_IMAGES}): thresholds and p-values are "
                "coarse; hold out more normal images for calibration.",
                stacklevel=2,
            )
        per_image = max(1, max_pixels // n)
        g = torch.Generator().manual_seed(seed)
        errors = {t.name: torch.cat([raw[t.name][0].float().cpu() for raw, _ in kept]) for t in self.tasks}
        samples: dict[str, list[torch.Tensor]] = {}  # per task and image, a random subset of its foreground map
        for raw, fg in kept:
            for name, (_, emap) in raw.items():
                if emap is not None:
                    values = (_subset(m[f].float().cpu(), per_image, g) for m, f in zip(emap, fg))
                    samples.setdefault(name, []).extend(values)
        folds = max(1, min(self.folds, n))
        fold_of = torch.randperm(n, generator=g) % folds
        self.stats = _calibration_stats(errors, samples, torch.ones(n, dtype=torch.bool))
        fold_stats = [
            _calibration_stats(errors, samples, fold_of != k) if folds > 1 else self.stats for k in range(folds)
        ]
        quant, task_mean, pixels = torch.empty(n), torch.empty(n), []
        offset = 0
        for raw, fg in kept:
            b = fg.shape[0]
            folds_here = fold_of[offset : offset + b]
            for k in folds_here.unique().tolist():
                sel = (folds_here == k).nonzero(as_tuple=True)[0]
                sub = {name: (err[sel], None if emap is None else emap[sel]) for name, (err, emap) in raw.items()}
                q, tm, _, fused, _ = self._fuse(sub, fg[sel], fold_stats[k])
                quant[offset + sel.cpu()], task_mean[offset + sel.cpu()] = q.float().cpu(), tm.float().cpu()
                if fused is not None:
                    pixels += [_subset(m[f].float().cpu(), per_image, g) for m, f in zip(fused, fg[sel])]
            offset += b
        self.normal_scores = {"map_quantile": torch.sort(quant).values, "task_mean": torch.sort(task_mean).values}
        self.thresholds = {k: float(torch.quantile(v, 1 - self.fpr)) for k, v in self.normal_scores.items()}
        self.pixel_threshold = float(torch.quantile(_sample(torch.cat(pixels)), 1 - self.pixel_fpr)) if pixels else None
        self.calibration = {"images": n, "folds": folds}
        return self

    @property
    def threshold(self) -> float | None:
        """The threshold of the image score in use (``image_score``) at ``fpr``; None before calibration."""
        return self.thresholds.get(self.image_score)

    def fit_f1_threshold(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        """Set and return the F1-optimal threshold from labelled validation scores (needs anomalies)."""
        f1, thr = f1_max(scores, labels)
        if thr != thr:  # nan: no positive label
            raise ValueError("fit_f1_threshold needs at least one anomalous image.")
        self.f1_threshold = thr
        return thr

    # ------------------------------------------------------------------------------------------------ fusion
    def _fuse(self, raw, fg, stats=None):
        stats = self.stats if stats is None else stats
        if not stats:
            raise RuntimeError("the scorer is not calibrated: call fit(normal_images) first.")
        task_scores = {n: (err - stats[n]["image_loc"]) / stats[n]["image_scale"] for n, (err, _) in raw.items()}
        w = self.weights
        total = sum(w[n] for n in task_scores)
        task_mean = sum(w[n] * s for n, s in task_scores.items()) / max(total, 1e-12)
        task_maps = {
            n: (emap - stats[n]["pixel_loc"]) / stats[n]["pixel_scale"]
            for n, (_, emap) in raw.items()
            if emap is not None
        }
        if not task_maps:
            return task_mean, task_mean, task_scores, None, task_maps
        dense_total = sum(w[n] for n in task_maps)
        fused = sum(w[n] * m for n, m in task_maps.items()) / max(dense_total, 1e-12)
        quant, fused = foreground_quantile(fused, fg, self.quantile)
        return quant, task_mean, task_scores, fused, task_maps

    def score(self, images: torch.Tensor, foreground: torch.Tensor | None = None, batch: Mapping | None = None) -> AnomalyScores:
        """Score ``images (B, C, *spatial)``; ``foreground`` (B, 1, *spatial) overrides the computed mask.

        The routing recorded while scoring is reported in the result and kept apart from the network's running
        statistics (a validation run does not wipe a training epoch's routing)."""
        with self.net.separate_usage():
            raw = self.raw(images, batch)
            usage = self.net.expert_usage()
        fg = foreground_mask(images, self.rim) if foreground is None else torch.as_tensor(foreground).bool()
        fg = fg.to(self._device()).reshape(images.shape[0], 1, *images.shape[2:])
        quant, task_mean, task_scores, fused, task_maps = self._fuse(raw, fg)
        score = quant if self.image_score == "map_quantile" else task_mean
        p_value = self.p_values(score)
        thr = self.threshold if self.threshold is not None else float("inf")
        return AnomalyScores(score, task_mean, p_value, score >= thr, task_scores, fused, task_maps, fg, usage)

    def p_values(self, score: torch.Tensor) -> torch.Tensor:
        """Share of the calibration normals (scored out of fold) whose ``image_score`` is at least ``score``,
        ``(k + 1) / (n + 1)`` (conformal); NaN before calibration."""
        normal = self.normal_scores.get(self.image_score)
        if normal is None:
            return torch.full_like(score, float("nan"))
        normal = normal.to(score.device)
        return (normal.numel() - torch.searchsorted(normal, score, right=False) + 1) / (normal.numel() + 1)

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
        "weights", "sigma", "quantile", "image_score", "rim", "fpr", "pixel_fpr", "folds", "roi_size", "overlap",
        "batch_size",
    )
    _CALIBRATION = ("stats", "normal_scores", "thresholds", "pixel_threshold", "f1_threshold", "calibration")

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
        state = load_checked(path, map_location=map_location)
        if not isinstance(state, dict) or "network" not in state or "scorer" not in state:
            raise ValueError(f"{path}: missing 'network' or 'scorer' entries; not saved by AnomalyScorer.save.")
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
        scorer = cls(net, tasks, preprocessing=state.get("preprocessing"))
        scorer.load_state_dict(state["scorer"])
        scorer.training = dict(state.get("training") or {})
        return scorer


def _preprocessing_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocessing keyword arguments with every default written out (a later version changing a default must
    not change how a stored model preprocesses)."""
    from monai_mtlmad.data.preprocessing import preprocessing

    derived = {"spatial_dims", "channels", "rim", "with_mask"}  # from the network and the scorer
    given = {k: v for k, v in config.items() if k not in derived}
    bound = inspect.signature(preprocessing).bind_partial(**given)
    bound.apply_defaults()
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


def foreground_quantile(maps: torch.Tensor, foreground: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``q``-quantile of ``maps (B, 1, *spatial)`` inside ``foreground``, and the maps with every pixel
    outside the foreground set to that image's lowest value (so it never ranks as anomalous)."""
    low = maps.flatten(1).min(1).values.view(-1, *([1] * (maps.ndim - 1)))
    maps = torch.where(foreground, maps, low)
    return torch.stack([torch.quantile(_sample(m[f]), q) for m, f in zip(maps, foreground)]), maps


def _robust(v: torch.Tensor) -> tuple[float, float]:
    """Median, and a scale that cannot collapse: the largest of 1.4826 MAD, the upper tail's spread
    ``(q99 - median) / 2.326`` (both the standard deviation for Gaussian values; the tail term keeps a heavy-tailed
    task from producing huge normalised values on normal images) and 5 % of the mean absolute value."""
    v = _sample(v.float())
    loc = float(v.median())
    mad = float((v - loc).abs().median()) * _MAD_TO_STD
    tail = (float(torch.quantile(v, 0.99)) - loc) / _Z99 if v.numel() > 1 else 0.0
    return loc, max(mad, tail, _REL_FLOOR * float(v.abs().mean()), 1e-6)


def _subset(v: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``limit`` values of ``v``, drawn at random."""
    v = v.reshape(-1)
    return v if v.numel() <= limit else v[torch.randperm(v.numel(), generator=generator)[:limit]]


def _sample(v: torch.Tensor, limit: int = 4_000_000) -> torch.Tensor:
    """torch.quantile/median on at most ``limit`` values (torch.quantile refuses more than 16M)."""
    v = v.reshape(-1)
    if v.numel() <= limit:
        return v
    idx = torch.linspace(0, v.numel() - 1, limit, device=v.device).long()
    return torch.sort(v).values[idx]
