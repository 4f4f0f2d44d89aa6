# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The MONAI Label app around one model file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelException

from monai_mtlmad.apps.bundle import as_flag
from monai_mtlmad.apps.monailabel.tasks import AnomalyInfer, MostAnomalous, NormalsTrain
from monai_mtlmad.apps.serving import StudyScorer

__all__ = ["MTLMADApp"]

logger = logging.getLogger(__name__)


class MTLMADApp(MONAILabelApp):
    """Serves a trained MTL-MAD model file (the bundle's ``models/model.pt``) on a folder of studies.

    Infer models: ``mtlmad_anomaly`` (the anomaly segment, label 1) and ``mtlmad_map`` (the float32 map), both with
    the image score, p-value, decision, per-task scores and expert usage in the JSON. Train: ``mtlmad_anomaly``
    (fine-tunes on the studies confirmed normal, publishes only if not worse). Strategy: ``most_anomalous``.

    Conf (``--conf key value`` of ``monailabel start_server``): ``model`` (default ``<app>/model/model.pt``),
    ``device`` (default CUDA when available), ``fast`` (true/false; default the fast mode when the file holds one
    that kept the full mode's quality), ``train_steps``, ``min_normals``.

    Bad requests are answered with an HTTP error that names the problem (404: no such study; 422: a study the model
    cannot score, e.g. unreadable, or of other dimensions or channels), and the server goes on serving.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.model_path = Path(conf.get("model") or os.path.join(app_dir, "model", "model.pt"))
        self.study_scorer = StudyScorer(self.model_path, conf.get("device"), as_flag(conf.get("fast"), "fast"))
        self.study_scorer.version  # load now: a missing or broken model file stops the server at start, named
        self.train_steps = int(conf.get("train_steps", 200))
        self.min_normals = int(conf.get("min_normals", 8))
        from monai_mtlmad import __version__

        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MTL-MAD anomaly detection",
                         description="Anomaly maps, segments and calibrated scores from a learner trained on normals",
                         version=__version__, labels={"anomaly": 1})

    def init_infers(self):
        return {"mtlmad_anomaly": AnomalyInfer(self.study_scorer, "segmentation"),
                "mtlmad_map": AnomalyInfer(self.study_scorer, "map")}

    def init_trainers(self):
        return {"mtlmad_anomaly": NormalsTrain(self.study_scorer, steps=self.train_steps, min_normals=self.min_normals)}

    def init_strategies(self):
        return {"most_anomalous": MostAnomalous(self.study_scorer)}

    def infer(self, request, datastore=None):
        image = str(request.get("image", ""))
        store = datastore or self.datastore()
        if image and not os.path.exists(image) and image not in store.list_images():
            raise HTTPException(status_code=404, detail=f"no study {image!r} in the datastore.")
        try:
            return super().infer(request, datastore)
        except FileNotFoundError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e

    def train(self, request):
        try:
            return super().train(request)
        except MONAILabelException as e:
            raise HTTPException(status_code=422, detail=e.msg) from e
