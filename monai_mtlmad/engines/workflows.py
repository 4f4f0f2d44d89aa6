# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Ignite engines: the multi-task trainer and the anomaly evaluator (MONAI ``Trainer`` / ``Evaluator``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from monai.data import MetaTensor, decollate_batch
from monai.engines import Evaluator, Trainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_mtlmad.data.checks import describe_failure
from monai_mtlmad.engines.multitask_step import clip_and_step, multitask_loss
from monai_mtlmad.losses.multitask import MultiTaskLoss
from monai_mtlmad.scoring.scorer import AnomalyScorer
from monai_mtlmad.tasks.base import ProxyTask

__all__ = ["MultiTaskTrainer", "AnomalyEvaluator", "batch_images", "normal_batches"]


def batch_images(batch: dict, key: str, device) -> torch.Tensor:
    """The batch's ``key`` as a plain float tensor on ``device``."""
    x = batch[key]
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return x.to(device).float()


def normal_batches(loader: Iterable, key: str, device) -> Iterator[torch.Tensor]:
    """The normal images (``label`` 0, or all when a batch has no labels) of each batch, skipping empty ones."""
    for b in loader:
        images = batch_images(b, key, device)
        labels = torch.as_tensor(b.get("label", torch.zeros(len(images)))).to(device)
        if (labels == 0).any():
            yield images[labels == 0]


