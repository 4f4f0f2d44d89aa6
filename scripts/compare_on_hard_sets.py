"""Image-score fusions, map weights and task lists on the harder generated sets, through the bundle path.

For each harder set (non-skull-stripped heads, chest CT; see ``monai_mtlmad.data.make_demo_dataset(hard=True)``),
each task-list variant and each seed: train with ``bundle/configs/train.json`` (as a user would), then evaluate the
exported model with ``bundle/configs/evaluate.json``: in the full mode as exported (trained with the first
``--map_weights``, which names its rows), in the fast
mode (the single-pass student that ``bundle/configs/distill.json`` adds to a copy of the model file, ``--fast_steps``;
first task list only) and, in the full mode, recalibrated with each other ``--map_weights`` (``"equal"``,
``"synthetic"``, ``"selected"``; see :class:`~monai_mtlmad.scoring.AnomalyScorer`) on the same calibration
split (and, with ``--synthetic_copies K``, with K lesioned copies of each calibration normal; with ``--recalibrate``,
with the settings of :data:`RECALIBRATIONS`). Every metrics.json reports all image scores
(map quantile, task mean, one-class, synthetic weights), each task's image AUROC and pixel AUROC inside anomalous
images, and the trivial baselines. Writes ``results.json`` and ``results.md`` (mean +- std over seeds) under --root.

    python scripts/compare_on_hard_sets.py --root runs/hard --seeds 0 1 2

``--test_images N`` evaluates on an independent set of N test images drawn from the same generator with another
seed (the default 48 leave an AUROC sampling spread of about 0.05, as large as the differences measured). A model
already trained under --root is reused (its training seconds read from the model file) unless ``--retrain``.
``--spatial_dims 3`` does the same on NIfTI volumes of ``--size``^3 (keep them under a --root of their own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from monai_mtlmad.scoring.fusion import MAP_WEIGHTINGS

ROOT = Path(__file__).resolve().parents[1]
BASE_TASKS = ["inpainting", "jigsaw", "orientation", "pseudo_anomaly", "pseudo_label"]
VARIANTS = {
    "5 tasks": BASE_TASKS,
    "5 tasks + denoising": BASE_TASKS + ["denoising"],
    "5 tasks, tilted orientation": [{"name": "orientation", "tilt": 20} if t == "orientation" else t for t in BASE_TASKS],
    "5 tasks, small pseudo-anomalies": [{"name": "pseudo_anomaly", "radius_range": [0.02, 0.2]} if t == "pseudo_anomaly"
                                        else t for t in BASE_TASKS],
}
# --recalibrate NAME: the exported model refitted with these scorer settings, evaluated as the row named
# (refit: the scorer's defaults of the code running now, e.g. a selection rule changed since the model was trained)
RECALIBRATIONS = {"normal_std": ("normal-std features", {"feature_scale": "normal_std"}), "refit": ("refitted", {})}
RIM = {"head": 0.06, "chest": 0.0}  # the heads are not skull-stripped; CT keeps its rim


def bundle(config: str, *args: str) -> None:
    cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", "run", "--bundle_root", str(ROOT / "bundle"),
           "--config_file", str(ROOT / "bundle" / "configs" / config), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def recalibrate(model: Path, data: Path, out: Path | None, seed: int, network: Path | None = None, **settings):
    """Refit the exported model's scorer with other scorer ``settings`` (e.g. ``map_weights``) on the calibration
    split training used; with ``network`` (a training checkpoint), with that checkpoint's weights, as ``train.json``
    would have exported them with ``--selection last``. Returns the refitted scorer, saved to ``out`` unless None."""
    from monai.data import DataLoader

    from monai_mtlmad.apps.bundle import image_dataset, split_as_trained
    from monai_mtlmad.safe_io import load_checked
    from monai_mtlmad.scoring import AnomalyScorer

    scorer = AnomalyScorer.load(model)
    if network is not None:
        scorer.net.load_state_dict(load_checked(network)["network"])
        scorer.training = {**scorer.training, "epoch": scorer.training["last_epoch"], "selection": f"last ({network.name})"}
    scorer.student = None  # the fast mode was distilled and calibrated for the exported map weights
    _, items = split_as_trained(scorer, model, data, seed=seed)  # as train.json splits (same seed)
    det, _ = scorer.preprocessing(with_mask=False)
    loader = DataLoader(image_dataset(items, det, what="calibration"), batch_size=8)
    for key, value in settings.items():
        setattr(scorer, key, value)
    scorer.fit(loader)
    if out is not None:
        scorer.save(out)
    return scorer


def independent_test_set(root: Path, dataset: str, n: int) -> Path:
    """Where ``--test_images n`` keeps its independent test set of a dataset."""
    return root / "data" / f"{dataset}_test{n}"


def training_seconds(model: Path) -> float | None:
    """The training time the bundle recorded in the model file (read without rebuilding the learner)."""
    from monai_mtlmad.safe_io import load_checked

    return load_checked(model)["training"].get("training_seconds")


def summarise(runs: list[dict]) -> dict:
    """Mean and std over seeds of every figure, per (dataset, variant, map weights, test set)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = (r["dataset"], r["variant"], r["map_weights"])
        key += (f"{r['test_images']} test images",) if r.get("test_images") else ()
        groups.setdefault(key, []).append(r["figures"])
    out = {}
    for key, figs in groups.items():
        stats = {}
        for name in figs[0]:
            values = [f[name] for f in figs if f.get(name) is not None]
            if values:
                stats[name] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        out[" / ".join(key)] = {"n_seeds": len(figs), **{k: list(v) for k, v in stats.items()}}
    return out


