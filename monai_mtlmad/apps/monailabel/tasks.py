# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""MONAI Label tasks of the MTL-MAD app: inference (segmentation or float map), retraining on confirmed normals, and
an active-learning strategy that proposes the most anomalous unlabelled study."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from monai_mtlmad.apps.bundle import as_flag
from monai_mtlmad.apps.serving import StudyScorer, write_study_map

__all__ = ["AnomalyInfer", "NormalsTrain", "MostAnomalous", "normal_studies"]

logger = logging.getLogger(__name__)

LABELS = {"anomaly": 1}


class AnomalyInfer(InferTask):
    """Scores one study with the served model file.

    ``output="segmentation"``: the anomaly segment (label 1 where the fused map reaches the pixel threshold the model
    file fixed on normal maps at its pixel false-positive rate), uint8, in the study's grid (NIfTI with the study's
    affine for volumes, PNG for pictures). ``output="map"``: the float32 fused map in the same grid (NIfTI, or TIFF
    for pictures). The JSON holds the image score, its p-value, the decision at the image threshold, both
    thresholds, the per-task scores, the expert usage while scoring and the model version.

    Args:
        scorer: the served model (shared by the app's tasks, reloaded when retraining publishes a new version).
        output: ``"segmentation"`` or ``"map"``.
    """

    def __init__(self, scorer: StudyScorer, output: str = "segmentation") -> None:
        if output not in ("segmentation", "map"):
            raise ValueError(f"output must be 'segmentation' or 'map', got {output!r}.")
        self.scorer, self.output = scorer, output
        dims = scorer.detector.net.spatial_dims if scorer.detector is not None else 3
        what = "anomaly segment (label 1)" if output == "segmentation" else "float32 anomaly map"
        super().__init__(
            type=InferType.SEGMENTATION if output == "segmentation" else InferType.OTHERS,
            labels=LABELS,
            dimension=dims,
            description=f"MTL-MAD: {what} of a study, with its image score, p-value and decision",
            config={"model": str(scorer.model_path)},
        )

    def is_valid(self) -> bool:
        return self.scorer.model_path.is_file()

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        study = str(request["image"])
        result = self.scorer(study)
        out = Path(tempfile.mkdtemp(prefix="mtlmad_")) / f"{self.output}.nii.gz"  # pictures: .png / .tif instead
        if self.output == "segmentation":
            path = write_study_map(result.segmentation, study, out, dtype=np.uint8)
        else:
            path = write_study_map(result.map, study, out, dtype=np.float32)
        return str(path), {**result.info, "output": self.output, "label_names": LABELS}


