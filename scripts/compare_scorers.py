#!/usr/bin/env python
"""The scorer before issue 8 (in-sample calibration, maps normalised before smoothing, MAD scales) against the
current one, on the same trained learner and the same phantoms as ``scripts/evaluate_phantoms.py``.

    python scripts/evaluate_phantoms.py --steps 600 --size 128 --shared --output runs/phantom_eval
    python scripts/compare_scorers.py runs/phantom_eval/model.pt

The old scorer is read from git (commit e3bca4e), so this runs in a clone of the repository only.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_phantoms  # noqa: E402

from monai_mtlmad.metrics import compute_anomaly_metrics  # noqa: E402
from monai_mtlmad.scoring import AnomalyScorer  # noqa: E402

OLD = "e3bca4e"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="runs/phantom_eval/model.pt")
    p.add_argument("--rim", type=float, default=0.06)
    args = p.parse_args()
    torch.set_num_threads(2)
    data = argparse.Namespace(size=128, spatial_dims=2, n_train=64, n_calib=16, n_test=24, seed=0)
    _, calib, images, masks, labels = evaluate_phantoms.make_data(data)
    learner = AnomalyScorer.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        source = subprocess.run(["git", "show", f"{OLD}:monai_mtlmad/scoring/scorer.py"], capture_output=True,
                                text=True, check=True, cwd=Path(__file__).parent).stdout
        (Path(tmp) / "old_scorer.py").write_text(source)
        sys.path.insert(0, tmp)
        from old_scorer import AnomalyScorer as OldScorer

        scorers = {"before": OldScorer(learner.net, learner.tasks, rim=args.rim).fit(calib),
                   "now": AnomalyScorer(learner.net, learner.tasks, rim=args.rim).fit(calib)}
    for name, scorer in scorers.items():
        res = scorer.score(images)
        for kind, score in (("map q99", res.image_scores["map_quantile"]), ("task mean", res.image_scores["task_mean"])):
            m = compute_anomaly_metrics(score, labels, res.map, masks, images, res.foreground)
            figures = ", ".join(f"{k} {m[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_auroc_anomalous"))
            print(f"{name:7s} {kind:10s} {figures}")


if __name__ == "__main__":
    main()
