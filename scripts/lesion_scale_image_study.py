#!/usr/bin/env python
"""Image features at lesion scale: does the peak of a map smoothed to a lesion's size find lesioned volumes better
than today's image score?

Today's image features are whole-image task errors and the 99th foreground percentile of each map. A lesion in the
harder 3D heads covers 0.1-5 % of the head (median about 300 voxels of a 48^3 volume), so a 1 % quantile mixes its
voxels with the brightest normal ones. The candidates here are the maximum over the foreground of a map smoothed by
a Gaussian of ``sigma`` voxels (masked to the foreground, so the rim's zeros do not dilute it) and the 99.9th
percentile, for the shown (selected) fused map, the user's mixture and each task's map; and each map's 99.9th
percentile above its median in units of its interquartile range over the same image's foreground (the peak against
the image's own spread: a head compared with itself, not with other heads); and its two halves across the heads'
mirror plane compared (:func:`halves`).

For each model of ``scripts/compare_on_hard_sets.py`` the scorer is refitted on its calibration split with today's
defaults, the test images are scored once, and their normalised task maps are cached (``--cache``), so every
candidate is a few lines here. Printed: each candidate's image AUROC per seed beside the default image score, each
task's image error and the trivial foreground fraction; with ``--pixel`` also the pixel AUROC inside the lesion images
of the shown map, the user's mixture, each task's map and raw intensity (the 3D map point on new test sets).

    python scripts/lesion_scale_image_study.py runs/hard3d_nocrop head --seeds 1 2 --cache runs/lesion_scale
    python scripts/lesion_scale_image_study.py runs/hard3d_nocrop head --seeds 1 2 3 4 --test_images 96 --pixel ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from monai.data import DataLoader
from monai.networks.layers import GaussianFilter

from monai_mtlmad.apps.bundle import image_dataset, split_as_trained
from monai_mtlmad.data.bmad import bmad_datalist
from monai_mtlmad.data.loading import make_dataset
from monai_mtlmad.metrics import pixel_auroc_anomalous
from monai_mtlmad.metrics.functional import roc_auc
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.scoring.fusion import _mixture  # the fused map's weighted mean, here of the user's weights
from monai_mtlmad.transforms.foreground import foreground_mask, foreground_quantile

SIGMAS = (1.0, 2.0, 3.0)


def model_path(root: Path, dataset: str, seed: int, variant: str) -> Path:
    """Where ``compare_on_hard_sets.py`` wrote a model."""
    return root / "runs" / dataset / variant / f"seed{seed}" / "models" / "model.pt"


def test_loader(scorer: AnomalyScorer, root: Path, dataset: str, test_images: int) -> DataLoader:
    """The test images with masks and labels, preprocessed as ``scorer`` stores it: the independent set of
    ``test_images`` images, or (0) the training set's own test split."""
    det, _ = scorer.preprocessing(with_mask=True)
    test_dir = root / "data" / (f"{dataset}_test{test_images}" if test_images else dataset)
    return DataLoader(make_dataset(bmad_datalist(test_dir, "test", check=False), det, num_workers=0), batch_size=8)


def record(root: Path, dataset: str, seed: int, variant: str, test_images: int) -> dict:
    """The refitted scorer's view of the test images: normalised task maps, fused maps (shown and user's mixture),
    foreground, lesion masks, labels, every image score and feature."""
    model = model_path(root, dataset, seed, variant)
    scorer = AnomalyScorer.load(model)
    scorer.student = None
    _, calibration = split_as_trained(scorer, model, root / "data" / dataset, seed=seed)
    det, _ = scorer.preprocessing(with_mask=False)
    with torch.no_grad():
        scorer.fit(DataLoader(image_dataset(calibration, det, what="calibration"), batch_size=8), seed=0)
    out: dict[str, list] = {}
    with torch.no_grad():
        for batch in test_loader(scorer, root, dataset, test_images):
            images = batch["image"]
            fg = foreground_mask(images, scorer.rim)
            task_scores, task_maps = scorer._normalise(scorer.raw(images, foreground=fg))
            features, fused = scorer._features(task_scores, task_maps, fg)
            user = _mixture(task_maps, scorer.feature_map_weights)
            scores = scorer._image_scores(features)
            for key, value in (("fg", fg), ("mask", torch.as_tensor(batch["mask"]) > 0),
                               ("label", torch.as_tensor(batch["label"]).reshape(-1)), ("features", features),
                               ("fused", fused.half()), ("user", user.half()),
                               *((f"map:{n}", m.half()) for n, m in task_maps.items()),
                               *((f"score:{n}", s) for n, s in scores.items())):
                out.setdefault(key, []).append(value.cpu())
    rec = {k: torch.cat(v) for k, v in out.items()}
    rec["feature_names"] = scorer.feature_names
    rec["map_weights"] = dict(scorer.fitted_map_weights)
    return rec


