"""The MONAI Bundle through `python -m monai.bundle`: metadata, network check, train -> evaluate -> inference in
2D and 3D, resuming a killed run, and DDP with gloo under torchrun."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_mtlmad.data import DEMO_AFFINE, make_demo_dataset
from monai_mtlmad.safe_io import load_checked
from monai_mtlmad.tasks import DEFAULT_TASKS

from helpers import CONFIGS, ROOT, bundle, configs, infer

METRIC_KEYS = [
    "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_aupro", "pixel_dice",
    "pixel_auroc_anomalous", "baseline_image_auroc_foreground", "baseline_pixel_auroc_intensity",
    "baseline_pixel_auroc_intensity_anomalous",
]


def common(data, run, dims, size, fast_steps=0):
    """Training flags of these tests; the fast mode's distillation only where a test checks it."""
    return ["--bundle_root", str(ROOT / "bundle"), "--dataset_dir", str(data), "--output_dir", str(run),
            "--spatial_dims", str(dims), "--image_size", str(size), "--num_workers", "0", "--batch_size", "2",
            "--fast_steps", str(fast_steps)]


def test_metadata_and_network_verify():
    out = bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(CONFIGS / "schema.json"))
    assert "metadata is verified with no error" in out.stdout + out.stderr
    out = bundle("verify_net_in_out", "verify_net", "--meta_file", str(CONFIGS / "metadata.json"),
                 "--config_file", str(CONFIGS / "train.json"))
    assert "data shape of network is verified with no error" in out.stdout + out.stderr


def test_config_workflow_properties(tmp_path):
    from monai.bundle import ConfigWorkflow

    import torch

    from monai_mtlmad.data import head_phantoms
    from monai_mtlmad.networks import MTLMoENet
    from monai_mtlmad.scoring import AnomalyScorer
    from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks

    data = make_demo_dataset(tmp_path / "data", 2, n_train=2, n_valid=2, n_test=2, size=32)
    tasks = create_tasks(DEFAULT_TASKS, 2)
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks})  # the configs' defaults
    model = tmp_path / "model.pt"
    scorer = AnomalyScorer(net, tasks, preprocessing={"preset": "png", "spatial_size": 32})
    scorer.fit(torch.from_numpy(head_phantoms(2, (32, 32)))).save(model)
    for config, kind in ((CONFIGS / "train.json", "train"), (CONFIGS / "inference.json", "infer")):
        wf = ConfigWorkflow(config_file=str(config), meta_file=str(CONFIGS / "metadata.json"),
                            logging_file=str(CONFIGS / "logging.conf"), workflow_type=kind,
                            dataset_dir=str(data), output_dir=str(tmp_path / kind), image_size=32, num_workers=0,
                            model_path=str(model))
        wf.initialize()
        assert wf.check_properties() in (None, [])  # every required MONAI train/infer property is defined


