#!/usr/bin/env python
"""How steady are map weights selected on synthetic lesions, and do they carry over to real lesions?

For one trained model of ``scripts/compare_on_hard_sets.py`` (its calibration split, as ``train.json`` made it),
refit the scorer's calibration several times: with 1, 2 or 4 lesioned copies of each calibration normal
(``synthetic_copies``) and several draws of the synthetic lesions (the fit's ``seed``). On each draw's pixel sample,
several selection rules choose map weights:

- ``backward``: the scorer's 2D rule (:func:`~monai_mtlmad.scoring.fusion.select_map_weights`): start from the equal
  mixture of every map and drop, one at a time, the map whose removal gains most, while it gains more than ``tol``
  (0.005, the default; 0.001; 0.01): the larger ``tol``, the more the rule leans towards the mixture;
- ``forward``: the rule before session 11 and the scorer's 3D rule since session 17
  (:func:`~monai_mtlmad.scoring.fusion.forward_select_map_weights`: greedy forward selection with replacement, a
  step counting if it gains more than ``tol``), at ``tol`` 0.001 (its default) and 0.005: it leans towards one map;
- ``localising mixture``: the user's mixture of the maps that localise the synthetic lesions (own pixel AUROC above
  chance by more than 0.05), nothing eliminated.

Each rule's fused map is then scored on the independent test set's real lesions (pixel AUROC inside the lesion
images, as ``evaluate.json`` reports it), beside each single task's map and the equal mixture. The test set's raw task
outputs are computed once; only the calibration changes between rows.

    python scripts/map_selection_stability.py runs/hard_1000 chest --seed 0 --output runs/selection_chest0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from monai.data import DataLoader

import monai_mtlmad.scoring.scorer as scorer_module
from monai_mtlmad.apps.bundle import image_dataset, split_as_trained
from monai_mtlmad.data.bmad import bmad_datalist
from monai_mtlmad.data.loading import make_dataset
from monai_mtlmad.metrics import pixel_auroc_anomalous
from monai_mtlmad.metrics.functional import roc_auc
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.scoring.fusion import forward_select_map_weights, select_map_weights
from monai_mtlmad.transforms.foreground import foreground_mask


RULES = {
    "backward, tol 0.005 (default)": select_map_weights,
    "backward, tol 0.001": lambda v, y, n: select_map_weights(v, y, n, tol=1e-3),
    "backward, tol 0.01": lambda v, y, n: select_map_weights(v, y, n, tol=1e-2),
    "forward, tol 0.001 (before session 11)": forward_select_map_weights,
    "forward, tol 0.005": lambda v, y, n: forward_select_map_weights(v, y, n, tol=5e-3),
    # the maps that localise the synthetic lesions, mixed whole: no elimination (session 16's candidate for 3D,
    # where 16 calibration volumes make every removal hang on the draw)
    "localising mixture": lambda v, y, n: select_map_weights(v, y, n, tol=float("inf")),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="the --root of compare_on_hard_sets.py")
    p.add_argument("dataset", choices=["head", "chest"])
    p.add_argument("--seed", type=int, default=0, help="the trained model's seed (and its calibration split)")
    p.add_argument("--variant", default="5_tasks")
    p.add_argument("--test_images", type=int, default=200, help="0: the training set's own test split")
    p.add_argument("--copies", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--draws", nargs="+", type=int, default=[0, 1, 2], help="seeds of the synthetic lesions")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(2)

    model = args.root / "runs" / args.dataset / args.variant / f"seed{args.seed}" / "models" / "model.pt"
    scorer = AnomalyScorer.load(model)
    scorer.student, scorer.map_weights = None, "selected"
    _, calibration = split_as_trained(scorer, model, args.root / "data" / args.dataset, seed=args.seed)
    det, _ = scorer.preprocessing(with_mask=False)
    calibration = DataLoader(image_dataset(calibration, det, what="calibration"), batch_size=8)
    det_masked, _ = scorer.preprocessing(with_mask=True)
    # the independent test set, or (--test_images 0) the training set's own test split, as compare_on_hard_sets.py
    test_dir = args.root / "data" / (f"{args.dataset}_test{args.test_images}" if args.test_images else args.dataset)
    test = DataLoader(make_dataset(bmad_datalist(test_dir, "test", check=False), det_masked, num_workers=0), batch_size=8)
    raws, fgs, masks, labels = [], [], [], []
    with torch.no_grad():
        for batch in test:
            fgs.append(foreground_mask(batch["image"], scorer.rim))
            raws.append(scorer.raw(batch["image"], foreground=fgs[-1]))
            masks.append(torch.as_tensor(batch["mask"]) > 0)
            labels.append(torch.as_tensor(batch["label"]).reshape(-1))
    fg, mask, label = torch.cat(fgs), torch.cat(masks), torch.cat(labels)

    def real(weights: dict[str, float]) -> float:
        """Pixel AUROC inside the test lesion images of the map fused with ``weights`` (the calibration's scales)."""
        scorer.fitted_map_weights = {n: weights.get(n, 0.0) for n in scorer.feature_map_weights}
        fused = torch.cat([scorer._features(*scorer._normalise(r), f)[1] for r, f in zip(raws, fgs)])
        return pixel_auroc_anomalous(fused, mask, label, fg)

    chosen = {}  # the selection rules' answers on the pixel sample of the fit in progress

    def every_rule(values, labels_, names, *_, **__):
        for rule, select in RULES.items():
            chosen[rule] = select(values, labels_, names)
        return chosen[next(iter(RULES))]

    # fit passes its pixel sample to every rule, whichever rule the scorer would use
    scorer_module.MAP_SELECTIONS = dict.fromkeys(scorer_module.MAP_SELECTIONS, every_rule)
    rows = []
    for copies in args.copies:
        for draw in args.draws:
            scorer.synthetic_copies = copies
            with torch.no_grad():
                scorer.fit(calibration, seed=draw)
            if not rows:
                single = {n: real({n: 1.0}) for n in scorer.feature_map_weights}
                rows.append({"rule": "equal", "real": real(dict(scorer.feature_map_weights))})
                rows += [{"rule": f"{n} alone", "real": v} for n, v in single.items()]
            for rule, (weights, synthetic) in chosen.items():
                rows.append({"rule": rule, "copies": copies, "draw": draw, "synthetic": synthetic, "real": real(weights),
                             "weights": {n: round(w, 2) for n, w in weights.items() if w}})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.dataset} seed {args.seed}: real-lesion pixel AUROC (inside lesion images) per rule")
    for row in rows[: 1 + len(scorer.feature_map_weights)]:
        print(f"  {row['rule']:32s} {row['real']:.3f}")
    for rule in RULES:
        got = [r["real"] for r in rows if r["rule"] == rule]
        print(f"  {rule:32s} {min(got):.3f}-{max(got):.3f} over {len(got)} fits, mean {sum(got) / len(got):.3f}")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
