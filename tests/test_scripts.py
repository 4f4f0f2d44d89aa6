"""The task-check and benchmark scripts run end to end and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

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


def test_benchmark_script_times_a_step(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts/benchmark_step.py"), "--configs", "2d:2x64",
           "--repeats", "1", "--shared", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())
    assert [r["moe"] for r in rows] == [True, False]
    assert rows[0]["parameters"] > rows[1]["parameters"] and all(r["step_s_median"] > 0 for r in rows)


def test_comparison_on_the_hard_sets_runs_the_bundle_and_tabulates(tmp_path):
    cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts/compare_on_hard_sets.py"), "--root", str(tmp_path),
           "--datasets", "chest", "--variants", "5 tasks + denoising", "--seeds", "0", "--epochs", "2", "--size", "32",
           "--n_train", "8", "--n_valid", "4", "--n_test", "4"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(r["map_weights"], r["seed"]) for r in result["runs"]] == [("equal", 0), ("synthetic", 0)]
    figures = result["runs"][0]["figures"]
    for name in ("image: map_quantile", "image: one_class", "image: synthetic", "image task: denoising",
                 "pixel in anomalous: denoising", "image: trivial foreground fraction", "pixel in anomalous: raw intensity"):
        assert name in figures, name
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "chest / 5 tasks + denoising / synthetic" in table and "| image: one_class |" in table