@pytest.mark.parametrize("switch, moe", [("false", False), ("true", True), (False, False)])
def test_the_moe_switch_of_train_json_takes_command_line_strings(switch, moe):
    """``--moe false`` arrives as the string "false" (Python Fire): the network must still get the shared block."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"moe": switch, "device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("network_def").moe is moe


def routing_epochs(run):
    """Epochs at which TensorBoard received routing scalars of the training epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = set()
    for events in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("routing/") and tag.endswith("expert_0"):
                epochs |= {e.step for e in acc.Scalars(tag)}
    return epochs


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 32)])
def test_train_evaluate_infer(tmp_path, dims, size):
    from sklearn.metrics import roc_auc_score

    data = make_demo_dataset(tmp_path / "data", dims, n_train=6, n_valid=4, n_test=4, size=size)
    run = tmp_path / "run"
    # 3 calibration normals: a 5 % threshold needs 19 (then none is set and nothing is flagged); 50 % needs 1
    bundle("run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, dims, size, fast_steps=10),
           "--max_epochs", "2", "--val_interval", "1", "--fast_options", "{'channels': [8, 16]}", "--fpr", "0.5")
    assert (run / "models" / "model.pt").exists()
    assert (run / "checkpoints" / "checkpoint_epoch=2.pt").exists()
    # routing of every training epoch reaches TensorBoard, also on the epochs that ran a validation
    assert routing_epochs(run) == {1, 2}
    # evaluation needs only where the data and the run are: the model file says the rest (here: the full mode)
    bundle("run", "--config_file", str(CONFIGS / "evaluate.json"), "--bundle_root", str(ROOT / "bundle"),
           "--dataset_dir", str(data), "--output_dir", str(run), "--num_workers", "0", "--fast", "false")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["threshold"]["mode"] == "full"
    for key in METRIC_KEYS:
        assert key in metrics
    assert metrics["n_images"] == 4 and metrics["pixel_auroc"] is not None
    assert set(metrics["per_task"]) == {"inpainting", "jigsaw", "orientation", "pseudo_anomaly", "pseudo_label"}
    # every calibrated image score is reported, the one in use among them; each dense task's localisation too
    assert set(metrics["image_scores"]) == {"map_quantile", "task_mean", "one_class", "synthetic"}
    assert metrics["threshold"]["image_score"] == "synthetic"  # the default, see NOTES_session6
    assert metrics["image_scores"]["synthetic"]["auroc"] == pytest.approx(metrics["image_auroc"])
    assert set(metrics["per_task_pixel_auroc_anomalous"]) == {"inpainting", "jigsaw", "pseudo_anomaly", "pseudo_label"}
    # the foreground erosion follows the preset: none for the 2D pictures, the skull rim for 3D MRI
    from monai_mtlmad.scoring import AnomalyScorer

    assert AnomalyScorer.load(run / "models" / "model.pt").rim == (0.0 if dims == 2 else 0.06)
    # the fast mode's options reach the student (here a smaller network)
    assert AnomalyScorer.load(run / "models" / "model.pt").student.config["channels"] == [8, 16]
    rows = list(csv.DictReader(open(run / "scores.csv")))
    assert len(rows) == 4 and {r["label"] for r in rows} == {"0", "1"}
    labels = [int(r["label"]) for r in rows]
    # the report's figures are those of its own scores, rows and labels kept together
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, [float(r["score"]) for r in rows]), abs=1e-5)
    for task, auroc in metrics["per_task"].items():
        assert auroc == pytest.approx(roc_auc_score(labels, [float(r[task]) for r in rows]), abs=1e-5)
    normals = [r for r in rows if r["label"] == "0"]
    measured = sum(r["anomalous"] == "yes" for r in normals) / len(normals)
    assert metrics["threshold"]["measured_fpr"] == pytest.approx(measured)
    assert metrics["threshold"]["nominal_fpr"] == 0.5 and metrics["threshold"]["n_normal"] == len(normals)
    assert all((float(r["score"]) >= metrics["threshold"]["value"]) == (r["anomalous"] == "yes") for r in rows)
    cal = metrics["calibration"]
    assert cal["images"] == cal["calibration_valid_normals"] + cal["calibration_train_holdout"] == 2 + 1
    assert cal["train_images"] == 6 - 1 and metrics["model"]["last_epoch"] == 2
    # by default the last epoch's weights are exported, whatever the validation said
    assert metrics["model"]["epoch"] == 2 and metrics["model"]["selection"] == "last epoch (selection 'last')"
    # the model file says how long the learner trained: 2 epochs of 5 images in batches of 2 (last one dropped)
    assert metrics["model"]["training_steps"] == 2 * 2 and metrics["model"]["training_seconds"] > 0
    assert len(list((run / "overlays").glob("*.png"))) >= 2
    # evaluation and inference in the fast mode the model file holds (their default when its synthetic check kept
    # the full mode's quality, which 10 distillation steps need not: test_student checks that choice)
    fast_run = tmp_path / "fast"
    bundle("run", "--config_file", str(CONFIGS / "evaluate.json"), "--bundle_root", str(ROOT / "bundle"),
           "--dataset_dir", str(data), "--output_dir", str(fast_run), "--model_path", str(run / "models" / "model.pt"),
           "--num_workers", "0", "--fast", "true")
    fast = json.loads((fast_run / "metrics.json").read_text())
    # it predicts every task's error, so it reports the full mode's image scores and decides by the same one
    assert fast["threshold"]["mode"] == "fast" and set(fast["image_scores"]) == set(metrics["image_scores"])
    assert fast["threshold"]["image_score"] == metrics["threshold"]["image_score"] == "synthetic"
    assert set(fast["per_task"]) == set(metrics["per_task"]) and fast["pixel_auroc"] is not None
    assert set(fast["per_task_pixel_auroc_anomalous"]) == {"inpainting", "jigsaw", "pseudo_anomaly", "pseudo_label"}
    fast_rows = list(csv.DictReader(open(fast_run / "scores.csv")))
    assert all((float(r["score"]) >= fast["threshold"]["value"]) == (r["anomalous"] == "yes") for r in fast_rows)
    assert fast["threshold"]["value"] != pytest.approx(metrics["threshold"]["value"])  # its own calibration
    out = tmp_path / "inference"
    src = data / "test" / "Ungood" / "img"
    infer(src, out, run / "models" / "model.pt", "--fast", "true")
    scores = list(csv.DictReader(open(out / "scores.csv")))
    assert len(scores) == 2 and all(r["anomalous"] in ("yes", "no") for r in scores)
    by_file = {r["file"]: r for r in fast_rows}
    for r in scores:  # inference and evaluation score each image alike
        assert float(r["score"]) == pytest.approx(float(by_file[r["file"]]["score"]), abs=1e-4)
        stem = Path(r["file"]).name.split(".")[0]
        if dims == 2:
            assert (out / f"{stem}_overlay.png").exists()
            assert np.load(out / f"{stem}_map.npy").shape == (size, size)
        else:
            written = nib.load(out / f"{stem}_map.nii.gz")
            source = nib.load(r["file"])
            assert written.shape[:3] == source.shape[:3]
            np.testing.assert_allclose(written.affine, DEMO_AFFINE, atol=1e-4)