def test_images(root: Path, dataset: str, seed: int, variant: str, test_images: int) -> torch.Tensor:
    """The test images as the model preprocesses them ``(B, C, *spatial)`` (raw intensity, the trivial map)."""
    scorer = AnomalyScorer.load(model_path(root, dataset, seed, variant))
    return torch.cat([torch.as_tensor(batch["image"]) for batch in test_loader(scorer, root, dataset, test_images)])


def pixel_aurocs(rec: dict, images: torch.Tensor) -> dict[str, float]:
    """Pixel AUROC inside the lesion images (as ``evaluate.json`` reports it) of the shown map, the user's mixture,
    each task's map and raw intensity."""
    maps = {"shown map": rec["fused"], "user mixture": rec["user"],
            **{k[4:]: v for k, v in rec.items() if k.startswith("map:")}, "raw intensity": images}
    return {name: pixel_auroc_anomalous(m.float(), rec["mask"], rec["label"], rec["fg"]) for name, m in maps.items()}


def peak(maps: torch.Tensor, fg: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B,)`` maximum over the foreground of ``maps (B, 1, *spatial)`` smoothed by a Gaussian of ``sigma`` voxels
    within the foreground (normalised convolution), ignoring voxels whose neighbourhood is mostly background."""
    maps, fg = maps.float(), fg.float()
    smooth = GaussianFilter(maps.ndim - 2, sigma)
    weight = smooth(fg)
    value = smooth(maps * fg) / weight.clamp_min(1e-6)
    inside = (weight > 0.5) & (fg > 0)
    return torch.where(inside, value, torch.full_like(value, -float("inf"))).flatten(1).amax(1)


def halves(maps: torch.Tensor, fg: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``(B,)`` comparisons of a head's two halves across the last spatial axis (the generated heads' mirror
    plane), split at the foreground's centre of mass, each in units of ``spread (B,)`` (the map's foreground
    interquartile range): the difference of the halves' mean, and the 99.9th percentile of the map minus its mirror
    image (over voxels whose mirror is foreground too)."""
    maps, fg = maps[:, 0].float(), fg[:, 0].bool()
    n = fg.shape[-1]
    idx, j = torch.arange(n, dtype=torch.float32), torch.arange(n)
    half, mirror = [], []
    for x, f, iqr in zip(maps, fg, spread):
        c = (f.float().flatten(0, -2).sum(0) * idx).sum() / f.sum()
        half.append((x[f & (idx < c)].mean() - x[f & (idx >= c)].mean()).abs() / iqr)
        jm = int(torch.round(2 * c)) - j  # voxel j's mirror
        ok = (jm >= 0) & (jm < n)
        xm, fm = torch.zeros_like(x), torch.zeros_like(f)
        xm[..., j[ok]], fm[..., j[ok]] = x[..., jm[ok]], f[..., jm[ok]]
        mirror.append(torch.quantile((x - xm)[f & fm], 0.999) / iqr)
    return torch.stack(half), torch.stack(mirror)


