#!/usr/bin/env python
"""The detector on generated data: does the fused multi-task score beat each task alone, a reconstruction-only
peer trained for the same time, and the trivial baselines?

Normal phantoms train the learner; other normals calibrate the scorer; the test set holds normals and phantoms
with lesions (ring-enhancing tumours with mass effect, flat sharp infarcts, bright bleeds) that the
pseudo-anomaly task never generates.

    python scripts/evaluate_phantoms.py --steps 600 --size 128 --output runs/phantom_eval [--shared]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.networks.layers import GaussianFilter
from monai.networks.nets import AutoEncoder

from monai_mtlmad.data import head_phantoms, insert_lesions
from monai_mtlmad.engines import fit_learner
from monai_mtlmad.metrics import compute_anomaly_metrics
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.scoring import AnomalyScorer, foreground_mask, foreground_quantile, render_overlay
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks

COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro", "pixel_auroc_anomalous")


def make_data(args):
    shape = (args.size,) * args.spatial_dims
    train = head_phantoms(args.n_train, shape, seed=args.seed)
    calib = head_phantoms(args.n_calib, shape, seed=args.seed + 1)
    normal = head_phantoms(args.n_test, shape, seed=args.seed + 2)
    sick, brain = head_phantoms(args.n_test, shape, seed=args.seed + 3, return_brain=True)
    sick, lesion = insert_lesions(sick, brain, seed=args.seed)
    images = torch.cat([torch.from_numpy(normal), torch.from_numpy(sick)])
    masks = torch.cat([torch.zeros(normal.shape, dtype=torch.bool), torch.from_numpy(lesion)])
    labels = torch.cat([torch.zeros(args.n_test), torch.ones(args.n_test)]).long()
    return torch.from_numpy(train), torch.from_numpy(calib), images, masks, labels


def train_autoencoder(train, seconds, args):
    """Reconstruction-only peer: MONAI AutoEncoder (no skips), L1, trained for the same wall time."""
    torch.manual_seed(args.seed)
    ae = AutoEncoder(args.spatial_dims, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2, 2), num_res_units=1)
    opt = torch.optim.AdamW(ae.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    t0, steps = time.time(), 0
    while time.time() - t0 < seconds:
        x = train[torch.randint(0, train.shape[0], (args.batch,), generator=g)]
        loss = (ae(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return ae.eval(), steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--spatial_dims", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n_train", type=int, default=64)
    p.add_argument("--n_calib", type=int, default=16)
    p.add_argument("--n_test", type=int, default=24, help="normal and lesion test images each")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rim", type=float, default=0.06, help="foreground erosion: strips the phantom skull")
    p.add_argument("--shared", action="store_true", help="also the moe=False learner, same steps")
    p.add_argument("--output", default="runs/phantom_eval")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train, calib, images, masks, labels = make_data(args)
    fg = foreground_mask(images, args.rim)
    rows: dict[str, dict] = {}

    def record(name, scores, maps=None):
        m = compute_anomaly_metrics(scores, labels, maps, masks if maps is not None else None, images, fg)
        rows[name] = m
        print(f"{name:28s} " + " ".join(f"{k}={m[k]:.3f}" if m[k] is not None else f"{k}=-" for k in COLUMNS), flush=True)

    record("trivial: foreground fraction", fg.flatten(1).float().mean(1))
    record("trivial: raw intensity (map)", foreground_quantile(images, fg, 0.99)[0], images)
    train_seconds = None
    for moe in (True, False) if args.shared else (True,):
        tag = "MoE" if moe else "shared"
        torch.manual_seed(args.seed)
        tasks = create_tasks(DEFAULT_TASKS, args.spatial_dims)
        net = MTLMoENet(args.spatial_dims, 1, {t.name: t.head for t in tasks}, moe=moe)
        t0 = time.time()
        fit_learner(net, tasks, train, args.steps, args.batch, args.lr, args.seed, log_every=max(1, args.steps // 5))
        seconds = time.time() - t0
        train_seconds = train_seconds or seconds
        scorer = AnomalyScorer(net, tasks, rim=args.rim).fit(calib)
        t0 = time.time()
        res = scorer.score(images)
        score_s = time.time() - t0
        record(f"MTL-{tag} fused (map q99)", res.image_scores["map_quantile"], res.map)
        record(f"MTL-{tag} fused (task mean)", res.image_scores["task_mean"], res.map)
        if moe:
            for name, s in res.task_scores.items():
                tmap = res.task_maps.get(name)
                if tmap is not None:
                    q, tmap = foreground_quantile(tmap, res.foreground, 0.99)
                    record(f"  {name} alone (map q99)", q, tmap)
                record(f"  {name} alone (image error)", s, tmap)
            scorer.save(out / "model.pt")
            fpr_normal = float(res.anomalous[labels == 0].float().mean())
            tpr = float(res.anomalous[labels == 1].float().mean())
            rows["_threshold"] = {"fpr_target": scorer.fpr, "test_fpr": fpr_normal, "test_tpr": tpr,
                                  "train_seconds": round(seconds, 1), "score_seconds": round(score_s, 1),
                                  "images": int(images.shape[0])}
            order = torch.argsort(res.score)
            for rank, i in enumerate(order.tolist()[:2] + order.tolist()[-2:]):
                render_overlay(out / f"overlay_{rank}_{'lesion' if labels[i] else 'normal'}_{i}.png", images[i],
                               res.map[i], {k: v[i] for k, v in res.task_maps.items()}, masks[i],
                               f"case {i} label {int(labels[i])} score {float(res.score[i]):.2f} p {float(res.p_value[i]):.3f}")
    ae, ae_steps = train_autoencoder(train, train_seconds, args)
    with torch.no_grad():
        err = (ae(images) - images).abs()
    err = GaussianFilter(args.spatial_dims, 2.0)(err)
    q, emap = foreground_quantile(err, fg, 0.99)
    record(f"autoencoder ({ae_steps} steps, same time)", q, emap)
    (out / "phantom_eval.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = ["| scorer | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for name, m in rows.items():
        if not name.startswith("_"):
            lines.append(f"| {name.strip()} | " + " | ".join("-" if m[k] is None else f"{m[k]:.3f}" for k in COLUMNS) + " |")
    table = "\n".join(lines) + f"\n\nthreshold at FPR {scorer.fpr} on calibration normals: {rows['_threshold']}\n"
    (out / "phantom_eval.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