def validation_metrics(log: str) -> dict[int, float]:
    """``{epoch: key metric}`` from a training log; a re-run epoch keeps its last value."""
    return {int(e): float(v) for e, v in re.findall(r"Epoch\[(\d+)\] Metrics -- val_image_auroc: ([\d.]+)", log)}


def test_resume_a_killed_run(tmp_path):
    import torch

    data = make_demo_dataset(tmp_path / "data", 2, n_train=8, n_valid=2, n_test=2, size=32)
    run = tmp_path / "run"
    args = ["run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32), "--selection", "best",
            "--max_epochs", "30", "--val_interval", "1"]
    first = tmp_path / "first.log"
    with open(first, "w") as log:
        proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "monai.bundle", *args], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        ckpt = run / "checkpoints"
        deadline = time.time() + 300
        while time.time() < deadline and not list(ckpt.glob("checkpoint_epoch=[3-9]*.pt")):
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = sorted(int(p.name.split("=")[1].split(".")[0]) for p in ckpt.glob("checkpoint_epoch=*.pt"))
    assert saved and saved[-1] < 30, "the run was not killed mid-way"
    assert not (run / "models" / "model.pt").exists()
    out = bundle(*args[:-4], "--max_epochs", str(saved[-1] + 2), "--val_interval", "1", "--resume", "true")
    log = out.stdout + out.stderr
    assert f"checkpoint_epoch={saved[-1]}.pt" in log and "Restored all variables" in log
    assert f"Epoch[{saved[-1] + 1}] Complete" in log and "Epoch[1] Complete" not in log  # continued, not restarted
    assert (ckpt / f"checkpoint_epoch={saved[-1] + 2}.pt").exists() and (run / "models" / "model.pt").exists()
    # the exported weights are those of the best validation over both runs: the best seen before the kill
    # travelled in the checkpoint (epochs validated after the last checkpoint were run again)
    before = {e: v for e, v in validation_metrics(first.read_text()).items() if e <= saved[-1]}
    metrics = {**before, **validation_metrics(log)}
    assert sorted(metrics) == list(range(1, saved[-1] + 3))
    best = min(e for e, v in metrics.items() if v == max(metrics.values()))  # the first epoch at the maximum
    exported = load_checked(run / "models" / "model.pt")["training"]
    assert exported["epoch"] == best and exported["last_epoch"] == saved[-1] + 2, (metrics, exported)


