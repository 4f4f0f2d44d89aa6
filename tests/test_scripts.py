"""The task-check and benchmark scripts run end to end and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_check_tasks_script_reports_every_task_and_routing(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts/check_tasks.py"), "--steps", "3", "--size", "64",
           "--n_train", "4", "--n_eval", "2", "--batch", "2", "--output", str(tmp_path),
           "--tasks", "inpainting", "jigsaw", "orientation", "pseudo_anomaly", "pseudo_label", "denoising"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "task_check.json").read_text())["results"][0]
    assert set(result["held_out"]) == {"orientation", "jigsaw", "pseudo_anomaly", "inpainting", "pseudo_label", "denoising"}
    assert result["held_out"]["denoising"]["noisy_input_mae"] > 0
    assert result["held_out"]["orientation"]["chance"] == 0.25
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


def test_comparison_on_the_hard_sets_runs_the_bundle_and_tabulates(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts/compare_on_hard_sets.py"), "--root", str(tmp_path),
           "--datasets", "chest", "--variants", "5 tasks + denoising", "--seeds", "0", "--epochs", "2", "--size", "32",
           "--n_train", "8", "--n_valid", "4", "--n_test", "4", "--fast_steps", "5"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "results.json").read_text())
    runs = [(r["map_weights"], r["seed"]) for r in result["runs"]]
    assert runs == [("equal", 0), ("synthetic", 0), ("equal, fast mode", 0)]
    # the fast mode decides by the fused map alone: no per-task image scores, no other fusions
    fast = result["runs"][2]["figures"]
    assert "image: map_quantile" in fast and "image: one_class" not in fast and "pixel in anomalous: fused" in fast
    figures = result["runs"][0]["figures"]
    for name in ("image: map_quantile", "image: one_class", "image: synthetic", "image task: denoising",
                 "pixel in anomalous: denoising", "image: trivial foreground fraction", "pixel in anomalous: raw intensity"):
        assert name in figures, name
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "chest / 5 tasks + denoising / synthetic" in table and "| image: one_class |" in table
