"""What any fusion of today's task outputs could reach: a ceiling that sees the test labels (session 22, section 2).

For each cache of ``scripts/lesion_scale_image_study.py --cache`` (test images with their labels, per-task image
features and maps): the image AUROC of every single feature, of the default (``score:synthetic``), of an L2 logistic
regression over the standardised features fitted on the test labels themselves (5-fold cross-validated predictions,
several strengths; and fitted and scored on all of them, an optimistic bound on linear fusions). The regression is an
oracle no user has (it is told which test images are lesioned): if it cannot beat the best single feature, no fusion
chosen from normals can.

    python docs/session20_diagnostics/fusion_ceiling.py CACHE/chest_seed3_test200.pt CACHE/chest_seed4_test200.pt ...
"""

import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

for path in sys.argv[1:]:
    rec = torch.load(path, weights_only=False)
    y = np.asarray(rec["label"])
    x = np.asarray(rec["features"], dtype=np.float64)
    single = {name: roc_auc_score(y, x[:, i]) for i, name in enumerate(rec["feature_names"])}
    best = max(single, key=single.get)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    oracle = {}
    for c in (0.01, 0.1, 1.0):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        oracle[f"C={c}"] = roc_auc_score(y, cross_val_predict(model, x, y, cv=folds, method="decision_function"))
    # fitted and scored on the same labelled images: optimistic even for an oracle (a bound on linear fusions)
    in_sample = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=5000)).fit(x, y)
    oracle["in-sample, C=100"] = roc_auc_score(y, in_sample.decision_function(x))
    print(f"{path}: default {roc_auc_score(y, np.asarray(rec['score:synthetic'])):.3f}, "
          f"best single {single[best]:.3f} ({best}), oracle logistic regression "
          + ", ".join(f"{k}: {v:.3f}" for k, v in oracle.items()))
    print("  single features: " + ", ".join(f"{n} {v:.3f}" for n, v in single.items()))
