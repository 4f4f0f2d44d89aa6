#!/usr/bin/env python
"""Does each proxy task learn? Train the multi-task learner on generated phantoms, then report per task a
held-out figure beside its chance level or trivial baseline, and the routing (gate entropy, expert usage).

    python scripts/check_tasks.py --steps 300 --size 128 --output runs/task_check [--shared]
        [--options '{"orientation": {"tilt": 20}}']

Figures (held-out phantoms, deterministic views):
- orientation: pose accuracy over all poses (chance 1 / poses); with a tilt, the mean absolute error of the angle read
  off each view, in degrees, beside the error of always answering "untilted";
- jigsaw: per-pixel tile-position accuracy over the fixed inference permutations (chance 1 / tiles);
- pseudo_anomaly: Dice at 0.5 on fresh synthetic anomalies at full difficulty, beside the Dice of the trivial
  "everything in the foreground is anomalous" prediction;
- inpainting: mean absolute error on hidden pixels over the K complementary masks, beside a blurred-context
  baseline (normalised Gaussian convolution of the visible pixels);
- pseudo_label: accuracy on hidden pixels, beside the majority class;
- denoising (with ``--tasks ... denoising``): mean absolute error of the restoration of noisy views, beside that
  of the noisy input itself.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from monai.networks.layers import GaussianFilter

from monai_mtlmad.data import head_phantoms
from monai_mtlmad.engines import fit_learner
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def predictor(net, tasks):
    index = {t.name: i for i, t in enumerate(tasks)}

    def predict(inputs, task):
        ids = torch.full((inputs.shape[0],), index[task.name], dtype=torch.long)
        return net(inputs, ids)[task.name]

    return predict


@torch.no_grad()
def evaluate(net, tasks, images: torch.Tensor) -> dict:
    net.eval()
    predict = predictor(net, tasks)
    by_name = {t.name: t for t in tasks}
    res = {}
    if "orientation" in by_name:
        t = by_name["orientation"]
        hits, tilt_err, tilt_base = [], [], []
        for v in t.inference_views(images):
            out = predict(v.inputs, t)
            hits.append((out[:, : t.num_poses].argmax(1) == v.target).float())
            if t.tilt:  # the angle read off the view, in degrees, beside always answering "untilted"
                tilt_err.append((out[:, t.num_poses] - v.info["tilt"]).abs() * t.tilt)
                tilt_base.append(v.info["tilt"].abs() * t.tilt)
        res["orientation"] = {"accuracy": float(torch.cat(hits).mean()), "chance": 1 / t.num_poses}
        if t.tilt:
            res["orientation"]["tilt_mae_degrees"] = float(torch.cat(tilt_err).mean())
            res["orientation"]["untilted_answer_mae_degrees"] = float(torch.cat(tilt_base).mean())
    if "jigsaw" in by_name:
        t = by_name["jigsaw"]
        hit, n = 0.0, 0
        for v in t.inference_views(images):
            valid = v.target >= 0
            hit += float((predict(v.inputs, t).argmax(1) == v.target)[valid].sum())
            n += int(valid.sum())
        res["jigsaw"] = {"pixel_accuracy": hit / n, "chance": 1 / t.out_channels}
    if "pseudo_anomaly" in by_name:
        t = by_name["pseudo_anomaly"]
        prob, difficulty = t.transform.prob, t.transform.difficulty
        t.transform.prob, t.transform.difficulty = 1.0, 1.0
        views, target = t.transform.batched(images, torch.Generator().manual_seed(99))
        t.transform.prob, t.transform.difficulty = prob, difficulty
        pred = torch.sigmoid(predict(views, t)) > 0.5
        truth = target > 0.5
        fg = t.transform.foreground(images).unsqueeze(1)

        def dice(a, b):
            return float(2 * (a & b).sum() / (a.sum() + b.sum()).clamp_min(1))

        res["pseudo_anomaly"] = {"dice": dice(pred, truth), "trivial_foreground_dice": dice(fg, truth)}
    if "inpainting" in by_name:
        t = by_name["inpainting"]
        sigma = float(t.transform.patch_size if isinstance(t.transform.patch_size, int) else t.transform.patch_size[0]) / 2
        blur = GaussianFilter(images.ndim - 2, sigma)
        err = base = count = 0.0
        for v in t.inference_views(images):
            mask = v.info["mask"]
            visible = 1 - mask
            baseline = blur(images * visible) / blur(visible.expand_as(images)).clamp_min(1e-6)
            err += float(((predict(v.inputs, t) - images).abs() * mask).sum())
            base += float(((baseline - images).abs() * mask).sum())
            count += float(mask.sum()) * images.shape[1]
        res["inpainting"] = {"hidden_mae": err / count, "blurred_context_mae": base / count}
    if "pseudo_label" in by_name:
        t = by_name["pseudo_label"]
        hit = count = 0.0
        majority = None
        for v in t.inference_views(images):
            mask = v.info["mask"][:, 0] > 0
            hit += float((predict(v.inputs, t).argmax(1) == v.target)[mask].sum())
            count += float(mask.sum())
            if majority is None:
                freq = torch.bincount(v.target.flatten(), minlength=t.out_channels).float()
                majority = float(freq.max() / freq.sum())
        res["pseudo_label"] = {"hidden_accuracy": hit / count, "majority_class": majority}
    if "denoising" in by_name:
        t = by_name["denoising"]
        prob = t.transform.prob
        t.transform.prob = 1.0
        views, noise = t.transform.batched(images, torch.Generator().manual_seed(99))
        t.transform.prob = prob
        err = float((predict(views, t) - images).abs().mean())
        res["denoising"] = {"restored_mae": err, "noisy_input_mae": float(noise.abs().mean())}
    return res


@torch.no_grad()
def routing(net, tasks, images) -> dict:
    """Expert usage per block and task on held-out training views, with normalised gate entropies."""
    from monai_mtlmad.engines import build_task_batch

    net.eval()
    net.reset_usage()
    inputs, ids, _ = build_task_batch(tasks, images, torch.Generator().manual_seed(5))
    net(inputs, ids)
    out = {}
    for block, stats in net.expert_usage(reset=True).items():
        p = stats["probability"]
        reached = p.sum(1) > 0
        e = p.shape[1]
        ent = -(p * p.clamp_min(1e-9).log()).sum(1) / math.log(e)
        marginal = p[reached].mean(0)
        out[block] = {
            "task_gate_entropy": {t.name: round(float(ent[i]), 3) for i, t in enumerate(tasks) if reached[i]},
            "marginal_entropy": round(float(-(marginal * marginal.log()).sum() / math.log(e)), 3),
            "selection": {t.name: [round(float(v), 2) for v in stats["selection"][i]] for i, t in enumerate(tasks) if reached[i]},
        }
    return out


def run(args, moe: bool) -> dict:
    torch.manual_seed(args.seed)
    shape = (args.size,) * args.spatial_dims
    train = torch.from_numpy(head_phantoms(args.n_train, shape, seed=args.seed))
    held_out = torch.from_numpy(head_phantoms(args.n_eval, shape, seed=args.seed + 1000))
    options = json.loads(args.options)
    tasks = create_tasks([{"name": n, **options.get(n, {})} for n in args.tasks], args.spatial_dims)
    net = MTLMoENet(args.spatial_dims, 1, {t.name: t.head for t in tasks}, moe=moe)
    untrained = evaluate(net, tasks, held_out)
    t0 = time.time()
    tag = "moe" if moe else "shared"
    print(f"[{tag}] training {args.steps} steps", flush=True)
    losses = fit_learner(net, tasks, train, args.steps, args.batch, args.lr, args.seed, log_every=max(1, args.steps // 10))
    history = [{"step": i, **{k: round(v, 4) for k, v in p.items()}} for i, p in enumerate(losses) if i % max(1, args.steps // 10) == 0]
    train_s = time.time() - t0
    return {
        "moe": moe,
        "steps": args.steps,
        "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / args.steps, 3),
        "held_out": evaluate(net, tasks, held_out),
        "untrained": untrained,
        "routing": routing(net, tasks, held_out[: args.batch]) if moe else None,
        "history": history,
    }


def table(results: list[dict]) -> str:
    lines = ["| task | figure | untrained | " + " | ".join("MoE" if r["moe"] else "shared" for r in results) + " | reference |",
             "| --- | --- | --- | " + " | ".join("---" for _ in results) + " | --- |"]
    first = results[0]
    for task, figs in first["held_out"].items():
        keys = list(figs)
        for main, ref in zip(keys[::2], keys[1::2]):  # (figure, its chance or trivial reference) pairs
            vals = " | ".join(f"{r['held_out'][task][main]:.3f}" for r in results)
            lines.append(f"| {task} | {main} | {first['untrained'][task][main]:.3f} | {vals} | {ref} = {figs[ref]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="task names (default: the default task list)")
    p.add_argument("--options", default="{}", help='task options as JSON, e.g. \'{"orientation": {"tilt": 20}}\'')
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--spatial_dims", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n_train", type=int, default=64)
    p.add_argument("--n_eval", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shared", action="store_true", help="also train the moe=False ablation on the same budget")
    p.add_argument("--output", default="runs/task_check")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(args, True)] + ([run(args, False)] if args.shared else [])
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "task_check.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    report = table(results)
    if results[0]["routing"]:
        report += "\n\nRouting (MoE, held-out views): normalised gate entropy per task (0 = one expert, 1 = uniform)\n"
        for block, r in results[0]["routing"].items():
            report += f"- {block}: marginal {r['marginal_entropy']}, per task {r['task_gate_entropy']}\n"
            report += f"  selection {r['selection']}\n"
    (out / "task_check.md").write_text(report + "\n")
    print(report)
    print(f"\nwritten: {out / 'task_check.json'}, {out / 'task_check.md'}")


if __name__ == "__main__":
    main()