def figures(metrics: dict) -> dict:
    f = {f"image: {k}": v["auroc"] for k, v in metrics["image_scores"].items()}
    f.update({f"image task: {k}": v for k, v in metrics["per_task"].items()})
    f["image: trivial foreground fraction"] = metrics["baseline_image_auroc_foreground"]
    f["pixel in anomalous: fused"] = metrics["pixel_auroc_anomalous"]
    f.update({f"pixel in anomalous: {k}": v for k, v in metrics["per_task_pixel_auroc_anomalous"].items()})
    f["pixel in anomalous: raw intensity"] = metrics["baseline_pixel_auroc_intensity_anomalous"]
    f["pixel: fused"] = metrics["pixel_auroc"]
    f["aupro: fused"] = metrics["pixel_aupro"]
    f["measured fpr"] = metrics["threshold"]["measured_fpr"]
    return f


def table(summary: dict) -> str:
    rows = sorted({name for s in summary.values() for name in s if name != "n_seeds"})
    cols = list(summary)
    lines = ["| figure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name in rows:
        cells = []
        for c in cols:
            v = summary[c].get(name)
            cells.append(f"{v[0]:.3f} ± {v[1]:.3f}" if v else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/hard")
    p.add_argument("--datasets", nargs="+", default=["head", "chest"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:2], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--spatial_dims", type=int, default=2, choices=(2, 3), help="3: NIfTI volumes of --size^3")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--spacing", type=float, default=None,
                   help="3D: resample to this isotropic spacing (mm) in a --size^3 field of view (train.json --spacing); "
                        "default: fit each whole volume into it")
    p.add_argument("--crop_to_body", default=None, choices=("true", "false"),
                   help="3D: crop each volume to its body's box before fitting it (train.json --crop_to_body; "
                        "default: the bundle's, off)")
    p.add_argument("--n_train", type=int, default=80)
    p.add_argument("--n_valid", type=int, default=32)
    p.add_argument("--n_test", type=int, default=48)
    p.add_argument("--map_weights", nargs="+", default=["selected", "equal"], choices=list(MAP_WEIGHTINGS),
                   help="the first trains the model (train.json --map_weights), the others recalibrate it")
    p.add_argument("--fast_steps", type=int, default=1000, help="the fast mode's distillation (0: no fast mode)")
    p.add_argument("--test_images", type=int, default=0,
                   help="evaluate on an independent set of this many test images (0: the training set's own 48)")
    p.add_argument("--synthetic_copies", type=int, default=1,
                   help="above 1: also recalibrate with this many lesioned copies of each calibration normal")
    p.add_argument("--recalibrate", nargs="*", default=[], choices=list(RECALIBRATIONS),
                   help="also evaluate the model recalibrated with these scorer settings")
    p.add_argument("--last_epoch", action="store_true",
                   help="also evaluate the last epoch's weights (as --selection last exports them), calibrated with "
                        "each --map_weights (rows 'WEIGHTS, last epoch')")
    p.add_argument("--retrain", action="store_true",
                   help="train even where --root holds a model already (its earlier rows are dropped)")
    args = p.parse_args()

    from monai_mtlmad.data import make_demo_dataset

    root = Path(args.root)
    results_path = root / "results.json"
    runs = json.loads(results_path.read_text())["runs"] if results_path.exists() else []
    done = {(r["dataset"], r["variant"], r["seed"], r["map_weights"], r.get("test_images", 0)) for r in runs}
    for dataset in args.datasets:
        data = root / "data" / dataset
        if not data.exists():
            make_demo_dataset(data, args.spatial_dims, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
                              size=args.size, seed=100, anatomy=dataset, hard=True)
        if args.test_images and not (test_data := independent_test_set(root, dataset, args.test_images)).exists():
            make_demo_dataset(test_data, args.spatial_dims, n_train=8, n_valid=8, n_test=args.test_images,
                              size=args.size, seed=200, anatomy=dataset, hard=True)
    for seed in args.seeds:  # seeds outermost: a run cut short still covers every dataset and variant
        for dataset in args.datasets:
            data = root / "data" / dataset
            for variant in args.variants:
                fast = args.fast_steps > 0 and variant == args.variants[0]
                trained_with = args.map_weights[0]
                wanted = list(args.map_weights) + ([f"{trained_with}, fast mode"] if fast else [])
                if args.synthetic_copies > 1:
                    wanted.append(f"{trained_with}, {args.synthetic_copies} synthetic copies")
                wanted += [RECALIBRATIONS[name][0] for name in args.recalibrate]
                wanted += [f"{w}, last epoch" for w in args.map_weights] if args.last_epoch else []
                if not args.retrain and all((dataset, variant, seed, w, args.test_images) in done for w in wanted):
                    continue
                out = root / "runs" / dataset / variant.replace(", ", "_").replace(" ", "_").replace("+", "plus") / f"seed{seed}"
                start = time.time()
                tasks = repr(VARIANTS[variant])  # names, or {"name": ..., **options}
                model = out / "models" / "model.pt"
                if args.retrain or not model.is_file():
                    bundle("train.json", "--dataset_dir", str(data), "--output_dir", str(out), "--max_epochs",
                           str(args.epochs), "--val_interval", str(args.epochs // 2), "--seed", str(seed),
                           "--spatial_dims", str(args.spatial_dims), "--image_size", str(args.size),
                           "--rim", str(RIM[dataset]), "--task_names", tasks,
                           "--map_weights", trained_with, "--overwrite", "true",
                           *(["--spacing", str(args.spacing)] if args.spacing else []),
                           *(["--crop_to_body", args.crop_to_body] if args.crop_to_body else []))
                    # the rows of the model just replaced describe another model now
                    runs = [r for r in runs if (r["dataset"], r["variant"], r["seed"]) != (dataset, variant, seed)]
                    done = {key for key in done if key[:3] != (dataset, variant, seed)}
                trained = training_seconds(model)
                fast_model = out / "models" / "model_fast.pt"
                if fast and (args.retrain or not fast_model.is_file()):
                    bundle("distill.json", "--dataset_dir", str(data), "--model_path", str(model), "--output_path",
                           str(fast_model), "--fast_steps", str(args.fast_steps), "--seed", str(seed))
                paths = {trained_with: model, f"{trained_with}, fast mode": fast_model}
                for weights in args.map_weights[1:]:  # the exported model, recalibrated
                    paths[weights] = out / "models" / f"model_{weights}.pt"
                    if args.retrain or not paths[weights].is_file():
                        recalibrate(model, data, paths[weights], seed, map_weights=weights)
                copies = f"{trained_with}, {args.synthetic_copies} synthetic copies"
                copies_model = out / "models" / f"model_copies{args.synthetic_copies}.pt"
                if copies in wanted and (args.retrain or not copies_model.is_file()):
                    recalibrate(model, data, copies_model, seed, synthetic_copies=args.synthetic_copies)
                paths[copies] = copies_model
                for name in args.recalibrate:
                    row, settings = RECALIBRATIONS[name]
                    paths[row] = out / "models" / f"model_{name}.pt"
                    if args.retrain or not paths[row].is_file():
                        recalibrate(model, data, paths[row], seed, **settings)
                for weights in args.map_weights if args.last_epoch else []:
                    row, checkpoint = f"{weights}, last epoch", out / "checkpoints" / f"checkpoint_epoch={args.epochs}.pt"
                    paths[row] = out / "models" / ("model_last_epoch.pt" if weights == trained_with else f"model_{weights}_last_epoch.pt")
                    if args.retrain or not paths[row].is_file():
                        recalibrate(model, data, paths[row], seed, network=checkpoint, map_weights=weights)
                test_data = independent_test_set(root, dataset, args.test_images) if args.test_images else data
                suffix = f"_test{args.test_images}" if args.test_images else ""
                for weights in wanted:
                    if (dataset, variant, seed, weights, args.test_images) in done:
                        continue
                    evaluation = out / f"eval_{weights.replace(', ', '_').replace(' ', '_')}{suffix}"
                    bundle("evaluate.json", "--dataset_dir", str(test_data), "--model_path", str(paths[weights]),
                           "--output_dir", str(evaluation), "--fast", str(weights.endswith("fast mode")).lower())
                    metrics = json.loads((evaluation / "metrics.json").read_text())
                    runs.append({"dataset": dataset, "variant": variant, "seed": seed, "map_weights": weights,
                                 "test_images": args.test_images, "train_seconds": trained, "figures": figures(metrics)})
                results_path.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
                print(f"{dataset} / {variant} / seed {seed}: {time.time() - start:.0f} s", flush=True)
    summary = summarise(runs)
    results_path.write_text(json.dumps({"args": vars(args), "runs": runs, "summary": summary}, indent=1))
    (root / "results.md").write_text(table(summary) + "\n", encoding="utf-8")
    print(table(summary))


if __name__ == "__main__":
    main()
