"""AnomalyScorer: calibration on normals, fusion, thresholds, persistence, foreground, 3D sliding window."""

import numpy as np
import pytest
import torch

from monai_mtlmad.data import head_phantoms, insert_lesions
from monai_mtlmad.engines import fit_learner
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.scoring import AnomalyScorer, foreground_mask, render_overlay
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def small(spatial_dims=2, seed=0):
    torch.manual_seed(seed)
    tasks = create_tasks(DEFAULT_TASKS, spatial_dims)
    net = MTLMoENet(spatial_dims, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32), strides=(2, 2, 2))
    return net, tasks


@pytest.fixture(scope="module")
def trained():
    net, tasks = small()
    train = torch.from_numpy(head_phantoms(16, (48, 48), seed=10))
    fit_learner(net, tasks, train, steps=20, batch_size=4)
    return net, tasks


def test_calibration_on_normals_sets_fpr_threshold_and_p_values(trained):
    net, tasks = trained
    normals = torch.from_numpy(head_phantoms(20, (48, 48), seed=11))
    scorer = AnomalyScorer(net, tasks, fpr=0.1, rim=0.06).fit(normals)
    assert set(scorer.stats) == set(DEFAULT_TASKS)
    assert "pixel_loc" not in scorer.stats["orientation"] and "pixel_scale" in scorer.stats["inpainting"]
    res = scorer.score(normals)
    # the threshold is the 90 % quantile of the normals' own scores: about 10 % flagged, never more than 15 %
    assert res.anomalous.float().mean() <= 0.15
    assert torch.all((res.p_value > 0) & (res.p_value <= 1))
    # normalised task scores of the calibration normals are centred (median 0) on a robust unit scale
    for name, s in res.task_scores.items():
        assert abs(float(s.median())) < 1e-4, name
    assert res.map.shape == (20, 1, 48, 48) and set(res.task_maps) == {
        "inpainting", "jigsaw", "pseudo_anomaly", "pseudo_label"
    }
    assert not bool(res.foreground[:, :, 0, 0].any())  # the corner is background
    usage = res.expert_usage["bottleneck_moe"]["selection"]
    assert usage.shape == (5, 4) and torch.allclose(usage.sum(1), torch.full((5,), 2.0))


def test_scores_rank_lesions_and_f1_threshold(trained):
    net, tasks = trained
    scorer = AnomalyScorer(net, tasks, rim=0.06).fit(torch.from_numpy(head_phantoms(12, (48, 48), seed=12)))
    sick, brain = head_phantoms(8, (48, 48), seed=13, return_brain=True)
    sick, masks = insert_lesions(sick, brain, seed=1)
    normal = head_phantoms(8, (48, 48), seed=14)
    res = scorer.score(torch.from_numpy(np.concatenate([normal, sick])))
    labels = torch.tensor([0] * 8 + [1] * 8)
    thr = scorer.fit_f1_threshold(res.score, labels)
    assert scorer.f1_threshold == thr and np.isfinite(thr)
    with pytest.raises(ValueError, match="anomalous"):
        scorer.fit_f1_threshold(res.score, torch.zeros(16))


def test_fusion_weights_select_tasks(trained):
    net, tasks = trained
    normals = torch.from_numpy(head_phantoms(8, (48, 48), seed=15))
    only = AnomalyScorer(net, tasks, weights={t.name: float(t.name == "inpainting") for t in tasks}).fit(normals)
    res = only.score(normals[:3])
    inside = res.foreground
    torch.testing.assert_close(res.map[inside], res.task_maps["inpainting"][inside])
    torch.testing.assert_close(res.score_task_mean, res.task_scores["inpainting"])
    with pytest.raises(ValueError, match="unknown tasks"):
        AnomalyScorer(net, tasks, weights={"nope": 1.0})
    with pytest.raises(RuntimeError, match="not calibrated"):
        AnomalyScorer(net, tasks).score(normals[:1])


def test_save_load_round_trip(trained, tmp_path):
    net, tasks = trained
    normals = torch.from_numpy(head_phantoms(8, (48, 48), seed=16))
    scorer = AnomalyScorer(net, tasks, sigma=1.5, quantile=0.95, rim=0.06).fit(normals)
    scorer.fit_f1_threshold(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
    path = tmp_path / "models" / "model.pt"
    scorer.save(path)
    assert not path.with_name("model.pt.tmp").exists()
    fresh_net, fresh_tasks = small(seed=99)  # different weights until loaded
    loaded = AnomalyScorer.load(path, fresh_net, fresh_tasks)
    assert loaded.threshold == scorer.threshold and loaded.f1_threshold == scorer.f1_threshold
    assert loaded.sigma == 1.5 and loaded.quantile == 0.95 and loaded.stats == scorer.stats
    a, b = scorer.score(normals[:4]), loaded.score(normals[:4])
    torch.testing.assert_close(a.score, b.score)
    torch.testing.assert_close(a.map, b.map)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        AnomalyScorer.load(bad, fresh_net, fresh_tasks)
    with pytest.raises(ValueError, match="do not match"):
        AnomalyScorer(net, tasks[:2])


def test_foreground_strips_the_skull_rim():
    images, brain = head_phantoms(4, (96, 96), seed=3, return_brain=True)
    head = foreground_mask(images).numpy()
    stripped = foreground_mask(images, rim=0.06).numpy()
    assert head.mean() > stripped.mean()
    assert (stripped & brain).sum() / stripped.sum() > 0.98  # what remains is brain, not skull
    assert (stripped & brain).sum() / brain.sum() > 0.7
    blank = foreground_mask(np.zeros((1, 1, 16, 16), np.float32))
    assert blank.all()


def test_3d_sliding_window_scores_full_volume():
    net, tasks = small(3)
    vol = torch.from_numpy(head_phantoms(3, (32, 32, 32), seed=4))
    scorer = AnomalyScorer(net, tasks, roi_size=(16, 16, 16), batch_size=2).fit(vol[:2])
    res = scorer.score(vol[2:])
    assert res.map.shape == (1, 1, 32, 32, 32) and torch.isfinite(res.map).all()
    assert torch.isfinite(res.score).all()


def test_overlay_png_2d_and_3d(tmp_path, trained):
    net, tasks = trained
    img = torch.from_numpy(head_phantoms(1, (48, 48), seed=5))
    scorer = AnomalyScorer(net, tasks).fit(torch.from_numpy(head_phantoms(4, (48, 48), seed=6)))
    res = scorer.score(img)
    mask = torch.zeros(1, 48, 48)
    mask[0, 10:20, 10:20] = 1
    p = render_overlay(tmp_path / "o.png", img[0], res.map[0], {k: v[0] for k, v in res.task_maps.items()}, mask, "t")
    assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    vol = torch.rand(1, 8, 8, 8)
    p3 = render_overlay(tmp_path / "o3.png", vol, vol, {"x": vol}, vol > 0.5)
    assert p3.exists()
