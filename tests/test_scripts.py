"""The task-check and benchmark scripts run end to end and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_mtlmad.safe_io import load_checked

ROOT = Path(__file__).resolve().parents[1]


def test_check_tasks_script_reports_every_task_and_routing(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts/check_tasks.py"), "--steps", "3", "--size", "64",
           "--n_train", "4", "--n_eval", "2", "--batch", "2", "--output", str(tmp_path),
           "--tasks", "inpainting", "jigsaw", "orientation", "pseudo_anomaly", "pseudo_label", "denoising",
           "--options", '{"orientation": {"tilt": 15}}']
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "task_check.json").read_text())["results"][0]
    assert set(result["held_out"]) == {"orientation", "jigsaw", "pseudo_anomaly", "inpainting", "pseudo_label", "denoising"}
    assert result["held_out"]["denoising"]["noisy_input_mae"] > 0
    orientation = result["held_out"]["orientation"]
    assert orientation["chance"] == 0.25 and orientation["untilted_answer_mae_degrees"] == pytest.approx(7.5)
    assert "| orientation | tilt_mae_degrees |" in (tmp_path / "task_check.md").read_text()
    assert set(result["routing"]) == {"bottleneck_moe", "decoder_moe.0", "decoder_moe.1", "decoder_moe.2"}
    assert "| jigsaw | pixel_accuracy |" in (tmp_path / "task_check.md").read_text()


def test_speed_benchmark_measures_both_modes_beside_the_unet(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "benchmarks/speed.py"), "--size2d", "32", "--roi3d", "32",
           "--volume", "48", "--train_batch", "2", "--score_batch", "2", "--repeats", "1", "--bundle_images", "4", "--json",
           str(tmp_path / "speed.json"), "--markdown", str(tmp_path / "speed.md")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["device"] == "cpu" and result["threads"] == 2 and "speed.py" in result["command"]
    rows = result["rows"]
    seen = {(r["measure"], r["input"], r["method"]) for r in rows}
    for measure, shape in (("train", "2x1x32x32"), ("score 1", "1x1x32x32"), ("score batch", "2x1x32x32"),
                           ("train", "1x1x32x32x32"), ("score 1", "1x1x48x48x48"), ("score batch", "2x1x48x48x48")):
        ceiling = next(r for r in rows if r["measure"] == measure and r["input"] == shape and "ceiling" in r["method"])
        ours = [r for r in rows if r["measure"] == measure and r["input"] == shape and "ceiling" not in r["method"]]
        assert ours, (measure, shape)
        for r in ours:  # every figure stands beside the UNet's of the same run, as a ratio of times
            slower = ceiling["value"] / r["value"] if r["unit"] == "images/s" else r["value"] / ceiling["value"]
            assert r["x_ceiling"] == pytest.approx(slower, rel=0.05, abs=0.02), r
    assert ("score 1", "1x1x32x32", "MTL-MAD fast mode (student)") in seen
    assert ("score 1", "1x1x48x48x48", "MTL-MAD full mode (every task view)") in seen
    assert ("train", "2x1x32x32", "MTL-MAD, shared block (5 task views per image)") in seen
    e2e = [r for r in rows if r["measure"] == "inference.json per slice"]
    assert [r["method"] for r in e2e] == ["inference.json, fast mode", "inference.json, full mode"]
    assert all(r["maps_written"] == 4 and r["value"] > 0 for r in e2e)
    assert "| score 1 | 1x1x32x32 | MTL-MAD fast mode (student) |" in (tmp_path / "speed.md").read_text()


def test_step_profile_names_where_the_time_goes(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "benchmarks/profile_step.py"), "--batch", "2", "--size", "32",
           "--repeats", "1", "--json", str(tmp_path / "profile.json")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    moe, shared = json.loads((tmp_path / "profile.json").read_text())
    assert moe["moe"] and not shared["moe"] and moe["views"] == 10
    for name in ("views: jigsaw", "views: pseudo_label", "forward (all)", "backward", "optimiser step",
                 "forward: moe blocks", "forward: encoder"):
        assert moe["parts_s"][name] >= 0, name
    assert moe["step_s"] >= moe["parts_s"]["backward"] and moe["top_ops"]


@pytest.mark.slow  # research scripts, minutes each: `make test-slow` (CI runs it too)
def test_comparison_on_the_hard_sets_runs_the_bundle_and_tabulates(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts/compare_on_hard_sets.py"), "--root", str(tmp_path),
           "--datasets", "chest", "--variants", "5 tasks + denoising", "--seeds", "0", "--epochs", "2", "--size", "32",
           "--n_train", "8", "--n_valid", "4", "--n_test", "4", "--fast_steps", "5"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "results.json").read_text())
    runs = [(r["map_weights"], r["seed"]) for r in result["runs"]]
    assert runs == [("selected", 0), ("equal", 0), ("selected, fast mode", 0)]
    # the fast mode (added by distill.json to a copy of the model) predicts task errors: every image score
    fast = result["runs"][2]["figures"]
    assert "image: synthetic" in fast and "image task: denoising" in fast and "pixel in anomalous: fused" in fast
    figures = result["runs"][0]["figures"]
    for name in ("image: map_quantile", "image: one_class", "image: synthetic", "image task: denoising",
                 "pixel in anomalous: denoising", "image: trivial foreground fraction", "pixel in anomalous: raw intensity"):
        assert name in figures, name
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "chest / 5 tasks + denoising / equal" in table and "| image: one_class |" in table
    # the model as trained holds a selected mixture of the maps (the user's equal weights over the maps kept, summing
    # to 1); its copy recalibrated with equal weights, the user's weights
    model = next(tmp_path.rglob("models/model.pt"))
    selected = load_checked(model)["scorer"]
    weights = torch.tensor(list(selected["fitted_map_weights"].values()))
    kept = weights[weights > 0]
    assert abs(float(weights.sum()) - 1) < 1e-6 and torch.allclose(kept, torch.full_like(kept, 1 / len(kept)))
    assert "fused_pixel_auroc" in selected["selection"]
    equal = load_checked(model.with_name("model_equal.pt"))["scorer"]
    assert set(equal["fitted_map_weights"].values()) == {1.0} and equal["map_weights"] == "equal"
    # again on an independent, larger test set: the trained model is reused, not trained again
    trained, distilled = model.stat().st_mtime_ns, model.with_name("model_fast.pt").stat().st_mtime_ns
    subprocess.run(cmd + ["--test_images", "6", "--map_weights", "selected", "--last_epoch"], check=True,
                   capture_output=True, timeout=900)
    assert model.stat().st_mtime_ns == trained and model.with_name("model_fast.pt").stat().st_mtime_ns == distilled
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(r["map_weights"], r.get("test_images", 0)) for r in result["runs"]][3:] == [
        ("selected", 6), ("selected, fast mode", 6), ("selected, last epoch", 6)]
    # the last epoch's weights, as the last training checkpoint holds them
    last = load_checked(model.with_name("model_last_epoch.pt"))
    checkpoint = load_checked(model.parents[1] / "checkpoints" / "checkpoint_epoch=2.pt")["network"]
    assert last["training"]["epoch"] == 2 and "checkpoint_epoch=2.pt" in last["training"]["selection"]
    for key, value in checkpoint.items():
        torch.testing.assert_close(last["network"][key], value)
    assert len(list((tmp_path / "data" / "chest_test6" / "test").rglob("img/*.png"))) == 6
    assert "chest / 5 tasks + denoising / selected / 6 test images" in (tmp_path / "results.md").read_text(encoding="utf-8")
    # the map-selection study refits this model's calibration and scores its maps on the same 6 test images: each
    # task's map scores there what evaluate.json measured for it
    rows_path = tmp_path / "selection.json"
    subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "scripts/map_selection_stability.py"), str(tmp_path),
                    "chest", "--variant", "5_tasks_plus_denoising", "--test_images", "6", "--copies", "1", "2",
                    "--draws", "0", "--output", str(rows_path)], check=True, capture_output=True, timeout=900)
    rows = json.loads(rows_path.read_text())
    evaluated = json.loads((model.parents[1] / "eval_selected_test6" / "metrics.json").read_text())
    for task, auroc in evaluated["per_task_pixel_auroc_anomalous"].items():
        assert abs(next(r["real"] for r in rows if r["rule"] == f"{task} alone") - auroc) < 1e-3, task
    fits = [(r["rule"], r["copies"]) for r in rows if "copies" in r]
    assert len(fits) == 12 and {c for _, c in fits} == {1, 2} and len({rule for rule, _ in fits}) == 6
    for row in rows:
        if "weights" in row:
            assert abs(sum(row["weights"].values()) - 1) < 0.02 and 0 <= row["real"] <= 1
    # the image-fusion study refits the same model and scores the same test images: its default fusion and its best
    # single task are what evaluate.json measured
    subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "scripts/image_fusion_study.py"), str(tmp_path),
                    "--datasets", "chest", "--seeds", "0", "--variant", "5_tasks_plus_denoising", "--test_images", "6"],
                   check=True, capture_output=True, timeout=900)
    margins = json.loads((tmp_path / "image_fusion_study.json").read_text())
    best = margins["best single task (AUROC, not a margin)"]["chest"][0]
    assert abs(best - max(evaluated["per_task"].values())) < 1e-4  # metrics.json rounds to 4 places
    assert abs(margins["synthetic (default)"]["chest"][0] + best - evaluated["image_scores"]["synthetic"]["auroc"]) < 1e-4
    assert len(margins) >= 12 and "| Fisher, AUROC weights |" in (tmp_path / "image_fusion_study.md").read_text(encoding="utf-8")
    # the lesion-scale study refits the same model and scores the same test images: its default image score and
    # its shown map are what evaluate.json measured; every candidate gets a figure
    study = tmp_path / "lesion_scale.json"
    subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "scripts/lesion_scale_image_study.py"), str(tmp_path),
                    "chest", "--seeds", "0", "--variant", "5_tasks_plus_denoising", "--test_images", "6", "--pixel",
                    "--paired", "--output", str(study)], check=True, capture_output=True, timeout=900)
    study = json.loads(study.read_text())
    default = study["image_auroc"]["today: synthetic"]["0"]
    assert abs(default - evaluated["image_scores"]["synthetic"]["auroc"]) < 1e-4
    assert abs(study["pixel_auroc_anomalous"]["shown map"]["0"] - evaluated["pixel_auroc_anomalous"]) < 1e-3
    for name in ("shown peak over own spread", "shown half difference", "shown mirror peak", "denoising mirror peak"):
        assert 0 <= study["image_auroc"][name]["0"] <= 1 and 0 <= study["paired_win_rate"][name]["0"] <= 1, name
    # retrained, the model's earlier rows are replaced, not kept beside the new ones
    subprocess.run(cmd + ["--test_images", "6", "--map_weights", "selected", "--retrain"], check=True, capture_output=True,
                   timeout=900)
    assert model.stat().st_mtime_ns != trained
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(r["map_weights"], r.get("test_images", 0)) for r in result["runs"]] == [("selected", 6), ("selected, fast mode", 6)]


@pytest.mark.slow  # research scripts, minutes each: `make test-slow` (CI runs it too)
def test_quality_benchmark_compares_learner_peers_and_trivial_scores_at_one_budget(tmp_path):
    from monai_mtlmad.data import make_demo_dataset

    data = make_demo_dataset(tmp_path / "data", 2, n_train=8, n_valid=4, n_test=4, size=32)
    methods = ["MTL-MAD (shared block)", "orientation alone", "denoising autoencoder", "DRAEM-style segmenter"]
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "benchmarks/quality.py"), str(data), "--minutes", "0.03",
           "--seeds", "0", "1", "--image_size", "32", "--methods", *methods, "--output", str(tmp_path / "q"),
           "--plot", str(tmp_path / "q.png"), "--work_dir", str(tmp_path / "runs")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "q.json").read_text())
    assert "quality.py" in result["command"] and result["date"] and result["machine"]
    assert sorted((r["method"], r["seed"]) for r in result["runs"]) == sorted((m, s) for m in methods for s in (0, 1))
    for r in result["runs"]:
        f = r["figures"]
        assert 0 <= f["image_auroc"] <= 1 and 0 <= f["measured_fpr"] <= 1
        assert f["steps"] >= 1 and f["train_seconds"] > 0
        if r["method"] == "orientation alone":  # a global task scores images and draws no map
            assert f["pixel_auroc"] is None and f["pixel_auroc_anomalous"] is None
        else:
            assert 0 <= f["pixel_auroc_anomalous"] <= 1
    # the peers train on the clock: their seconds are the budget (1.8 s), not more than one step over
    for r in result["runs"]:
        if r["method"] in ("denoising autoencoder", "DRAEM-style segmenter"):
            assert 1.8 <= r["figures"]["train_seconds"] < 1.8 + 1.0
    # the learner's runs went through the bundle: its model file and its metrics.json, with the shared block
    from monai_mtlmad.scoring import AnomalyScorer

    shared = AnomalyScorer.load(tmp_path / "runs" / "MTL-MAD_(shared_block)" / "seed1" / "models" / "model.pt")
    assert not shared.net.moe and [t.name for t in shared.tasks] == ["inpainting", "jigsaw", "orientation",
                                                                     "pseudo_anomaly", "pseudo_label"]
    alone = tmp_path / "runs" / "orientation_alone" / "seed0" / "models" / "model.pt"
    assert [t.name for t in AnomalyScorer.load(alone).tasks] == ["orientation"]
    # such a model has no map to write: inference says so instead of failing somewhere inside
    cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", "run", "--bundle_root", str(ROOT / "bundle"),
           "--config_file", str(ROOT / "bundle" / "configs" / "inference.json"), "--model_path", str(alone),
           "--dataset_dir", str(data / "test"), "--output_dir", str(tmp_path / "maps"), "--num_workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "are all global: it scores images but draws no anomaly map" in done.stderr
    summary = result["summary"]
    assert summary["orientation alone"]["n_seeds"] == 2 and len(summary["orientation alone"]["image_auroc"]) == 2
    assert {"trivial: foreground fraction", "trivial: raw intensity"} <= set(summary)
    md = (tmp_path / "q.md").read_text(encoding="utf-8")
    assert "| DRAEM-style segmenter |" in md and "| trivial: raw intensity |" in md
    assert (tmp_path / "q.png").stat().st_size > 0


def test_bmad_runner_finds_each_dataset_and_prints_bmads_table(tmp_path):
    import shutil

    from monai_mtlmad.data import make_demo_dataset

    root = tmp_path / "BMAD"
    make_demo_dataset(root / "BraTS2021", 2, n_train=8, n_valid=4, n_test=4, size=32)
    rsna = make_demo_dataset(root / "RSNA", 2, n_train=8, n_valid=4, n_test=4, size=32, anatomy="chest")
    for split in ("valid", "test"):  # RSNA has image labels only
        shutil.rmtree(rsna / split / "Ungood" / "anomaly_mask")
    (root / "notes").mkdir()  # anything else under ROOT is left alone
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "benchmarks/bmad.py"), str(root), "--steps", "2",
           "--image_size", "32", "--num_workers", "0", "--output", str(tmp_path / "bmad"), "--work_dir",
           str(tmp_path / "runs")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "bmad.json").read_text())
    assert [r["dataset"] for r in result["runs"]] == ["brats", "rsna"]
    brats, rsna_run = (r["metrics"] for r in result["runs"])
    assert brats["pixel_auroc"] is not None and rsna_run["pixel_auroc"] is None and rsna_run["image_auroc"] is not None
    md = (tmp_path / "bmad.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert header == "| method | BraTS | RSNA |"
    assert "| PatchCore | 91.65 / 96.97 / 85.68 | 76.14 |" in md
    ours = next(line for line in md.splitlines() if line.startswith("| **MTL-MAD"))
    brats_cell, rsna_cell = ours.split("|")[2:4]
    assert len(brats_cell.split("/")) == 3 and len(rsna_cell.split("/")) == 1  # pixel and PRO only with masks
    assert f"{100 * brats['image_auroc']:.2f}" in brats_cell
    # each dataset ran with its own defaults: BraTS's preset and BMAD's size, no rim, in the model file
    from monai_mtlmad.scoring import AnomalyScorer

    scorer = AnomalyScorer.load(tmp_path / "runs" / "brats" / "seed0" / "models" / "model.pt")
    assert scorer.rim == 0.0 and scorer.preprocessing_config["preset"] == "mri"
