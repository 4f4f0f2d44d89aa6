# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""AnomalyScorer: a trained multi-task learner turned into a calibrated anomaly detector.

How badly the learner solves each proxy task on an unmodified image (deterministic task views: complementary
inpainting masks, fixed jigsaw permutations, all poses) gives per-task image errors and per-pixel error maps.
Calibration on normal images only puts every task on the same robust scale (median, MAD); fused maps are the
weighted mean of the normalised task maps, smoothed and restricted to the foreground; the image score is a high
quantile of the fused map (default) or the weighted mean of normalised task errors. Thresholds: one at a chosen
false-positive rate on the calibration normals (no anomalous image needed), and the F1-optimal one when labelled
anomalies are available. No Ignite here: engines call this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.networks.layers import GaussianFilter

from monai_mtlmad.metrics.functional import f1_max
from monai_mtlmad.networks.mtl_moe_net import MTLMoENet
from monai_mtlmad.transforms.foreground import foreground_mask
from monai_mtlmad.tasks.base import ProxyTask

__all__ = ["AnomalyScorer", "AnomalyScores", "foreground_quantile"]

_MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass
class AnomalyScores:
    """What :meth:`AnomalyScorer.score` returns for a batch of ``B`` images.

    Attributes:
        score: ``(B,)`` fused image score (higher is more anomalous).
        score_task_mean: ``(B,)`` the other image score: weighted mean of normalised task errors.
        p_value: ``(B,)`` fraction of calibration normals scoring at least as high (calibrated score).
        anomalous: ``(B,)`` bool, ``score >= threshold``.
        task_scores: ``{task: (B,)}`` normalised per-task image errors (in normal-MAD units).
        map: ``(B, 1, *spatial)`` fused, smoothed, foreground-masked map.
        task_maps: ``{task: (B, 1, *spatial)}`` normalised smoothed maps of the dense tasks.
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
        sigma: Gaussian smoothing of the maps, in pixels/voxels (0 disables).
        quantile: the fused-map quantile, over the foreground, that is the image score.
        image_score: ``"map_quantile"`` (default) or ``"task_mean"``.
        rim: foreground erosion as a fraction of the image side (strip skull and scalp on brain MRI).
        fpr: false-positive rate on calibration normals that sets the default threshold.
        roi_size: sliding-window size for images larger than the training size (3D volumes); None runs whole.
        overlap: sliding-window overlap (Gaussian blending).
        batch_size: images per network pass.
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
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        batch_size: int = 8,
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
        self.roi_size = tuple(roi_size) if roi_size is not None else None
        self.overlap, self.batch_size = overlap, batch_size
        self.stats: dict[str, dict[str, float]] = {}
        self.normal_scores: torch.Tensor | None = None
        self.threshold: float | None = None
        self.f1_threshold: float | None = None

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
        """Unnormalised per-task ``(errors (B,), maps (B, 1, *spatial) or None)`` for ``images (B, C, *spatial)``."""
        self.net.eval()
        images = images.to(self._device())
        out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size]
            extra = None
            if batch is not None:
                extra = {k: v[start : start + self.batch_size] for k, v in batch.items() if torch.is_tensor(v)}
            for task in self.tasks:
                err, emap = task.score(self._predict, chunk, extra)
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

    def fit(self, normal_images: torch.Tensor | Iterable, max_pixels: int = 2_000_000) -> AnomalyScorer:
        """Calibrate on normal images only: per-task robust location/scale of image errors and of map values
        inside the foreground, then the normals' fused scores and the threshold at ``self.fpr``.

        Args:
            normal_images: ``(N, C, *spatial)`` or an iterable of such batches (or of dicts with ``"image"``).
            max_pixels: map values per task used for the pixel statistics (a random subset beyond this).
        """
        errors: dict[str, list] = {t.name: [] for t in self.tasks}
        values: dict[str, list] = {t.name: [] for t in self.tasks}
        kept = []
        for images in self._batches(normal_images):
            raw = self.raw(images)
            fg = foreground_mask(images, self.rim).to(self._device())
            kept.append((raw, fg))
            for name, (err, emap) in raw.items():
                errors[name].append(err.float().cpu())
                if emap is not None:
                    values[name].append(emap[fg].float().cpu())
        if not kept:
            raise ValueError("fit needs at least one normal image; none was given.")
        g = torch.Generator().manual_seed(0)
        self.stats = {}
        for name in errors:
            err = torch.cat(errors[name])
            loc, scale = _robust(err)
            entry = {"image_loc": loc, "image_scale": scale}
            if values[name]:
                v = torch.cat(values[name])
                if v.numel() > max_pixels:
                    v = v[torch.randperm(v.numel(), generator=g)[:max_pixels]]
                entry["pixel_loc"], entry["pixel_scale"] = _robust(v)
            self.stats[name] = entry
        scores = torch.cat([self._fuse(raw, fg)[0].cpu() for raw, fg in kept])
        self.normal_scores = torch.sort(scores).values
        self.threshold = float(torch.quantile(self.normal_scores, 1 - self.fpr))
        return self

    def fit_f1_threshold(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        """Set and return the F1-optimal threshold from labelled validation scores (needs anomalies)."""
        f1, thr = f1_max(scores, labels)
        if thr != thr:  # nan: no positive label
            raise ValueError("fit_f1_threshold needs at least one anomalous image.")
        self.f1_threshold = thr
        return thr

    # ------------------------------------------------------------------------------------------------ fusion
    def _fuse(self, raw, fg):
        if not self.stats:
            raise RuntimeError("the scorer is not calibrated: call fit(normal_images) first.")
        task_scores = {
            n: (err - self.stats[n]["image_loc"]) / self.stats[n]["image_scale"] for n, (err, _) in raw.items()
        }
        w = self.weights
        total = sum(w[n] for n in task_scores)
        task_mean = sum(w[n] * s for n, s in task_scores.items()) / max(total, 1e-12)
        smooth = GaussianFilter(fg.ndim - 2, self.sigma).to(fg.device) if self.sigma > 0 else None
        task_maps = {}
        for n, (_, emap) in raw.items():
            if emap is None:
                continue
            m = (emap - self.stats[n]["pixel_loc"]) / self.stats[n]["pixel_scale"]
            task_maps[n] = smooth(m) if smooth is not None else m
        if not task_maps:
            return task_mean, task_mean, task_scores, None, task_maps
        dense_total = sum(w[n] for n in task_maps)
        fused = sum(w[n] * m for n, m in task_maps.items()) / max(dense_total, 1e-12)
        quant, fused = foreground_quantile(fused, fg, self.quantile)
        return quant, task_mean, task_scores, fused, task_maps

    def score(self, images: torch.Tensor, foreground: torch.Tensor | None = None, batch: Mapping | None = None) -> AnomalyScores:
        """Score ``images (B, C, *spatial)``; ``foreground`` (B, 1, *spatial) overrides the computed mask."""
        self.net.reset_usage()
        raw = self.raw(images, batch)
        usage = self.net.expert_usage(reset=True)
        fg = foreground_mask(images, self.rim) if foreground is None else torch.as_tensor(foreground).bool()
        fg = fg.to(self._device()).reshape(images.shape[0], 1, *images.shape[2:])
        quant, task_mean, task_scores, fused, task_maps = self._fuse(raw, fg)
        score = quant if self.image_score == "map_quantile" else task_mean
        if self.image_score == "task_mean" or self.normal_scores is None:
            p_value = torch.full_like(score, float("nan"))
        else:
            n = self.normal_scores.to(score.device)
            p_value = (n.numel() - torch.searchsorted(n, score, right=False) + 1) / (n.numel() + 1)
        thr = self.threshold if self.threshold is not None else float("inf")
        return AnomalyScores(score, task_mean, p_value, score >= thr, task_scores, fused, task_maps, fg, usage)

    # ----------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Calibration and configuration (not the network)."""
        return {
            "weights": self.weights,
            "sigma": self.sigma,
            "quantile": self.quantile,
            "image_score": self.image_score,
            "rim": self.rim,
            "fpr": self.fpr,
            "roi_size": self.roi_size,
            "overlap": self.overlap,
            "stats": self.stats,
            "normal_scores": self.normal_scores,
            "threshold": self.threshold,
            "f1_threshold": self.f1_threshold,
        }

    def load_state_dict(self, state: Mapping) -> AnomalyScorer:
        for key, value in state.items():
            setattr(self, key, value)
        return self

    def save(self, path: str | Path) -> None:
        """Write the network weights and the scorer state to one file (written to a temporary file, then moved
        into place, so an interrupted save never leaves a broken file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"network": self.net.state_dict(), "scorer": self.state_dict()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, net: MTLMoENet, tasks: Sequence[ProxyTask], map_location=None) -> AnomalyScorer:
        """Rebuild a scorer saved by :meth:`save` around ``net`` (weights restored) and ``tasks``."""
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a monai-mtlmad model file ({e}).") from e
        if "network" not in state or "scorer" not in state:
            raise ValueError(f"{path}: missing 'network' or 'scorer' entries; not saved by AnomalyScorer.save.")
        net.load_state_dict(state["network"])
        return cls(net, tasks).load_state_dict(state["scorer"])


def foreground_quantile(maps: torch.Tensor, foreground: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``q``-quantile of ``maps (B, 1, *spatial)`` inside ``foreground``, and the maps with every pixel
    outside the foreground set to that image's lowest value (so it never ranks as anomalous)."""
    low = maps.flatten(1).min(1).values.view(-1, *([1] * (maps.ndim - 1)))
    maps = torch.where(foreground, maps, low)
    return torch.stack([torch.quantile(_sample(m[f]), q) for m, f in zip(maps, foreground)]), maps


def _robust(v: torch.Tensor) -> tuple[float, float]:
    v = _sample(v.float())
    loc = float(v.median())
    scale = float((v - loc).abs().median()) * _MAD_TO_STD
    if scale <= 1e-12:  # a task solved perfectly on every normal: fall back to the standard deviation
        scale = float(v.std()) if v.numel() > 1 else 0.0
    return loc, max(scale, 1e-6)


def _sample(v: torch.Tensor, limit: int = 4_000_000) -> torch.Tensor:
    """torch.quantile/median on at most ``limit`` values (torch.quantile refuses more than 16M)."""
    v = v.reshape(-1)
    if v.numel() <= limit:
        return v
    idx = torch.linspace(0, v.numel() - 1, limit, device=v.device).long()
    return torch.sort(v).values[idx]
