# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers that write what a run promises: per-task TensorBoard scalars, the exported model, the
evaluation report (metrics.json, scores.csv, overlays) and per-file anomaly maps."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image

from monai_mtlmad.data.files import is_raster, stem
from monai_mtlmad.data.preprocessing import InvertMap
from monai_mtlmad.metrics.anomaly import compute_anomaly_metrics, pixel_auroc_anomalous
from monai_mtlmad.metrics.functional import average_precision, roc_auc
from monai_mtlmad.scoring.overlay import blend_map, map_to_uint8, render_overlay
from monai_mtlmad.safe_io import keep_previous
from monai_mtlmad.scoring.scorer import AnomalyScorer

__all__ = [
    "TaskStatsTensorBoardHandler",
    "ModelExportHandler",
    "AnomalyReportWriter",
    "AnomalyMapWriter",
    "AnomalyMapTensorBoardHandler",
    "output_path",
    "ProgressBarIfInteractive",
]


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _file_names(inputs: list) -> list[str]:
    """The source of each of the evaluator's ``inputs`` (a placeholder for plain tensors)."""
    return [str(getattr(x, "meta", {}).get("filename_or_obj", f"image_{i}")) for i, x in enumerate(inputs)]


def _skipped_note(skipped: list) -> str:
    return "; ".join(reason for _, reason in skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")


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
    """When training completes: pick the weights to export, calibrate a scorer on held-out normal images and write
    the self-describing model file to ``path`` (atomically: a temporary file moved into place).

    Model selection: with ``selection="best"`` and an ``evaluator``, the weights of the epoch with the best key
    validation metric (higher is better, as MONAI's key metrics) are kept in memory after each validation and
    exported; they travel in the trainer's checkpoints through :meth:`state_dict`, so a resumed run still exports
    the best of all its epochs. Without a validation run, or with ``selection="last"``, the last epoch's weights.
    The model file records which epoch was exported and why, the optimisation steps run and the seconds the
    training epochs took, validations left out (``scorer.training``: ``training_steps``, ``training_seconds``).

    Args:
        scorer: returns a fresh :class:`AnomalyScorer` around the trained network.
        calibration: iterable of batches (dicts with ``"image"`` and optionally ``"label"``); normals only are used.
        path: e.g. ``RUN/models/model.pt``.
        evaluator: the validation evaluator (its key metric selects the weights).
        selection: ``"best"`` or ``"last"``.
        info: extra provenance for the model file (e.g. training and calibration image counts).
        fast_steps: when above 0, also distil the fast scoring mode (:func:`~monai_mtlmad.scoring.student.
            distill_student`) in this many steps, on the images of ``distill``, and store it in the model file.
        distill: iterable of training batches (dicts with ``"image"``) for the fast mode.
        fast_options: further keyword arguments of ``distill_student`` (e.g. ``{"error_weight": 0.2}``,
            ``{"task_errors": false}``).
    """

    def __init__(
        self,
        scorer: Callable[[], AnomalyScorer],
        calibration: Iterable,
        path: str | Path,
        device=None,
        evaluator: Engine | None = None,
        selection: str = "best",
        info: dict | None = None,
        fast_steps: int = 0,
        distill: Iterable | None = None,
        fast_options: Mapping[str, Any] | None = None,
    ):
        if selection not in ("best", "last"):
            raise ValueError(f"selection must be 'best' or 'last', got {selection!r}.")
        self.scorer, self.calibration, self.path, self.device = scorer, calibration, Path(path), device
        self.evaluator, self.selection, self.info = evaluator, selection, dict(info or {})
        if fast_steps > 0 and distill is None:
            raise ValueError("fast_steps > 0 needs the training images to distil on (distill).")
        self.fast_steps, self.distill, self.fast_options = int(fast_steps), distill, dict(fast_options or {})
        self.best: dict | None = None  # {"epoch", "metric", "value", "network"} of the best validation so far
        self.training_seconds = 0.0  # the epochs' own time (Ignite measures it before validation handlers run)
        self.trainer: Engine | None = None
        self.network: torch.nn.Module | None = None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        self.network = self.scorer().net  # the unwrapped learner (the scorer factory closes over it)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._add_epoch_time)
        engine.add_event_handler(Events.COMPLETED, self)
        if self.evaluator is not None and self.selection == "best":
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.track)

    def track(self, evaluator: Engine) -> None:
        """After a validation: keep a copy of the weights if the key metric is the best seen."""
        name = getattr(evaluator.state, "key_metric_name", None)
        value = evaluator.state.metrics.get(name) if name else None
        if value is None or (self.best is not None and float(value) <= self.best["value"]):
            return
        self.best = {
            "epoch": int(self.trainer.state.epoch),
            "metric": str(name),
            "value": float(value),
            "network": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
        }

    def _add_epoch_time(self, engine: Engine) -> None:
        self.training_seconds += float(engine.state.times.get(Events.EPOCH_COMPLETED.name) or 0.0)

    def state_dict(self) -> dict:
        return {"best": self.best, "training_seconds": self.training_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.training_seconds = float(state.get("training_seconds", 0.0))

    def __call__(self, engine: Engine) -> None:
        if not _is_main():
            return
        from monai_mtlmad.engines.workflows import batch_images, normal_batches

        scorer = self.scorer()
        last = int(engine.state.epoch)
        if self.best is not None and self.selection == "best":
            scorer.net.load_state_dict(self.best["network"])
            why = f"best {self.best['metric']} = {self.best['value']:.4f} over the validations"
            epoch = self.best["epoch"]
        else:
            epoch = last
            why = "last epoch (selection 'last')" if self.selection == "last" else "last epoch (no validation ran)"
        batches = list(normal_batches(self.calibration, "image", self.device or engine.state.device))
        if not batches:
            raise ValueError("no normal image to calibrate the scorer on: the calibration split holds none.")
        scorer.fit(batches)
        if self.fast_steps > 0:
            from monai_mtlmad.scoring.student import distill_student

            device = self.device or engine.state.device
            training = (batch_images(b, "image", device) for b in self.distill if "image" in b)
            distill_student(scorer, training, batches, steps=self.fast_steps, **self.fast_options)  # logs its fidelity
        scorer.training = {**self.info, "epoch": epoch, "last_epoch": last, "selection": why,
                           "training_steps": int(engine.state.iteration), "training_seconds": round(self.training_seconds, 2)}
        scorer.save(self.path)
        thr = scorer.threshold
        engine.logger.info(
            f"saved model of epoch {epoch} ({why}) calibrated on {scorer.calibration['images']} normal images to "
            f"{self.path} ({f'threshold {thr:.4f}' if thr is not None else f'no image threshold at fpr {scorer.fpr}'})"
        )


class AnomalyReportWriter:
    """Collects an :class:`~monai_mtlmad.engines.AnomalyEvaluator` run and writes, at its end:

    - ``metrics.json``: :func:`~monai_mtlmad.metrics.compute_anomaly_metrics` keys (pixel ones null without masks),
      ``per_task`` (each task's image AUROC), ``n_images``, ``n_anomalous``, ``flagged_fraction`` (the share of
      images at or above the scorer's threshold), ``threshold`` (the image score in use, the nominal false-positive
      rate, the one measured on this split's normal images and the true-positive rate on its anomalies),
      ``calibration`` (how many normal images set the calibration, and from where) and ``model`` (the exported
      epoch and why it was chosen);
    - ``scores.csv``: file, label, score, p-value, anomalous, per-task scores, note (why an input was skipped);
    - ``overlays/``: pictures of the ``num_overlays`` highest- and lowest-scoring cases.

    Results of an earlier evaluation in ``output_dir`` are moved into ``previous/<time>/`` first, never overwritten.
    Metrics over a set with skipped inputs (unreadable or unusable files, see
    :class:`~monai_mtlmad.data.checks.CheckImage`) would describe another set: unless ``allow_skipped``, the writer
    then writes ``scores.csv`` (skipped inputs with their reasons) but no ``metrics.json`` and raises; with
    ``allow_skipped`` the metrics cover the others and ``metrics.json`` says how many were skipped.
    """

    def __init__(self, output_dir: str | Path, num_overlays: int = 3, allow_skipped: bool = False) -> None:
        self.output_dir, self.num_overlays, self.allow_skipped = Path(output_dir), num_overlays, allow_skipped
        self.rows: list[dict] = []
        self.skipped: list[tuple[str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows.clear()
        self.skipped.clear()

    def collect(self, engine: Engine) -> None:
        o = engine.state.output
        self.skipped += [(str(s), r) for s, r in o.get("skipped", [])]
        if "score" not in o:
            return
        for i, name in enumerate(_file_names(o["inputs"])):
            self.rows.append({
                "file": name,
                "image": o["image"][i].cpu(),
                "label": int(o["label"][i]),
                "score": float(o["score"][i]),
                "p_value": float(o["p_value"][i]),
                "anomalous": bool(o["anomalous"][i]),
                "map": o["map"][i].cpu() if o["map"] is not None else None,  # None: global tasks only
                "mask": o["mask"][i].cpu(),
                "foreground": o["foreground"][i].cpu(),
                "task_scores": {k: float(v[i]) for k, v in o["task_scores"].items()},
                "image_scores": {k: float(v[i]) for k, v in o.get("image_scores", {}).items()},
                "task_maps": {k: v[i].cpu() for k, v in o["task_maps"].items()},
            })

    def write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        keep_previous(self.output_dir, ["metrics.json", "scores.csv", "overlays"])  # earlier results stay, in previous/
        r = self.rows
        self._write_scores()
        total = len(r) + len(self.skipped)
        if not r:
            raise ValueError(f"the evaluation scored no image ({len(self.skipped)} skipped: {_skipped_note(self.skipped)}).")
        if self.skipped and not self.allow_skipped:
            raise ValueError(
                f"{len(self.skipped)} of {total} images could not be scored ({_skipped_note(self.skipped)}); metrics over "
                f"the others would describe another set, so none were written (scores.csv lists every input). Fix or "
                "remove those files, or set allow_skipped to report metrics over the rest."
            )
        scores = torch.tensor([x["score"] for x in r])
        labels = torch.tensor([x["label"] for x in r])
        masks = torch.stack([x["mask"] for x in r])
        has_maps = all(x["map"] is not None for x in r)  # a scorer of global tasks only scores images, draws no map
        has_masks = bool(masks.any()) and has_maps
        stack = lambda k: torch.stack([x[k] for x in r])  # noqa: E731
        metrics = compute_anomaly_metrics(
            scores, labels, stack("map") if has_masks else None, masks if has_masks else None,
            stack("image"), stack("foreground"),
        )
        metrics["per_task"] = {
            k: _none_if_nan(roc_auc(torch.tensor([x["task_scores"][k] for x in r]), labels)) for k in r[0]["task_scores"]
        }
        metrics["image_scores"] = {
            k: {
                "auroc": _none_if_nan(roc_auc(v, labels)),
                "ap": _none_if_nan(average_precision(v, labels)),
            }
            for k, v in ((k, torch.tensor([x["image_scores"][k] for x in r])) for k in r[0]["image_scores"])
        }
        metrics["per_task_pixel_auroc_anomalous"] = {
            k: pixel_auroc_anomalous(torch.stack([x["task_maps"][k] for x in r]), masks, labels, stack("foreground"))
            for k in r[0]["task_maps"]
        } if has_masks else {}
        metrics["n_images"] = len(r)
        metrics["n_anomalous"] = int(labels.sum())
        metrics["skipped"] = {"count": len(self.skipped), "inputs": [list(s) for s in self.skipped]}
        flagged = torch.tensor([x["anomalous"] for x in r])
        metrics["flagged_fraction"] = float(flagged.float().mean())
        scorer = getattr(engine, "scorer", None)
        if scorer is not None:
            rate = lambda sel: float(flagged[sel].float().mean()) if bool(sel.any()) else None  # noqa: E731
            metrics["threshold"] = {
                "mode": scorer.mode,
                "image_score": scorer.deciding_score,
                "value": scorer.threshold,
                "nominal_fpr": scorer.fpr,
                "measured_fpr": rate(labels == 0),
                "n_normal": int((labels == 0).sum()),
                "tpr": rate(labels == 1),
            }
            counts = {k: v for k, v in scorer.training.items() if k.startswith("calibration_") or k.startswith("train_")}
            metrics["calibration"] = {**scorer.calibration, **counts}
            metrics["model"] = {k: v for k, v in scorer.training.items() if k not in counts}
        (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        order = sorted(range(len(r)), key=lambda i: r[i]["score"])
        picks = [("lowest", i) for i in order[: self.num_overlays]] + [("highest", i) for i in order[::-1][: self.num_overlays]]
        picks = picks if has_maps else []
        for rank, (tag, i) in enumerate(picks):
            x = r[i]
            render_overlay(
                self.output_dir / "overlays" / f"{tag}{rank % self.num_overlays + 1}_{stem(x['file'])}.png", x["image"], x["map"], x["task_maps"],
                x["mask"] if x["mask"].any() else None,
                f"{Path(x['file']).name}  label {x['label']}  score {x['score']:.2f}  p {x['p_value']:.3f}",
            )
        engine.state.metrics.update({k: v for k, v in metrics.items() if isinstance(v, float)})
        engine.logger.info(f"metrics written to {self.output_dir / 'metrics.json'}: " + json.dumps(
            {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "baseline_image_auroc_foreground")}))


    def _write_scores(self) -> None:
        r = self.rows
        tasks = list(r[0]["task_scores"]) if r else []
        with open(self.output_dir / "scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "score", "p_value", "anomalous", *tasks, "note"])
            for x in r:
                decision = "yes" if x["anomalous"] else "no"
                w.writerow([x["file"], x["label"], f"{x['score']:.6f}", f"{x['p_value']:.6f}", decision,
                            *[f"{x['task_scores'][t]:.6f}" for t in tasks], ""])
            for source, reason in self.skipped:
                w.writerow([source, "", "", "", "skipped", *[""] * len(tasks), reason])


def _none_if_nan(v: float) -> float | None:
    return None if v != v else float(v)


def output_path(output_dir: str | Path, name: str, postfix: str, data_root: str | Path | None = None) -> Path:
    """Where the output ``<stem>_<postfix>`` of input ``name`` goes: under ``output_dir`` at the input's path
    relative to ``data_root`` (so equal file names in different folders never collide), or directly in
    ``output_dir`` when the input lies outside ``data_root`` or none is given."""
    out = Path(output_dir)
    if data_root:
        root = Path(data_root)
        root = root.parent if root.is_file() else root
        try:
            out = out / Path(name).resolve().parent.relative_to(root.resolve())
        except ValueError:  # not under data_root
            pass
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{stem(name)}_{postfix}"


class AnomalyMapWriter:
    """Writes, per input, its anomaly map in the input's own grid and orientation, and ``scores.csv`` at the end.

    The fused map, computed at the training size, goes back through the inverse of the deterministic
    preprocessing (MONAI ``Invertd``: resize, spacing, RAS pose), so it lies on the input voxel for voxel:

    - 2D pictures (PNG, JPEG, BMP, TIFF): ``<stem>_map.npy`` (float32, ``(rows, columns)`` like
      ``numpy.asarray(PIL.Image.open(input))``), ``<stem>_map.png`` (8-bit, 128 at the scorer's pixel threshold,
      see :func:`~monai_mtlmad.scoring.overlay.map_to_uint8`) and ``<stem>_overlay.png`` (the input with the map
      over it, same size);
    - volumes (NIfTI, NRRD, MetaImage, DICOM series): ``<stem>_map.nii.gz``, float32, with the input's affine.

    Outputs mirror each input's path relative to ``data_root``. ``scores.csv``: file, score, p-value, decision,
    per-task scores, and a note; an input that could not be loaded or scored is recorded there as ``skipped`` with
    the reason (and in the log), and the others are scored.

    Args:
        output_dir: where to write. One that already holds a ``scores.csv`` from an earlier run is refused (nothing
            written before is lost) unless ``overwrite``, which lets this run replace the files in its way.
        preprocessing: the deterministic preprocessing the images went through (inverted for the maps).
        data_root: the folder the inputs were found in (a file: its folder).
        overwrite: see ``output_dir``.
    """

    def __init__(
        self, output_dir: str | Path, preprocessing, data_root: str | Path | None = None, overwrite: bool = False
    ) -> None:
        if (Path(output_dir) / "scores.csv").exists() and not overwrite:
            raise FileExistsError(f"{output_dir} already holds the results of an earlier run (scores.csv): choose "
                                  "another --output_dir, or replace them with --overwrite true.")
        self.output_dir, self.data_root = Path(output_dir), data_root
        self.invert = InvertMap(preprocessing)
        self.rows: list[list] = []
        self.skipped: list[tuple[str, str]] = []
        self.tasks: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_scores)

    def reset(self, engine: Engine) -> None:
        self.rows.clear()
        self.skipped = []

    def write_batch(self, engine: Engine) -> None:
        from monai_mtlmad.apps.serving import write_study_map

        o = engine.state.output
        self.skipped += [(str(s), r) for s, r in o.get("skipped", [])]
        if "score" not in o:
            return
        threshold = getattr(getattr(engine, "scorer", None), "map_threshold", None)
        self.tasks = list(o["task_scores"])
        if o["map"] is None:
            raise ValueError(f"the model's tasks ({', '.join(self.tasks)}) are all global: it scores images but draws no "
                             "anomaly map to write. Train with at least one dense task (inpainting, jigsaw, "
                             "pseudo_anomaly, pseudo_label, denoising), or evaluate it with evaluate.json.")
        for i, image in enumerate(o["inputs"]):
            name = str(image.meta["filename_or_obj"])
            amap = self.invert(image, o["map"][i])
            if is_raster(name):
                grid = amap[0].numpy().T  # MONAI's readers put x first; pictures are stored rows first
                np.save(output_path(self.output_dir, name, "map.npy", self.data_root), grid.astype(np.float32))
                grey = Image.fromarray(map_to_uint8(grid, threshold))
                grey.save(output_path(self.output_dir, name, "map.png", self.data_root))
                with Image.open(name) as picture:
                    overlay = blend_map(np.asarray(picture), grid, threshold)
                Image.fromarray(overlay).save(output_path(self.output_dir, name, "overlay.png", self.data_root))
            else:
                write_study_map(amap, name, output_path(self.output_dir, name, "map.nii.gz", self.data_root))
            decision = "yes" if bool(o["anomalous"][i]) else "no"
            self.rows.append([
                name, f"{float(o['score'][i]):.6f}", f"{float(o['p_value'][i]):.6f}", decision,
                *[f"{float(o['task_scores'][t][i]):.6f}" for t in self.tasks], "",
            ])

    def write_scores(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "score", "p_value", "anomalous", *self.tasks, "note"])
            w.writerows(self.rows)
            w.writerows([source, "", "", "skipped", *[""] * len(self.tasks), reason] for source, reason in self.skipped)
        message = f"scored {len(self.rows)} input(s), skipped {len(self.skipped)}; scores in {self.output_dir / 'scores.csv'}"
        (engine.logger.warning if self.skipped else engine.logger.info)(message)


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
        o = engine.state.output
        if self.first is None and o.get("map") is not None:  # scorers of global tasks only have no map
            self.first = {"image": o["image"][: self.max_images].cpu(), "map": o["map"][: self.max_images].cpu()}

    def write(self, engine: Engine) -> None:
        if self.first is None:
            return
        step = engine.state.epoch
        for key in ("image", "map"):
            x = self.first[key].float()
            if x.ndim == 5:
                x = x[..., x.shape[-1] // 2]
            x = x.mean(1, keepdim=True).transpose(-1, -2)  # MONAI's (x, y) -> pictures' (rows = y, columns = x)
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
