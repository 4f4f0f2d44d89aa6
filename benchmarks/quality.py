#!/usr/bin/env python
"""Detection quality at an equal training budget: MTL-MAD through the bundle, its ablation, from-scratch peers and
the trivial scores, on the same images, over several seeds.

Methods (``--methods``, default all):

- ``MTL-MAD (MoE)``: ``bundle/configs/train.json`` then ``evaluate.json`` in the full mode, as a user runs them (the
  default tasks, the fused map's top 1 % as the image score, the threshold from held-out normals);
- the ablation, same path: ``MTL-MAD (shared block)`` (``--moe false``) and ``<task> alone`` for each default task;
- the peers of ``benchmarks/peers.py``: ``autoencoder``, ``denoising autoencoder`` (Kascenas et al., MIDL 2022),
  ``DRAEM-style segmenter``, trained on the same training split, calibrated on the same held-out normals (the
  split ``train.json`` makes for the seed) and scored on the same test images in the same preprocessed grid;
- the trivial scores on the test set: foreground fraction (image), raw intensity (pixel).

Equal budget: each method gets ``--minutes`` of training. The peers train on a clock (their learning rate and
curriculum follow the elapsed share of the budget) and stop when it runs out. The bundle trains whole epochs: a
short pilot times the variant's own step (a throw-away copy on real augmented training batches), and it runs
``minutes / step time`` steps rounded to whole epochs, its cosine schedule over them, with the data augmented in
the training loop as the peers have it (``--num_workers 0``). The steps and the seconds the training actually took
(Ignite's epoch times for the bundle) are reported beside the figures; pilots, data caching, validation,
calibration and scoring are not counted.

Figures: image AUROC and AP, pixel AUROC, pixel AUROC inside the foreground of anomalous images, AUPRO (FPR <= 0.3),
the false-positive rate measured on the test normals at the threshold set for 5 %; mean and standard deviation over
seeds. Writes ``<output>.json`` (command, machine, date, every run) and ``<output>.md``; ``--plot`` draws the image and
in-lesion pixel AUROC of every method. Runs already in ``<output>.json`` are kept (a cut run resumes).

    python benchmarks/quality.py runs/demo_data --minutes 2 --seeds 0 1 --output benchmarks/results/quality_demo \\
        --rim 0.06 --plot benchmarks/results/quality_demo.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_runs import CONFIGS, bundle  # noqa: E402
from peers import PEERS, PeerDetector  # noqa: E402

FIGURES = ("image_auroc", "image_ap", "pixel_auroc", "pixel_auroc_anomalous", "pixel_aupro", "measured_fpr",
           "steps", "train_seconds")
HEADERS = ("image AUROC", "image AP", "pixel AUROC", "pixel AUROC in anomalous images", "AUPRO",
           "FPR at the 5 % threshold", "training steps", "training s")


def bundle_parser(overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(overrides)
    return parser


def default_tasks() -> list[str]:
    return list(bundle_parser({}).get("task_names"))


def method_names(tasks: list[str]) -> list[str]:
    return ["MTL-MAD (MoE)", "MTL-MAD (shared block)"] + [f"{t} alone" for t in tasks] + list(PEERS)


class Data:
    """The seed's split as ``train.json`` makes it, loaded once through the bundle's preprocessing."""

    def __init__(self, dataset_dir: Path, seed: int, args) -> None:
        from monai_mtlmad.apps.bundle import calibration_split
        from monai_mtlmad.data import bmad_datalist, preprocessing

        cfg = bundle_parser({})
        train_items, calib_items = calibration_split(
            bmad_datalist(dataset_dir, "train", check=False), bmad_datalist(dataset_dir, "valid", check=False),
            cfg.get("calibration_images"), cfg.get("calibration_max_fraction"), seed)
        kw = dict(preset=args.preset, spatial_size=args.image_size, spatial_dims=args.spatial_dims,
                  channels=args.channels, rim=args.rim)
        det, self.augment = preprocessing(with_mask=False, **kw)
        det_masked, _ = preprocessing(with_mask=True, **kw)
        self.n_train = len(train_items)
        self.train = torch.stack([torch.as_tensor(det(d)["image"]) for d in train_items])
        self.calibration = torch.stack([torch.as_tensor(det(d)["image"]) for d in calib_items])
        test = [det_masked(d) for d in bmad_datalist(dataset_dir, "test", check=False)]
        self.test = torch.stack([torch.as_tensor(d["image"]) for d in test])
        self.masks = torch.stack([torch.as_tensor(d["mask"]) for d in test]) > 0
        self.labels = torch.tensor([int(d["label"]) for d in test])

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """A training batch with the bundle's random augmentation."""
        idx = torch.randint(0, self.train.shape[0], (size,), generator=generator)
        return torch.stack([torch.as_tensor(self.augment({"image": self.train[i]})["image"]) for i in idx.tolist()])