def test_ddp_two_processes_gloo(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=8, n_valid=4, n_test=2, size=32)
    run = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "monai.bundle", "run", "--config_file",
           configs("train", "multi_gpu_train"), *common(data, run, 2, 32), "--max_epochs", "1",
           "--fpr", "0.5"]  # a threshold from the 3 calibration normals (5 % needs 19)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run / "checkpoints" / "checkpoint_epoch=1.pt").exists()
    assert (run / "models" / "model.pt").exists()
    writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}  # the pid of each writer
    assert len(writers) == 1, "only rank 0 writes TensorBoard logs"
    import torch

    state = load_checked(run / "models" / "model.pt")
    assert not any(k.startswith("module.") for k in state["network"])  # the unwrapped network, loadable anywhere
    assert state["scorer"]["thresholds"]["map_quantile"] is not None


def test_validation_without_anomalies_uses_task_loss(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=4, n_valid=1, n_test=2, size=32)  # valid: one normal
    assert not list((data / "valid").glob("Ungood"))
    run = tmp_path / "run"
    out = bundle("run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32),
                 "--max_epochs", "2", "--val_interval", "1")
    log = out.stdout + out.stderr
    assert "Key metric: val_neg_task_loss best value" in log
    assert list((run / "checkpoints").glob("best_network*.pt")) and (run / "models" / "model.pt").exists()


