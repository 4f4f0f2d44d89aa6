#!/usr/bin/env python
"""Image-score fusions chosen without anomalies, compared on models trained by ``compare_on_hard_sets.py``.

Every candidate fuses the same per-image feature vector (each task's error, each dense task's map quantile, the
fused map's quantile) and is fitted on what calibration sees: the calibration normals and the same normals with a
synthetic lesion of a family no task trains on. Each model is refitted once with today's scorer while its feature
vectors are recorded, its independent test images are scored once, and every fusion is then a few lines of numpy.
The figure is each fusion's image AUROC on the test images minus the best single task's (paired, per seed).

    python scripts/compare_on_hard_sets.py --root runs/hard_1000 --seeds 0 1 2 --test_images 200 ...  # the models
    python scripts/image_fusion_study.py runs/hard_1000 --datasets chest head --seeds 0 1 2

Candidates: ``synthetic`` (the default: weights ``(AUROC - 0.5)^2`` from each feature's synthetic-lesion AUROC),
the same on z-scored features or with power 1, the fused map's quantile, the single feature with the best
synthetic AUROC, shrinkage LDA and logistic regression (synthetic against normal), the z-mean of the features above
0.6, a greedy forward selection of features, Fisher's combination of each feature's normal-tail p-value, and the
sum of the default's and the fused map quantile's z-scores on the calibration normals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression  # the test extra: pip install -e ".[test]"

import monai_mtlmad.scoring.scorer as scorer_module
from monai_mtlmad.metrics.functional import roc_auc
from monai_mtlmad.scoring.fusion import auroc_weights, synthetic_feature_weights

sys.path.insert(0, str(Path(__file__).parent))
from compare_on_hard_sets import recalibrate  # noqa: E402


def recorded_features(model: Path, data: Path, test_data: Path, seed: int) -> dict:
    """The model refitted on its calibration split (as ``train.json`` split it), with the feature vectors of the
    calibration normals ``(N, F)`` and of their lesioned copies ``(N, F)`` recorded on their way into
    :func:`~monai_mtlmad.scoring.fusion.synthetic_feature_weights`, and those of the test images ``(T, F)``."""
    from monai.data import DataLoader

    from monai_mtlmad.apps.bundle import image_dataset
    from monai_mtlmad.data.bmad import bmad_datalist

    record, weigh = {}, scorer_module.synthetic_feature_weights

    def recording(normal, lesioned, names, *settings):
        record.update(normal=normal.double().numpy(), synthetic=lesioned.double().numpy(), names=list(names),
                      settings=settings)
        return weigh(normal, lesioned, names, *settings)

    scorer_module.synthetic_feature_weights = recording
    try:
        scorer = recalibrate(model, data, None, seed)
    finally:
        scorer_module.synthetic_feature_weights = weigh
    det, _ = scorer.preprocessing(with_mask=False)
    test = bmad_datalist(test_data, "test", check=False)
    features = []
    with torch.no_grad():
        for batch in DataLoader(image_dataset(test, det), batch_size=8):
            fg = scorer_module.foreground_mask(batch["image"], scorer.rim)
            task_scores, task_maps = scorer._normalise(scorer.raw(batch["image"], foreground=fg))
            features.append(scorer._features(task_scores, task_maps, fg)[0].double().cpu().numpy())
    record.update(test=np.concatenate(features), labels=np.array([int(d.get("label", 0)) for d in test]),
                  tasks=[t.name for t in scorer.tasks])
    return record


def fusions(rec: dict) -> dict[str, np.ndarray]:
    """Every candidate's test scores ``(T,)``, each fitted on the calibration normals and their lesioned copies."""
    normal, synthetic, test, names = rec["normal"], rec["synthetic"], rec["test"], rec["names"]
    is_lesioned = np.r_[np.zeros(len(normal)), np.ones(len(synthetic))]

    def auroc(n, s):
        return roc_auc(np.r_[n, s], is_lesioned)

    aurocs, default = synthetic_feature_weights(torch.from_numpy(normal), torch.from_numpy(synthetic), names,
                                                *rec["settings"])  # as the scorer fits them
    weights = np.array([default[n] for n in names])
    mu, sd = normal.mean(0), normal.std(0) + 1e-6
    zn, zs, zt = ((x - mu) / sd for x in (normal, synthetic, test))
    out = {
        "synthetic (default)": test @ weights,
        "synthetic, z-scored features": zt @ weights,
        "synthetic, power 1": test @ np.array([auroc_weights(aurocs, power=1.0)[n] for n in names]),
        "fused map quantile": test[:, names.index("fused:map")],
        "best synthetic feature": test[:, int(np.argmax([aurocs[n] for n in names]))],
        "Gaussian tail of z, AUROC weights": (-norm.logsf(zt)) @ weights,
    }
    above = [i for i, n in enumerate(names) if aurocs[n] >= 0.6]
    if above:  # none on a barely trained learner
        out["z mean of features with AUROC >= 0.6"] = zt[:, above].mean(1)
    pooled = np.cov(np.r_[zn - zn.mean(0), zs - zs.mean(0)].T)
    for shrink in (0.3, 1.0):
        direction = np.linalg.solve((1 - shrink) * pooled + shrink * np.eye(len(names)), zs.mean(0) - zn.mean(0))
        out[f"shrinkage LDA ({shrink})"] = zt @ direction
    for c in (0.1, 1.0):
        fitted = LogisticRegression(C=c, max_iter=2000).fit(np.r_[zn, zs], is_lesioned)
        out[f"logistic regression (C={c})"] = fitted.decision_function(zt)
    chosen = [int(np.argmax([aurocs[n] for n in names]))]  # greedy forward over z-means
    while True:
        gains = [(auroc(zn[:, chosen + [j]].mean(1), zs[:, chosen + [j]].mean(1)), j)
                 for j in range(len(names)) if j not in chosen]
        if not gains or max(gains)[0] <= auroc(zn[:, chosen].mean(1), zs[:, chosen].mean(1)) + 0.001:
            break
        chosen.append(max(gains)[1])
    out["greedy forward z-mean"] = zt[:, chosen].mean(1)
    ranked = np.sort(normal, 0)  # -log of each feature's normal-tail p-value, (r + 1) / (N + 1)
    tail = np.stack([-np.log((len(normal) - np.searchsorted(ranked[:, i], test[:, i]) + 1) / (len(normal) + 1))
                     for i in range(len(names))], 1)
    out["Fisher, AUROC weights"] = tail @ weights
    # the two that each won one set in session 12 (synthetic on heads, the fused map on chest), z-scored on the
    # calibration normals and summed: written down before seeds 3-5 were trained (docs/NOTES_session15.md)
    fused = test[:, names.index("fused:map")], normal[:, names.index("fused:map")]
    weighted = test @ weights, normal @ weights
    out["synthetic + fused map quantile, z-summed"] = sum((t - n.mean()) / (n.std() + 1e-12) for t, n in (weighted, fused))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a --root of compare_on_hard_sets.py")
    p.add_argument("--datasets", nargs="+", default=["chest", "head"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variant", default="5_tasks")
    p.add_argument("--test_images", type=int, default=200)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    root = Path(args.root)
    margins: dict[str, dict[str, list[float]]] = {}
    for dataset in args.datasets:
        for seed in args.seeds:
            model = root / "runs" / dataset / args.variant / f"seed{seed}" / "models" / "model.pt"
            rec = recorded_features(model, root / "data" / dataset, root / "data" / f"{dataset}_test{args.test_images}", seed)
            y = rec["labels"]
            best_task = max(roc_auc(rec["test"][:, rec["names"].index(t)], y) for t in rec["tasks"])
            margins.setdefault("best single task (AUROC, not a margin)", {}).setdefault(dataset, []).append(best_task)
            for name, scores in fusions(rec).items():
                margins.setdefault(name, {}).setdefault(dataset, []).append(roc_auc(scores, y) - best_task)
    lines = ["| image AUROC minus the best single task's (paired; seeds " + " / ".join(map(str, args.seeds)) + ") | "
             + " | ".join(args.datasets) + " |", "|---|" + "---|" * len(args.datasets)]
    for name, per in margins.items():
        sign = "" if name.startswith("best single task") else "+"
        cells = [f"{statistics.mean(v):{sign}.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f} ("
                 + " / ".join(f"{x:{sign}.3f}" for x in v) + ")" for v in (per[d] for d in args.datasets)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    (root / "image_fusion_study.md").write_text(table + "\n", encoding="utf-8")
    (root / "image_fusion_study.json").write_text(json.dumps(margins, indent=1))


if __name__ == "__main__":
    main()