def pilot(step, repeats: int = 3) -> float:
    """Median seconds of ``step()`` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_learner(method: str, tasks: list[str], seed: int, data: Data, args, out: Path) -> dict:
    """Pilot, train and evaluate one MTL-MAD variant through the bundle; its figures."""
    from monai_mtlmad.engines import multitask_train_step

    moe = method != "MTL-MAD (shared block)"
    names = tasks if method.startswith("MTL-MAD") else [method.removesuffix(" alone")]
    common = {"task_names": names, "moe": moe, "spatial_dims": args.spatial_dims, "image_size": args.image_size,
              "in_channels": args.channels, "device": "$torch.device('cpu')"}
    cfg = bundle_parser(common)
    net, task_objs, loss, opt = (cfg.get_parsed_content(k) for k in ("network", "tasks", "loss", "optimizer"))
    batch_size = int(cfg.get("batch_size"))
    g = torch.Generator().manual_seed(seed)
    step_s = pilot(lambda: multitask_train_step(net, task_objs, loss, opt, data.batch(batch_size, g), g))
    per_epoch = max(1, data.n_train // batch_size)
    epochs = max(1, round(args.minutes * 60 / step_s / per_epoch))
    names_arg = "[" + ",".join(f"'{t}'" for t in names) + "]"
    bundle("train.json", "--dataset_dir", str(args.dataset_dir), "--output_dir", str(out), "--max_epochs", str(epochs),
           "--val_interval", str(epochs), "--seed", str(seed), "--image_size", str(args.image_size), "--preset",
           args.preset, "--rim", str(args.rim), "--spatial_dims", str(args.spatial_dims), "--in_channels",
           str(args.channels), "--task_names", names_arg, "--moe", str(moe).lower(), "--overwrite", "true",
           "--num_workers", "0")  # augmentation in the training loop, as the peers have it: equal budgets
    bundle("evaluate.json", "--dataset_dir", str(args.dataset_dir), "--model_path", str(out / "models" / "model.pt"),
           "--output_dir", str(out / "test"), "--fast", "false")
    m = json.loads((out / "test" / "metrics.json").read_text())
    return {**{k: m[k] for k in FIGURES[:5]}, "measured_fpr": m["threshold"]["measured_fpr"],
            "steps": m["model"]["training_steps"], "train_seconds": m["model"]["training_seconds"],
            "pilot_step_seconds": step_s}


def run_peer(method: str, seed: int, data: Data, args) -> dict:
    """Train for exactly the budget (AdamW, the learning rate on a cosine of the elapsed share of the budget, the
    task's curriculum on the same clock), calibrate and evaluate one peer in this process; its figures."""
    from monai_mtlmad.metrics import compute_anomaly_metrics

    torch.manual_seed(seed)
    peer = PeerDetector(method, args.spatial_dims, args.channels, args.rim)
    opt = torch.optim.AdamW(peer.net.parameters(), lr=args.peer_lr, weight_decay=1e-4)
    batch_size = int(bundle_parser({}).get("batch_size"))
    g = torch.Generator().manual_seed(seed)
    budget, steps, t0 = args.minutes * 60, 0, time.perf_counter()
    while (progress := (time.perf_counter() - t0) / budget) < 1:
        for group in opt.param_groups:
            group["lr"] = args.peer_lr * 0.5 * (1 + math.cos(math.pi * progress))
        peer.train_step(data.batch(batch_size, g), opt, g, progress)
        steps += 1
    seconds = time.perf_counter() - t0
    threshold = peer.calibrate(data.calibration)
    maps, scores, fg = peer.maps(data.test)
    m = compute_anomaly_metrics(scores, data.labels, maps, data.masks, data.test, fg)
    normal = scores[data.labels == 0]
    return {**{k: m[k] for k in FIGURES[:5]}, "measured_fpr": float((normal >= threshold).float().mean()),
            "steps": steps, "train_seconds": round(seconds, 2)}


def trivial(data: Data, rim: float) -> dict[str, dict]:
    """The trivial scores on the test set: foreground fraction (image) and raw intensity (pixel)."""
    from monai_mtlmad.metrics import compute_anomaly_metrics
    from monai_mtlmad.scoring import foreground_mask

    fg = foreground_mask(data.test, rim)
    m = compute_anomaly_metrics(torch.zeros(len(data.labels)), data.labels, data.test.mean(1), data.masks, data.test, fg)
    return {"trivial: foreground fraction": {"image_auroc": m["baseline_image_auroc_foreground"]},
            "trivial: raw intensity": {"pixel_auroc": m["baseline_pixel_auroc_intensity"],
                                       "pixel_auroc_anomalous": m["baseline_pixel_auroc_intensity_anomalous"]}}


def summarise(runs: list[dict], order: list[str]) -> dict:
    out = {}
    for method in order:
        figs = [r["figures"] for r in runs if r["method"] == method]
        if not figs:
            continue
        stats = {"n_seeds": len(figs)}
        for name in FIGURES:
            values = [f[name] for f in figs if f.get(name) is not None]
            if values:
                stats[name] = [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
        out[method] = stats
    return out


def table(summary: dict) -> str:
    lines = ["| method | " + " | ".join(HEADERS) + " |", "|---|" + "---|" * len(HEADERS)]
    for method, s in summary.items():
        cells = []
        for name in FIGURES:
            v = s.get(name)
            if v is None:
                cells.append("")
            elif name in ("steps", "train_seconds"):
                cells.append(f"{v[0]:.0f}")
            else:
                cells.append(f"{v[0]:.3f} ± {v[1]:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in summary if not m.startswith("trivial")]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(methods) + 2.2))
    y = range(len(methods))
    for offset, (key, label, colour) in enumerate((("image_auroc", "image AUROC", "tab:blue"),
                                                    ("pixel_auroc_anomalous", "pixel AUROC in anomalous images",
                                                     "tab:orange"))):
        means = [summary[m].get(key, [math.nan])[0] for m in methods]
        stds = [summary[m].get(key, [0, 0])[1] for m in methods]
        ax.barh([i + 0.4 * offset - 0.2 for i in y], means, 0.4, xerr=stds, label=label, color=colour)
    for name, key, colour in (("trivial: foreground fraction", "image_auroc", "tab:blue"),
                              ("trivial: raw intensity", "pixel_auroc_anomalous", "tab:orange")):
        if key in summary.get(name, {}):
            ax.axvline(summary[name][key][0], color=colour, linestyle="--", linewidth=1, label=f"{name}")
    ax.set_yticks(list(y), methods)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", linewidth=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_dir", type=Path, help="a BMAD-layout folder (train/good, valid and test with Ungood)")
    p.add_argument("--minutes", type=float, default=2.0, help="training budget of every method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="default: all (see the list above)")
    p.add_argument("--output", default="benchmarks/results/quality", help="writes OUTPUT.json and OUTPUT.md")
    p.add_argument("--plot", default=None, help="a PNG of every method's AUROCs")
    p.add_argument("--work_dir", default=None, help="the bundle's runs; default runs/quality/<output name>")
    p.add_argument("--image_size", type=int, default=None, help="default: the bundle's (128 in 2D)")
    p.add_argument("--spatial_dims", type=int, default=2)
    p.add_argument("--channels", type=int, default=None, help="default: the BMAD dataset's, else 1")
    p.add_argument("--preset", default=None, help="default: the BMAD dataset's, else the bundle's")
    p.add_argument("--rim", type=float, default=None, help="foreground erosion; default: the preset's")
    p.add_argument("--peer_lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from monai_mtlmad.data import bmad_info, default_rim

    info = bmad_info(None, args.dataset_dir)
    defaults = bundle_parser({"spatial_dims": args.spatial_dims})
    args.image_size = args.image_size or defaults.get_parsed_content("image_size")
    args.channels = args.channels or (info.channels if info else 1)
    args.preset = args.preset or (info.preset if info else defaults.get_parsed_content("preset"))
    args.rim = default_rim(args.preset) if args.rim is None else args.rim
    tasks = default_tasks()
    methods = args.methods or method_names(tasks)
    unknown = set(methods) - set(method_names(tasks))
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {method_names(tasks)}")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = out.with_suffix(".json")
    runs = json.loads(results.read_text())["runs"] if results.exists() else []
    done = {(r["method"], r["seed"]) for r in runs}
    work = Path(args.work_dir or f"runs/quality/{out.name}")  # the bundle's runs (checkpoints, logs, maps)
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    baselines = None
    for seed in args.seeds:  # seeds outermost: a run cut short still covers every method
        data = Data(args.dataset_dir, seed, args)
        baselines = baselines or trivial(data, args.rim)
        for method in methods:
            if (method, seed) in done:
                continue
            start = time.time()
            if method in PEERS:
                figures = run_peer(method, seed, data, args)
            else:
                figures = run_learner(method, tasks, seed, data, args, work / method.replace(" ", "_") / f"seed{seed}")
            runs.append({"method": method, "seed": seed, "figures": figures})
            results.write_text(json.dumps({**header, "runs": runs}, indent=1))
            print(f"seed {seed} / {method}: image {figures['image_auroc']:.3f}, pixel in anomalous "
                  f"{figures['pixel_auroc_anomalous']}, {figures['steps']} steps, {time.time() - start:.0f} s",
                  flush=True)
    summary = summarise(runs, methods)
    for name, figs in (baselines or {}).items():
        summary[name] = {"n_seeds": 1, **{k: [v, 0.0] for k, v in figs.items() if v is not None}}
    results.write_text(json.dumps({**header, "runs": runs, "trivial": baselines, "summary": summary}, indent=1))
    md = (f"# Quality at an equal training budget: {args.dataset_dir.name}\n\n`{header['command']}`\n\n"
          f"{header['date']}, {header['machine']}; {args.minutes} min of training per method, seeds {args.seeds}, "
          f"{args.image_size} px, preset {args.preset}, rim {args.rim}.\n\n{table(summary)}\n")
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    if args.plot:
        plot(summary, Path(args.plot), f"{args.dataset_dir.name}: {args.minutes} min per method, {len(args.seeds)} seeds")
    print(table(summary))


if __name__ == "__main__":
    main()