def test_model_file_drives_evaluation_and_inference(tmp_path):
    """Trained with a non-default image size, preset and rim, the model is evaluated and run with only
    ``--model_path`` and ``--dataset_dir``: the same scores as the training configuration's own scorer; the
    exported weights are those of the best validation epoch; contradicting overrides are refused or warned about."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset

    from monai_mtlmad.data import bmad_datalist

    data = make_demo_dataset(tmp_path / "data", 2, n_train=6, n_valid=4, n_test=4, size=64)
    run = tmp_path / "run"
    # a task with options: the task list takes {"name": ..., **options} entries beside names
    tasks = ["inpainting", "jigsaw", {"name": "orientation", "tilt": 10}, "pseudo_anomaly", "pseudo_label"]
    # fpr 0.5: thresholds from the 3 calibration normals (5 % needs 19), so the decisions below can be compared
    overrides = {"image_size": 48, "preset": "mri", "rim": 0.1, "task_names": tasks, "fpr": 0.5}
    flags = [arg for k, v in overrides.items() for arg in (f"--{k}", str(v))]
    out = bundle("run", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(ROOT / "bundle"),
                 "--dataset_dir", str(data), "--output_dir", str(run), "--num_workers", "0", "--batch_size", "2",
                 *flags, "--selection", "best", "--max_epochs", "3", "--val_interval", "1")
    model = run / "models" / "model.pt"
    state = load_checked(model)
    assert state["preprocessing"]["spatial_size"] == 48 and state["preprocessing"]["preset"] == "mri"
    assert state["scorer"]["rim"] == 0.1 and state["network_config"]["spatial_dims"] == 2
    assert state["tasks"][2]["tilt"] == 10 and [t["name"] for t in state["tasks"]] == list(DEFAULT_TASKS)
    # model selection: the epoch MONAI reports as best, with the weights MONAI's CheckpointSaver kept for it
    best = int(re.findall(r"Key metric: val_image_auroc best value: \S+ at epoch: (\d+)", out.stdout + out.stderr)[-1])
    assert state["training"]["epoch"] == best and state["training"]["last_epoch"] == 3
    assert "best val_image_auroc" in state["training"]["selection"]
    kept = torch.load(run / "checkpoints" / "best_network.pt", weights_only=True)
    kept = kept.get("network", kept)
    for key, value in state["network"].items():
        torch.testing.assert_close(value, kept[key])

    # the scorer of the training configuration, built from train.json with the same flags
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(ROOT / "bundle"), "dataset_dir": str(data), "output_dir": str(run), **overrides})
    scorer = parser.get_parsed_content("scorer")()
    scorer.net.load_state_dict(state["network"])
    scorer.load_state_dict(state["scorer"])
    items = bmad_datalist(data, "test")
    batch = next(iter(DataLoader(Dataset(items, parser.get_parsed_content("preprocessing")[0]), batch_size=len(items))))
    res = scorer.score(batch["image"].as_tensor(), foreground=batch["image_foreground"])
    expected = {d["image"]: float(s) for d, s in zip(items, res.score)}

    infer(data / "test", tmp_path / "inferred", model)
    rows = list(csv.DictReader(open(tmp_path / "inferred" / "scores.csv")))
    assert sorted(r["file"] for r in rows) == sorted(expected)
    for r in rows:
        assert float(r["score"]) == pytest.approx(expected[r["file"]], abs=1e-4), r["file"]
    bundle("run", "--config_file", str(CONFIGS / "evaluate.json"), "--bundle_root", str(ROOT / "bundle"),
           "--dataset_dir", str(data), "--output_dir", str(run), "--num_workers", "0")
    for r in csv.DictReader(open(run / "scores.csv")):
        assert float(r["score"]) == pytest.approx(expected[r["file"]], abs=1e-4), r["file"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"]["epoch"] == best and "best val_image_auroc" in metrics["model"]["selection"]

    refused = infer(data / "test", tmp_path / "refused", model, "--spatial_dims", "3", check=False)
    assert refused.returncode != 0 and "trained with spatial_dims=2, not 3" in refused.stdout + refused.stderr
    warned = infer(data / "test", tmp_path / "warned", model, "--image_size", "64")
    assert "calibration no longer holds" in warned.stdout + warned.stderr
    assert np.load(tmp_path / "warned" / "good" / "img" / "normal_0000_map.npy").shape == (64, 64)
    odd = infer(data / "test", tmp_path / "odd", model, "--image_size", "[64, 56]", check=False)
    # refused with the file named, before any image is read (not every image skipped for the same setting)
    assert odd.returncode != 0 and "model.pt: image_size [64, 56]: every side must be a multiple of 16" in odd.stdout + odd.stderr
    assert not (tmp_path / "odd" / "scores.csv").exists()
    # another calibrated image score can decide, with its own threshold; one the file does not hold is refused
    evaluate = ("run", "--config_file", str(CONFIGS / "evaluate.json"), "--bundle_root", str(ROOT / "bundle"),
                "--dataset_dir", str(data), "--model_path", str(model), "--num_workers", "0")
    bundle(*evaluate, "--output_dir", str(tmp_path / "one_class"), "--image_score", "one_class")
    chosen = json.loads((tmp_path / "one_class" / "metrics.json").read_text())
    assert chosen["threshold"]["image_score"] == "one_class"
    assert state["scorer"]["thresholds"]["one_class"] is not None
    assert chosen["threshold"]["value"] == pytest.approx(state["scorer"]["thresholds"]["one_class"])
    assert chosen["image_auroc"] == pytest.approx(chosen["image_scores"]["one_class"]["auroc"])
    refused = bundle(*evaluate, "--output_dir", str(tmp_path / "bogus"), "--image_score", "bogus", check=False)
    assert refused.returncode != 0 and "'bogus' is not calibrated" in refused.stdout + refused.stderr

    # distill.json adds a fast mode to the trained model, on the split training used (other split settings are
    # refused, naming the file); evaluation then scores with it and decides by the same image score
    distill = ("run", "--config_file", str(CONFIGS / "distill.json"), "--bundle_root", str(ROOT / "bundle"),
               "--dataset_dir", str(data), "--model_path", str(model), "--fast_steps", "5")
    wrong = bundle(*distill, "--calibration_images", "1", "--output_path", str(tmp_path / "x.pt"), check=False)
    assert wrong.returncode != 0 and "model.pt: calibrated on" in wrong.stdout + wrong.stderr
    assert not (tmp_path / "x.pt").exists()
    bundle(*distill, "--output_path", str(tmp_path / "fast.pt"), "--fast_options", "{'channels': [8, 16, 32]}")
    assert load_checked(model)["student"] is None  # the original is left as it was
    fast_state = load_checked(tmp_path / "fast.pt")
    assert fast_state["student"]["training"]["steps"] == 5 and fast_state["student"]["config"]["channels"] == [8, 16, 32]
    torch.testing.assert_close(fast_state["network"], state["network"])
    bundle("run", "--config_file", str(CONFIGS / "evaluate.json"), "--bundle_root", str(ROOT / "bundle"),
           "--dataset_dir", str(data), "--model_path", str(tmp_path / "fast.pt"), "--num_workers", "0",
           "--output_dir", str(tmp_path / "fast_eval"), "--fast", "true")
    fast = json.loads((tmp_path / "fast_eval" / "metrics.json").read_text())
    assert fast["threshold"]["mode"] == "fast" and fast["threshold"]["image_score"] == metrics["threshold"]["image_score"]
    assert fast["threshold"]["value"] == pytest.approx(fast_state["student"]["thresholds"][fast["threshold"]["image_score"]])


def test_calibration_split_holds_out_training_normals_only_when_valid_has_few():
    from monai_mtlmad.apps.bundle import calibration_split

    train = [{"image": f"t{i}.png", "label": 0, "mask": None} for i in range(50)]
    valid = [{"image": f"v{i}.png", "label": i % 2, "mask": None} for i in range(20)]  # 10 normals, 10 anomalies
    kept, calibration = calibration_split(train, valid, size=30, max_fraction=0.2, seed=1)
    assert [d["source"] for d in calibration] == ["valid"] * 10 + ["train"] * 10  # 20 short: capped at 20 % of 50
    assert all(d["label"] == 0 for d in calibration)
    assert len(kept) == 40 and not {d["image"] for d in kept} & {d["image"] for d in calibration}
    kept, calibration = calibration_split(train, valid, size=8)  # valid has enough: training is untouched
    assert len(kept) == 50 and len(calibration) == 10
    held = lambda seed: [d["image"] for d in calibration_split(train, valid, size=30, seed=seed)[1]]  # noqa: E731
    assert held(1) == held(1) and held(1) != held(2)  # a seeded choice


def scalars(run, tag):
    """``{step: value}`` of a TensorBoard scalar over every event file of a run (the latest file wins a step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def train_args(data, run, epochs):
    return ["run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32), "--max_epochs", str(epochs),
            "--val_interval", "2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 6-epoch run (24 steps) that nothing interrupts: the reference for the resumed ones."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    data = make_demo_dataset(tmp / "data", 2, n_train=9, n_valid=4, n_test=2, size=32)
    bundle(*train_args(data, tmp / "run", 6))
    return data, tmp / "run"


@pytest.mark.parametrize("kill_seed", [0, 1, 2])
def test_a_run_killed_at_a_random_moment_resumes_to_the_same_model(tmp_path, uninterrupted, kill_seed):
    import random

    import torch

    data, reference = uninterrupted
    run = tmp_path / "run"
    rng = random.Random(kill_seed)
    after_epoch, delay = rng.randint(1, 4), rng.uniform(0, 0.6)  # wait for that checkpoint, then a moment more
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "monai.bundle", *train_args(data, run, 6)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / f"checkpoint_epoch={after_epoch}.pt.sha256").exists():
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "models" / "model.pt").exists(), "killed too late"
    out = bundle(*train_args(data, run, 6), "--resume", "true")
    log = out.stdout + out.stderr
    resumed_from = int(re.search(r"checkpoint_epoch=(\d+)\.pt", log).group(1))
    assert resumed_from >= after_epoch  # at most the work since the last checkpoint is lost
    # the same losses, step by step, as the run nothing interrupted, and the same final weights
    expected, got = scalars(reference, "loss/total"), scalars(run, "loss/total")
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    for step in range(resumed_from * 4 + 1, 25):
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    final = lambda r: torch.load(r / "checkpoints" / "checkpoint_epoch=6.pt", weights_only=True)["network"]  # noqa: E731
    for key, value in final(reference).items():
        torch.testing.assert_close(final(run)[key], value, rtol=1e-4, atol=1e-5)


