# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers that write what a run promises: per-task TensorBoard scalars, the exported model, the
evaluation report (metrics.json, scores.csv, overlays) and per-file anomaly maps."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_mtlmad.data.files import stem
from monai_mtlmad.metrics.anomaly import compute_anomaly_metrics
from monai_mtlmad.metrics.functional import roc_auc
from monai_mtlmad.scoring.overlay import render_overlay
from monai_mtlmad.scoring.scorer import AnomalyScorer

__all__ = [
    "TaskStatsTensorBoardHandler",
    "ModelExportHandler",
    "AnomalyReportWriter",
    "AnomalyMapWriter",
    "AnomalyMapTensorBoardHandler",
    "ProgressBarIfInteractive",
]


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _file_names(meta: dict, n: int) -> list[str]:
    names = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    if names is None:
        return [f"image_{i}" for i in range(n)]
    return [str(v) for v in (names if isinstance(names, (list, tuple)) else [names] * n)]


class TaskStatsTensorBoardHandler:
    """Per-task losses every ``interval`` iterations and expert routing (gate entropy, selection) every epoch.

    Args:
        log_dir: TensorBoard folder.
        network: the learner, for its routing statistics (DDP-wrapped is fine).
        task_names: rows of the routing matrices.
    """

    def __init__(self, log_dir: str | Path, network: torch.nn.Module, task_names: list[str], interval: int = 1) -> None:
        self.log_dir, self.network, self.task_names, self.interval = str(log_dir), network, task_names, interval
        self.writer = None

    def attach(self, engine: Engine) -> None:
        if not _is_main():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch)
        engine.add_event_handler(Events.COMPLETED, lambda e: self.writer.flush())

    def iteration(self, engine: Engine) -> None:
        for name, value in engine.state.output.get("losses", {}).items():
            self.writer.add_scalar(f"loss/{name}", value, engine.state.iteration)

    def epoch(self, engine: Engine) -> None:
        core = getattr(self.network, "module", self.network)
        for block, stats in core.expert_usage(reset=True).items():
            p = stats["probability"]
            e = p.shape[1]
            for t, name in enumerate(self.task_names):
                if float(p[t].sum()) == 0:
                    continue  # the task does not reach this block
                entropy = -(p[t] * p[t].clamp_min(1e-9).log()).sum() / math.log(e)
                self.writer.add_scalar(f"routing/{block}/{name}/gate_entropy", float(entropy), engine.state.epoch)
                for k in range(e):
                    self.writer.add_scalar(f"routing/{block}/{name}/expert_{k}", float(stats["selection"][t, k]), engine.state.epoch)
        self.writer.flush()


class ModelExportHandler:
    """When training completes: calibrate a scorer on normal images and save network + scorer to ``path``
    (written atomically: a temporary file moved into place).

    Args:
        scorer: returns a fresh :class:`AnomalyScorer` around the trained network.
        calibration: iterable of batches (dicts with ``"image"`` and optionally ``"label"``); normals only are used.
        path: e.g. ``RUN/models/model.pt``.
    """

    def __init__(self, scorer: Callable[[], AnomalyScorer], calibration: Iterable, path: str | Path, device=None):
        self.scorer, self.calibration, self.path, self.device = scorer, calibration, Path(path), device

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_main():
            return
        from monai_mtlmad.engines.workflows import normal_batches

        scorer = self.scorer()
        batches = list(normal_batches(self.calibration, "image", self.device or engine.state.device))
        if not batches:
            raise ValueError("no normal image to calibrate the scorer on: the calibration split holds none.")
        scorer.fit(batches)
        scorer.save(self.path)
        engine.logger.info(f"saved network and calibrated scorer to {self.path} (threshold {scorer.threshold:.4f})")