def normal_studies(datastore: Datastore) -> list[str]:
    """Image ids an annotator confirmed normal: a submitted (``final``) label that marks no voxel, or image info
    ``{"normal": true}`` (``PUT /datastore/image/info``)."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    normal = []
    for image_id in datastore.list_images():
        if str(datastore.get_image_info(image_id).get("normal", "")).lower() in ("true", "1", "yes"):
            normal.append(image_id)
            continue
        uri = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL)  # "" without a submitted label
        if uri:
            try:
                if not bool(np.asarray(load(uri)).any()):
                    normal.append(image_id)
            except Exception as e:  # an unreadable label is not a confirmation
                logger.warning(f"label of {image_id} ({uri}) unreadable, not counted as normal: {e}")
    return normal


class NormalsTrain(TrainTask):
    """Fine-tunes the served learner on the studies confirmed normal and publishes it only when it detects at least
    as well as the current version.

    The normals are split at random (``seed``): a quarter validates, a quarter calibrates, the rest train. Both the
    current and the fine-tuned learner are calibrated on the calibration quarter and judged on the validation
    quarter against copies of it with a synthetic lesion of a family no task generates (image AUROC,
    :func:`~monai_mtlmad.scoring.fusion.insert_validation_lesions`, the same lesions for both). If the new figure is
    not worse, the new version (calibrated on the calibration and validation normals) replaces the model file, the
    previous one is kept as ``model_v<N>.pt`` beside it, and the app serves the new one from the next request. A
    fast mode in the file is dropped (it was distilled from the previous network; retrain with the bundle's
    ``--fast_steps`` to have one again).

    The new version's image threshold is conformal at the model's ``fpr`` over those calibration normals, and there
    is none (no study flagged) with fewer than :func:`~monai_mtlmad.scoring.fusion.fewest_calibration_normals` of
    them (19 at 5 %, so 40 confirmed normals). When the version served now has one, a retraining that would lose it
    is refused before it trains (HTTP 422, naming how many normals are needed) unless the request allows it. The
    answer reports both thresholds.

    Request options: ``steps`` (default 200), ``learning_rate`` (1e-3), ``seed`` (0), ``tolerance`` (0: publish when
    the retrained figure is at least the current one minus this), ``allow_no_image_threshold`` (false).

    Args:
        scorer: the served model.
        steps, learning_rate, seed: defaults of the request options.
        min_normals: fewer confirmed normals are refused.
    """

    def __init__(self, scorer: StudyScorer, steps: int = 200, learning_rate: float = 1e-3, seed: int = 0,
                 min_normals: int = 8) -> None:
        super().__init__("MTL-MAD: fine-tune on the studies confirmed normal; publish only if not worse")
        self.scorer, self.steps, self.learning_rate, self.seed, self.min_normals = scorer, steps, learning_rate, seed, min_normals

    @property
    def stats_path(self) -> Path:
        return self.scorer.model_path.parent / "train_stats.json"

    def config(self) -> dict[str, Any]:
        return {"steps": self.steps, "learning_rate": self.learning_rate, "seed": self.seed}

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text()) if self.stats_path.is_file() else {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        from monai_mtlmad.engines import fit_learner
        from monai_mtlmad.scoring import AnomalyScorer, foreground_mask
        from monai_mtlmad.scoring.fusion import fewest_calibration_normals, insert_validation_lesions
        from monai_mtlmad.metrics import roc_auc

        start = time.time()
        steps = int(request.get("steps", self.steps))
        lr = float(request.get("learning_rate", self.learning_rate))
        seed = int(request.get("seed", self.seed))
        tolerance = float(request.get("tolerance", 0.0))
        allow_no_threshold = as_flag(request.get("allow_no_image_threshold", False), "allow_no_image_threshold")
        ids = normal_studies(datastore)
        if len(ids) < self.min_normals:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"{len(ids)} studies are confirmed normal; retraining needs at least {self.min_normals} (submit an empty "
                "final label, or set image info normal=true, for each normal study).",
            )
        path, device = self.scorer.model_path, self.scorer.device
        current = AnomalyScorer.load(path, map_location=device)
        version = int(current.training.get("version", 1))
        served_threshold = self.scorer.threshold  # the decision users get now (the fast mode's, where it serves)
        det, _ = current.preprocessing(with_mask=False)
        images, skipped = [], []
        for image_id in ids:
            try:
                images.append(torch.as_tensor(det({"image": datastore.get_image_uri(image_id)})["image"]))
            except Exception as e:  # one odd study does not stop the retraining; the result names it
                skipped.append({"id": image_id, "reason": str(e).splitlines()[0]})
        images = torch.stack(images).to(device)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(images), generator=g).tolist()
        quarter = max(2, len(images) // 4)
        validation, calibration = images[order[:quarter]], images[order[quarter : 2 * quarter]]
        training = images[order[2 * quarter :]]
        fewest = fewest_calibration_normals(current.fpr)
        if 2 * quarter < fewest and served_threshold is not None and not allow_no_threshold:
            # the published version calibrates on two quarters of the normals: 2 * (n // 4) >= fewest from this n
            needed = max(self.min_normals, 4 * math.ceil(fewest / 2)) + len(skipped)
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"{len(images)} readable confirmed normals leave {2 * quarter} to calibrate the retrained version, too "
                f"few for an image threshold at fpr {current.fpr} ({fewest} are needed), while the version served now "
                f"has one: the new version would flag no study. Confirm at least {needed} normal studies, or retrain "
                "with allow_no_image_threshold=true (its maps, segments and p-values would still hold).",
            )

        def judge(scorer: AnomalyScorer) -> float:
            scorer.student = None
            scorer.use_fast(False)
            scorer.fit(calibration, seed=seed)
            fg = foreground_mask(validation, scorer.rim)
            lesioned, _ = insert_validation_lesions(validation.cpu(), fg.cpu(), torch.Generator().manual_seed(seed))
            normal, sick = scorer.score(validation).score.cpu(), scorer.score(lesioned.to(device)).score.cpu()
            return float(roc_auc(torch.cat([normal, sick]), torch.cat([torch.zeros(len(normal)), torch.ones(len(sick))])))

        before = judge(current)
        new = AnomalyScorer.load(path, map_location=device)
        new.student = None
        fit_learner(new.net, new.tasks, training, steps, batch_size=min(4, len(training)), lr=lr, seed=seed)
        after = judge(new)
        published = after >= before - tolerance
        result = {
            "published": published,
            "version": version + 1 if published else version,
            "validation_image_auroc": {"current": before, "retrained": after, "tolerance": tolerance},
            "image_threshold": {"fpr": current.fpr, "current": served_threshold, "retrained": None,
                                "calibration_normals": 2 * quarter},
            "normals": {"train": len(training), "calibration": len(calibration), "validation": len(validation)},
            "skipped": skipped,
            "steps": steps,
            "seconds": round(time.time() - start, 1),
        }
        if published:
            new.fit(torch.cat([calibration, validation]), seed=seed)
            result["image_threshold"]["retrained"] = new.threshold
            if new.threshold is None:
                result["warning"] = (f"published without an image threshold: {2 * quarter} calibration normals are too "
                                     f"few for fpr {new.fpr} ({fewest} needed); this version flags no study")
            new.training = {**current.training, "version": version + 1, "retrained": {k: result[k] for k in
                                                                                      ("validation_image_auroc", "normals", "steps")}}
            shutil.copy2(path, path.with_name(f"model_v{version}.pt"))
            new.save(path)
        else:
            result["reason"] = "the retrained version separated the validation lesions less well than the current one"
        logger.info(f"retraining on {len(images)} confirmed normals: {result}")
        self.stats_path.write_text(json.dumps(result, indent=1))
        return result


class MostAnomalous(Strategy):
    """Proposes the unlabelled study with the highest anomaly score first (scores cached per model version)."""

    def __init__(self, scorer: StudyScorer) -> None:
        super().__init__("MTL-MAD: the most anomalous unlabelled study first")
        self.scorer = scorer
        self.cache: dict[tuple[str, int], float] = {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        version = self.scorer.version
        best = None
        for image_id in datastore.get_unlabeled_images():
            key = (image_id, version)
            if key not in self.cache:
                try:
                    self.cache[key] = self.scorer(datastore.get_image_uri(image_id)).info["score"]
                except (ValueError, FileNotFoundError) as e:
                    logger.warning(f"{image_id}: left out of the proposal: {e}")
                    continue
            if best is None or self.cache[key] > self.cache[best]:
                best = key
        return {} if best is None else {"id": best[0], "score": self.cache[best], "model_version": version}