def test_a_damaged_checkpoint_is_skipped_on_resume(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=8, n_valid=2, n_test=2, size=32)
    run = tmp_path / "run"
    args = ["run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32), "--val_interval", "100"]
    bundle(*args, "--max_epochs", "3")
    ckpt = run / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("checkpoint_epoch=*")) == [
        "checkpoint_epoch=2.pt", "checkpoint_epoch=2.pt.sha256", "checkpoint_epoch=3.pt", "checkpoint_epoch=3.pt.sha256"]
    newest = ckpt / "checkpoint_epoch=3.pt"
    data_bytes = bytearray(newest.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF  # one flipped byte, in the middle of the weights
    newest.write_bytes(bytes(data_bytes))
    out = bundle(*args, "--max_epochs", "4", "--resume", "true")
    log = out.stdout + out.stderr
    assert "checkpoint_epoch=3.pt: damaged (checksum mismatch)" in log
    assert "checkpoint_epoch=2.pt" in log and "Epoch[3] Complete" in log and "Epoch[1] Complete" not in log


def test_reruns_never_lose_earlier_outputs(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=6, n_valid=2, n_test=2, size=32)
    run = tmp_path / "run"
    args = ["run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32), "--max_epochs", "1"]
    bundle(*args)
    model = (run / "models" / "model.pt").read_bytes()
    events = sorted(p.name for p in run.glob("events.out.tfevents.*"))
    refused = bundle(*args, check=False)  # the same command again, by mistake
    assert refused.returncode != 0 and "already holds a training run" in refused.stdout + refused.stderr
    assert (run / "models" / "model.pt").read_bytes() == model
    assert sorted(p.name for p in run.glob("events.out.tfevents.*")) == events  # refused before writing anything
    bundle(*args, "--overwrite", "true")  # start over: the earlier run moves aside, whole
    kept = list((run / "previous").iterdir())
    assert len(kept) == 1 and (kept[0] / "models" / "model.pt").read_bytes() == model
    assert sorted(p.name for p in kept[0].glob("events.out.tfevents.*")) == events
    assert (run / "models" / "model.pt").exists()
    # inference into a folder that holds earlier results: refused unless told to replace them
    infer(data / "test", tmp_path / "maps", run / "models" / "model.pt")
    first = (tmp_path / "maps" / "scores.csv").read_text()
    again = infer(data / "test", tmp_path / "maps", run / "models" / "model.pt", check=False)
    assert again.returncode != 0 and "already holds the results of an earlier run" in again.stdout + again.stderr
    assert (tmp_path / "maps" / "scores.csv").read_text() == first
    infer(data / "test", tmp_path / "maps", run / "models" / "model.pt", "--overwrite", "true")