def candidates(rec: dict) -> dict[str, torch.Tensor]:
    """Every image score to compare, ``{name: (B,)}``."""
    fg, out = rec["fg"], {}
    for name in [k for k in rec if k.startswith("score:")]:
        out[f"today: {name[6:]}"] = rec["score:" + name[6:]]
    for i, name in enumerate(rec["feature_names"]):
        out[f"feature {name}"] = rec["features"][:, i]
    out["trivial: foreground fraction"] = fg.float().flatten(1).mean(1)
    for label, key in (("shown", "fused"), ("user mixture", "user"),
                       *((n[4:], n) for n in rec if n.startswith("map:"))):
        maps = rec[key]
        q = {p: foreground_quantile(maps.float(), fg, p)[0] for p in (0.25, 0.5, 0.75, 0.999)}
        spread = (q[0.75] - q[0.25]).clamp_min(1e-6)
        out[f"{label} q99.9"] = q[0.999]
        # the peak in units of the image's own spread: compares a head with itself, not with other heads
        out[f"{label} peak over own spread"] = (q[0.999] - q[0.5]) / spread
        out[f"{label} half difference"], out[f"{label} mirror peak"] = halves(maps, fg, spread)
        for s in SIGMAS:
            out[f"{label} peak s{s:g}"] = peak(maps, fg, s)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="the --root of compare_on_hard_sets.py")
    p.add_argument("dataset", choices=["head", "chest"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--variant", default="5_tasks")
    p.add_argument("--test_images", type=int, default=0, help="0: the training set's own test split")
    p.add_argument("--cache", type=Path, default=None, help="folder for the recorded test maps")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--pixel", action="store_true", help="also the maps' pixel AUROC inside the lesion images")
    p.add_argument("--paired", action="store_true",
                   help="the test set is paired (make_demo_dataset(paired=True): normal i is lesion i's original): "
                        "also each score's paired win rate, the share of lesioned images scoring above their twin")
    args = p.parse_args()
    torch.set_num_threads(2)
    table: dict[str, dict[int, float]] = {}
    pixel_table: dict[str, dict[int, float]] = {}
    win_table: dict[str, dict[int, float]] = {}
    for seed in args.seeds:
        cached = args.cache / f"{args.dataset}_seed{seed}_test{args.test_images}.pt" if args.cache else None
        if cached is not None and cached.exists():
            rec = torch.load(cached, weights_only=False)  # our own cache (it holds MONAI MetaTensors)
        else:
            rec = record(args.root, args.dataset, seed, args.variant, args.test_images)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(rec, cached)
        print(f"seed {seed}: shown map weights {rec['map_weights']}", flush=True)
        for name, score in candidates(rec).items():
            table.setdefault(name, {})[seed] = roc_auc(score, rec["label"])
            if args.paired:
                win_table.setdefault(name, {})[seed] = paired_win_rate(score, rec["label"])
        if args.pixel:
            images = test_images(args.root, args.dataset, seed, args.variant, args.test_images)
            for name, value in pixel_aurocs(rec, images).items():
                pixel_table.setdefault(name, {})[seed] = value
    rows = [("image AUROC", table)] + ([("pixel AUROC inside lesion images", pixel_table)] if args.pixel else [])
    rows += [("paired win rate (lesioned above its own twin)", win_table)] if args.paired else []
    for what, figures in rows:
        print(f"\n{what}, {args.dataset}, test images {args.test_images or 'own split'}, seeds {args.seeds}")
        summarise(figures)
    if args.output:
        args.output.write_text(json.dumps({"image_auroc": table, "pixel_auroc_anomalous": pixel_table,
                                           "paired_win_rate": win_table}, indent=1))


def paired_win_rate(score: torch.Tensor, label: torch.Tensor) -> float:
    """Share of pairs whose lesioned image scores above its lesion-free twin (ties count half), for a paired set
    read in its datalist order: the normals ``normal_i`` first, then the lesioned ``lesion_i``, both sorted by name."""
    normal, sick = score[label == 0], score[label == 1]
    if normal.numel() != sick.numel():
        raise ValueError(f"a paired set has as many normals as lesioned images, got {normal.numel()} and {sick.numel()}.")
    return float((sick > normal).float().mean() + 0.5 * (sick == normal).float().mean())


def summarise(table: dict[str, dict[int, float]]) -> None:
    """One line per score: its figure per seed, mean and standard deviation over seeds."""
    for name, per_seed in table.items():
        values = list(per_seed.values())
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:34s} " + " ".join(f"{v:.3f}" for v in values) + f"   mean {statistics.mean(values):.3f} "
              f"± {spread:.3f}")


if __name__ == "__main__":
    main()
