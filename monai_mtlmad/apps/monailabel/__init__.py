# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""MONAI Label app: anomaly maps, segmentations and calibrated scores served to 3D Slicer and OHIF, retraining on the
studies an annotator confirmed normal, and the most anomalous unlabelled study proposed first.

Needs the ``monailabel`` extra (``pip install "monai-mtlmad[monailabel]"``; see the README for a CPU set-up).
Serve a trained model file on a folder of studies::

    python -m monai_mtlmad.apps.monailabel serve --model runs/demo/models/model.pt --studies /data/studies

or write an app folder for ``monailabel start_server --app DIR --studies ...``::

    python -m monai_mtlmad.apps.monailabel app DIR --model runs/demo/models/model.pt
"""

from monai_mtlmad.apps.monailabel.app import MTLMADApp
from monai_mtlmad.apps.monailabel.tasks import AnomalyInfer, MostAnomalous, NormalsTrain, normal_studies

__all__ = ["MTLMADApp", "AnomalyInfer", "MostAnomalous", "NormalsTrain", "normal_studies"]