class AnomalyReportWriter:
    """Collects an :class:`~monai_mtlmad.engines.AnomalyEvaluator` run and writes, at its end:

    - ``metrics.json``: :func:`~monai_mtlmad.metrics.compute_anomaly_metrics` keys (pixel ones null without masks),
      ``per_task`` (each task's image AUROC), ``n_images``, ``n_anomalous`` and ``flagged_fraction`` (the share of
      images at or above the scorer's threshold);
    - ``scores.csv``: file, label, score, p-value, anomalous, per-task scores;
    - ``overlays/``: pictures of the ``num_overlays`` highest- and lowest-scoring cases.
    """

    def __init__(self, output_dir: str | Path, num_overlays: int = 3) -> None:
        self.output_dir, self.num_overlays = Path(output_dir), num_overlays
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        o = engine.state.output
        names = _file_names(o["meta"], len(o["score"]))
        for i, name in enumerate(names):
            self.rows.append({
                "file": name,
                "image": o["image"][i].cpu(),
                "label": int(o["label"][i]),
                "score": float(o["score"][i]),
                "p_value": float(o["p_value"][i]),
                "anomalous": bool(o["anomalous"][i]),
                "map": o["map"][i].cpu(),
                "mask": o["mask"][i].cpu(),
                "foreground": o["foreground"][i].cpu(),
                "task_scores": {k: float(v[i]) for k, v in o["task_scores"].items()},
                "task_maps": {k: v[i].cpu() for k, v in o["task_maps"].items()},
            })

    def write(self, engine: Engine) -> None:
        if not self.rows:
            raise ValueError("the evaluation saw no image.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        r = self.rows
        scores = torch.tensor([x["score"] for x in r])
        labels = torch.tensor([x["label"] for x in r])
        masks = torch.stack([x["mask"] for x in r])
        has_masks = bool(masks.any())
        stack = lambda k: torch.stack([x[k] for x in r])  # noqa: E731
        metrics = compute_anomaly_metrics(
            scores, labels, stack("map") if has_masks else None, masks if has_masks else None,
            stack("image"), stack("foreground"),
        )
        metrics["per_task"] = {
            k: _none_if_nan(roc_auc(torch.tensor([x["task_scores"][k] for x in r]), labels)) for k in r[0]["task_scores"]
        }
        metrics["n_images"] = len(r)
        metrics["n_anomalous"] = int(labels.sum())
        metrics["flagged_fraction"] = float(np.mean([x["anomalous"] for x in r]))
        (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        with open(self.output_dir / "scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            tasks = list(r[0]["task_scores"])
            w.writerow(["file", "label", "score", "p_value", "anomalous", *tasks])
            for x in r:
                w.writerow([x["file"], x["label"], f"{x['score']:.6f}", f"{x['p_value']:.6f}", "yes" if x["anomalous"] else "no",
                            *[f"{x['task_scores'][t]:.6f}" for t in tasks]])
        order = sorted(range(len(r)), key=lambda i: r[i]["score"])
        picks = [("lowest", i) for i in order[: self.num_overlays]] + [("highest", i) for i in order[-self.num_overlays :]]
        for tag, i in picks:
            x = r[i]
            render_overlay(
                self.output_dir / "overlays" / f"{tag}_{stem(x['file'])}.png", x["image"], x["map"], x["task_maps"],
                x["mask"] if x["mask"].any() else None,
                f"{Path(x['file']).name}  label {x['label']}  score {x['score']:.2f}  p {x['p_value']:.3f}",
            )
        engine.state.metrics.update({k: v for k, v in metrics.items() if isinstance(v, float)})
        engine.logger.info(f"metrics written to {self.output_dir / 'metrics.json'}: " + json.dumps(
            {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "baseline_image_auroc_foreground")}))


def _none_if_nan(v: float) -> float | None:
    return None if v != v else float(v)


class AnomalyMapWriter:
    """Writes, per input file, its anomaly map named after the file's stem, and ``scores.csv`` at the end.

    2D: ``<stem>_overlay.png`` and the float map ``<stem>_map.npy``; 3D: ``<stem>_map.nii.gz`` aligned with the
    input (the map is taken back through ``preprocessing.inverse`` and written with the input's affine).

    Args:
        output_dir: where to write.
        preprocessing: the deterministic preprocessing the images went through (to invert spatial changes).
    """

    def __init__(self, output_dir: str | Path, preprocessing=None) -> None:
        self.output_dir, self.preprocessing = Path(output_dir), preprocessing
        self.rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_scores)

    def write_batch(self, engine: Engine) -> None:
        from monai.data import MetaTensor, decollate_batch
        from monai.transforms import SaveImage

        o = engine.state.output
        self.output_dir.mkdir(parents=True, exist_ok=True)
        names = _file_names(o["meta"], len(o["score"]))
        images = engine.state.batch["image"]
        per_image = decollate_batch(images) if isinstance(images, MetaTensor) else [None] * len(names)
        for i, name in enumerate(names):
            s = stem(name)
            amap = o["map"][i].detach().cpu()
            if amap.ndim == 3:
                np.save(self.output_dir / f"{s}_map.npy", amap[0].numpy())
                render_overlay(self.output_dir / f"{s}_overlay.png", o["image"][i], amap, {k: v[i] for k, v in o["task_maps"].items()},
                               title=f"{Path(name).name}  score {float(o['score'][i]):.2f}  p {float(o['p_value'][i]):.3f}")
            else:
                ref = per_image[i]
                m = MetaTensor(amap, meta=dict(ref.meta), applied_operations=list(ref.applied_operations)) if ref is not None else amap
                if self.preprocessing is not None and ref is not None:
                    m = self.preprocessing.inverse({"image": m})["image"]
                SaveImage(output_dir=self.output_dir, output_postfix="map", separate_folder=False, resample=False,
                          print_log=False, output_dtype=np.float32)(m, meta_data={**m.meta, "filename_or_obj": name} if hasattr(m, "meta") else None)
            self.rows.append([name, f"{float(o['score'][i]):.6f}", f"{float(o['p_value'][i]):.6f}", "yes" if bool(o["anomalous"][i]) else "no"])

    def write_scores(self, engine: Engine) -> None:
        with open(self.output_dir / "scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "score", "p_value", "anomalous"])
            w.writerows(self.rows)


class AnomalyMapTensorBoardHandler:
    """After each evaluation: the first batch's images and fused maps as TensorBoard images (3D: middle slice),
    at the evaluator's epoch (the trainer's, under MONAI's ``ValidationHandler``), so maps can be watched
    improving during training.

    Args:
        log_dir: TensorBoard folder.
        max_images: images shown.
    """

    def __init__(self, log_dir: str | Path, max_images: int = 4) -> None:
        self.log_dir, self.max_images = str(log_dir), max_images
        self.writer = None
        self.first: dict | None = None

    def attach(self, engine: Engine) -> None:
        if not _is_main():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(self, "first", None))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.keep)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def keep(self, engine: Engine) -> None:
        if self.first is None:
            o = engine.state.output
            self.first = {"image": o["image"][: self.max_images].cpu(), "map": o["map"][: self.max_images].cpu()}

    def write(self, engine: Engine) -> None:
        if self.first is None:
            return
        step = engine.state.epoch
        for key in ("image", "map"):
            x = self.first[key].float()
            if x.ndim == 5:
                x = x[..., x.shape[-1] // 2]
            x = x.mean(1, keepdim=True)
            lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
            hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
            self.writer.add_images(f"validation/{key}", (x - lo) / (hi - lo).clamp_min(1e-8), step)
        self.writer.flush()


class ProgressBarIfInteractive:
    """Ignite's progress bar with the running loss, only when stderr is a terminal (not in logs and CI)."""

    def attach(self, engine: Engine) -> None:
        import sys

        if sys.stderr.isatty() and _is_main():
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(engine, output_transform=lambda o: {"loss": float(o["loss"])} if isinstance(o, dict) and "loss" in o else None)