class MultiTaskTrainer(Trainer):
    """One optimizer step per batch over all proxy tasks, firing MONAI's iteration events.

    ``engine.state.output`` holds ``Keys.IMAGE`` (the batch), ``Keys.LOSS`` (joint loss) and ``"losses"`` (per task,
    ``moe``, ``total``), so MONAI's StatsHandler/TensorBoard handlers work as with ``SupervisedTrainer``. Task
    curricula follow ``iteration / (max_epochs * epoch_length)``.

    Args:
        device, max_epochs, train_data_loader, epoch_length, train_handlers, amp: as ``SupervisedTrainer``.
        network: the learner (possibly ``DistributedDataParallel``-wrapped).
        tasks: its proxy tasks.
        optimizer: optimises the network (and the loss' learned weights).
        loss_function: :class:`~monai_mtlmad.losses.MultiTaskLoss`.
        image_key: batch key of the images.
        images_per_task: optional per-task subset of each batch.
        grad_clip: max gradient norm.
        seed: seed of the task views' generator (offset by the distributed rank).
        amp: run the forward pass and the losses under bfloat16 autocast (the range of float32, so no loss scaling;
            on GPUs with bf16 tensor cores, as the H100/H200, it roughly halves the step). The views and the
            optimiser stay in float32.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        tasks: Sequence[ProxyTask],
        optimizer: torch.optim.Optimizer,
        loss_function: MultiTaskLoss,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        image_key: str = "image",
        images_per_task: int | None = None,
        grad_clip: float | None = 5.0,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(
            device=torch.device(device),
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            handlers=train_handlers,
            decollate=False,
        )
        self.network, self.tasks, self.optimizer, self.loss_function = network, list(tasks), optimizer, loss_function
        self.image_key, self.images_per_task, self.grad_clip = image_key, images_per_task, grad_clip
        self.amp = bool(amp)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.generator = torch.Generator(device=self.state.device).manual_seed(seed + 1000 * rank)

    def _iteration(self, engine: MultiTaskTrainer, batchdata: dict) -> dict:  # type: ignore[override]
        images = batch_images(batchdata, self.image_key, engine.state.device)
        total_iterations = max(1, engine.state.max_epochs * (engine.state.epoch_length or 1))
        for task in self.tasks:
            task.set_progress((engine.state.iteration - 1) / total_iterations)
        extra = {k: v.to(images.device) for k, v in batchdata.items() if torch.is_tensor(v) and len(v) == len(images)}
        self.network.train()
        engine.state.output = {Keys.IMAGE: images}
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            total, parts = multitask_loss(
                self.network, self.tasks, self.loss_function, images, self.generator, extra, self.images_per_task
            )
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = total
        engine.state.output["losses"] = parts
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        clip_and_step(self.optimizer, self.grad_clip)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output[Keys.LOSS] = total.detach()
        return engine.state.output


class AnomalyEvaluator(Evaluator):
    """Scores every batch with an :class:`~monai_mtlmad.scoring.AnomalyScorer`.

    ``engine.state.output`` holds ``image``, ``score``, ``label``, ``map``, ``mask`` (zeros without ground truth),
    ``foreground``, ``task_scores``, ``task_maps``, ``p_value``, ``anomalous``, ``inputs`` (each image as loaded,
    a ``MetaTensor`` with its file name, affine and transform history, or None for plain tensors) and ``skipped``
    (``[(source, reason), ...]`` of the batch's inputs that could not be loaded or scored), so metric handlers and
    writers can read what they need. An input that fails to score is isolated (the batch is scored image by image)
    and skipped; a batch whose inputs were all skipped gives an output with ``skipped`` only.

    Args:
        device, val_data_loader, epoch_length, key_val_metric, additional_metrics, val_handlers: as
            ``SupervisedEvaluator``.
        scorer: the detector, or a callable returning it (so a trainer can hand over its current network).
        calibration: optional iterable of normal batches; when given, the scorer is re-calibrated on it at the
            start of each run (validation during training).
        task_loss: also put the joint task loss on fixed-seed training views of each batch, at full curriculum
            difficulty, in ``output["loss"]``: the validation figure when the validation split holds no anomalous
            image (fixed views and difficulty, so it does not drift with the curricula of training).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        scorer: AnomalyScorer | Callable[[], AnomalyScorer],
        calibration: Iterable | None = None,
        epoch_length: int | None = None,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        val_handlers: Sequence | None = None,
        image_key: str = "image",
        task_loss: bool = False,
    ) -> None:
        super().__init__(
            device=torch.device(device),
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            val_handlers=val_handlers,
            decollate=False,
        )
        self._scorer = scorer
        self.calibration = calibration
        self.image_key = image_key
        self.task_loss = task_loss
        self.scorer: AnomalyScorer | None = None

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        self.scorer = self._scorer() if callable(self._scorer) and not isinstance(self._scorer, AnomalyScorer) else self._scorer
        if self.calibration is not None:
            self.scorer.fit(normal_batches(self.calibration, self.image_key, self.state.device))
        super().run(global_epoch)

    def _score_each(self, images: torch.Tensor, fg: torch.Tensor | None, sources: list) -> tuple[list[int], list]:
        """After a batch failed to score: which images score on their own, and why the others do not."""
        keep, failed = [], []
        for i in range(images.shape[0]):
            try:
                self.scorer.score(images[i : i + 1], foreground=None if fg is None else fg[i : i + 1])
                keep.append(i)
            except Exception as e:  # one input must not sink the batch
                failed.append((sources[i], describe_failure(e, sources[i])))
        return keep, failed

    @staticmethod
    def _nothing_scored(engine: AnomalyEvaluator, skipped: list) -> dict:
        """The output of a batch none of whose inputs could be scored: what was skipped, and why."""
        engine.state.output = {"skipped": skipped}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _iteration(self, engine: AnomalyEvaluator, batchdata: dict) -> dict:  # type: ignore[override]
        skipped = list(batchdata.get("skipped", []))  # inputs that failed to load or preprocess
        if self.image_key not in batchdata:  # every input of this batch was skipped
            return self._nothing_scored(engine, skipped)
        images = batch_images(batchdata, self.image_key, engine.state.device)
        fg = batchdata.get(f"{self.image_key}_foreground")
        fg = None if fg is None else torch.as_tensor(fg).to(images.device)
        raw = batchdata[self.image_key]
        inputs = decollate_batch(raw) if isinstance(raw, MetaTensor) else [None] * images.shape[0]
        mask = batch_images(batchdata, "mask", images.device) if batchdata.get("mask") is not None else None
        label = batchdata.get("label")
        label = torch.as_tensor(label).to(images.device).long() if label is not None else None
        try:
            res = self.scorer.score(images, foreground=fg)
        except Exception:  # find the input(s) at fault, score the others
            sources = [getattr(x, "meta", {}).get("filename_or_obj", f"image {i}") for i, x in enumerate(inputs)]
            keep, failed = self._score_each(images, fg, sources)
            for source, reason in failed:
                self.logger.warning(f"skipped {reason}")
            skipped += failed
            if not keep:
                return self._nothing_scored(engine, skipped)
            images, inputs = images[keep], [inputs[i] for i in keep]
            fg, mask, label = (None if t is None else t[keep] for t in (fg, mask, label))
            res = self.scorer.score(images, foreground=fg)
        n = images.shape[0]
        engine.state.output = {
            Keys.IMAGE: images,
            "score": res.score,
            "image_scores": res.image_scores,
            "label": label if label is not None else torch.zeros(n, dtype=torch.long, device=images.device),
            "map": res.map,
            "mask": mask if mask is not None else torch.zeros(res.foreground.shape, device=images.device),
            "foreground": res.foreground,
            "task_scores": res.task_scores,
            "task_maps": res.task_maps,
            "p_value": res.p_value,
            "anomalous": res.anomalous,
            "inputs": inputs,
            "expert_usage": res.expert_usage,
            "skipped": skipped,
        }
        if self.task_loss:
            tasks = self.scorer.tasks
            progress = [t.progress for t in tasks]
            for t in tasks:
                t.set_progress(1.0)
            try:
                with torch.no_grad(), self.scorer.net.separate_usage():
                    total, _ = multitask_loss(
                        self.scorer.net, tasks, MultiTaskLoss([t.name for t in tasks]), images,
                        torch.Generator(device=images.device).manual_seed(0),
                    )
            finally:
                for t, p in zip(tasks, progress):
                    t.set_progress(p)
            engine.state.output["loss"] = float(total)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
