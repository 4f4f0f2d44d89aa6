"""Metrics: equal to scikit-learn on random and tied inputs; AUPRO equal to a brute-force reference."""

import numpy as np
import pytest
import torch
from skimage.measure import label, regionprops
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from monai_mtlmad.metrics import METRIC_KEYS, aupro, average_precision, compute_anomaly_metrics, f1_max, roc_auc


def sk_f1max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmax(2 * p * r / (p + r))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [None, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_curve_metrics_equal_scikit_learn(seed, ties, dtype):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    s = rng.normal(size=n) + rng.random(n)
    if ties is not None:
        s = np.round(s, ties)  # many tied scores
    if dtype == np.int64:
        s = np.round(s * 3)
    s = s.astype(dtype)
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[0], y[-1] = True, False
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert f1_max(s, y)[0] == pytest.approx(sk_f1max(y, s), abs=1e-6)
    # torch input, on the same values
    assert roc_auc(torch.as_tensor(s), torch.as_tensor(y)) == pytest.approx(roc_auc_score(y, s), abs=1e-6)


def test_f1max_threshold_reaches_the_f1():
    rng = np.random.default_rng(0)
    s, y = rng.random(500), rng.random(500) < 0.3
    f1, thr = f1_max(s, y)
    pred = s >= thr
    tp = (pred & y).sum()
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(f1)


def test_degenerate_inputs():
    assert np.isnan(roc_auc([0.1, 0.2], [0, 0]))
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))
    assert roc_auc([0.0, -0.0, 1.0], [0, 1, 1]) == pytest.approx(roc_auc_score([0, 1, 1], [0.0, -0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([np.nan, 1.0], [0, 1])
    with pytest.raises(ValueError, match="differ in size"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])


def brute_force_aupro(masks, amaps, num_th=200):
    """RD4AD's compute_pro (as used by BMAD), written out with explicit loops."""
    th_min, th_max = amaps.min(), amaps.max()
    delta = (th_max - th_min) / num_th
    rows = []
    for j in range(num_th):
        th = th_min + j * delta
        binary = amaps > th
        pros = []
        for b, m in zip(binary, masks):
            for region in regionprops(label(m)):
                pros.append(b[tuple(region.coords.T)].sum() / region.area)
        inverse = ~masks.astype(bool)
        fpr = (inverse & binary).sum() / inverse.sum()
        rows.append((np.mean(pros), fpr))
    pro, fpr = np.array(rows).T
    keep = fpr < 0.3
    fpr = fpr[keep] / fpr[keep].max()
    return auc(fpr, pro[keep])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spatial", [(24, 20), (10, 12, 8)])
def test_aupro_matches_brute_force(seed, spatial):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4,) + spatial, bool)
    for i in range(3):  # several irregular regions per image, image 3 normal
        for _ in range(int(rng.integers(1, 4))):
            c = [int(rng.integers(2, s - 4)) for s in spatial]
            masks[(i,) + tuple(slice(ci, ci + int(rng.integers(1, 4))) for ci in c)] = True
    amaps = rng.random(masks.shape) + 0.8 * masks + 0.2 * rng.random(masks.shape)
    assert aupro(amaps, masks) == pytest.approx(brute_force_aupro(masks, amaps), abs=1e-6)


def test_aupro_limits():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    perfect = masks.astype(float)
    assert aupro(perfect + 0.01 * np.random.default_rng(0).random(masks.shape), masks) > 0.99
    assert np.isnan(aupro(np.random.rand(2, 8, 8), np.zeros((2, 8, 8))))


def test_compute_anomaly_metrics_keys_and_baselines():
    rng = np.random.default_rng(0)
    n = 12
    labels = np.array([0] * 6 + [1] * 6)
    masks = np.zeros((n, 32, 32), bool)
    masks[6:, 10:16, 12:18] = True
    images = rng.random((n, 1, 32, 32)).astype(np.float32) * 0.5
    images[:, :, 4:28, 4:28] += 0.3
    foreground = np.zeros((n, 32, 32), bool)
    foreground[:, 4:28, 4:28] = True
    foreground[6:, 2:30, 2:30] = True  # anomalous images hold more tissue: the trivial score separates them
    images[6:, :, 10:16, 12:18] += 0.1
    maps = rng.random((n, 1, 32, 32)) + masks[:, None] * 0.7
    scores = maps.reshape(n, -1).max(1)
    out = compute_anomaly_metrics(scores, labels, maps, masks[:, None], images=images, foreground=foreground)
    assert set(out) == set(METRIC_KEYS)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["baseline_image_auroc_foreground"] == 1.0
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.reshape(-1), maps.reshape(-1)))
    inside = np.broadcast_to(foreground[6:], masks[6:].shape)
    assert out["pixel_auroc_anomalous"] == pytest.approx(
        roc_auc_score(masks[6:][inside], maps[6:, 0][inside])
    )
    assert out["baseline_pixel_auroc_intensity"] == pytest.approx(
        roc_auc_score(masks.reshape(-1), images.reshape(-1))
    )
    assert 0 < out["pixel_aupro"] <= 1 and 0 < out["pixel_dice"] <= 1
    image_only = compute_anomaly_metrics(scores, labels)
    assert image_only["pixel_auroc"] is None and image_only["pixel_aupro"] is None
    assert compute_anomaly_metrics(scores, np.zeros(n))["image_auroc"] is None
    with pytest.raises(ValueError, match="labels"):
        compute_anomaly_metrics(scores, labels[:3])


def test_cumulative_metric_and_ignite_handler_over_batches():
    from ignite.engine import Engine

    from monai_mtlmad.handlers import AnomalyMetricHandler
    from monai_mtlmad.metrics import AnomalyMetric

    rng = np.random.default_rng(1)
    scores = torch.as_tensor(rng.random(20))
    labels = torch.as_tensor(rng.random(20) < 0.5).long()
    maps = torch.as_tensor(rng.random((20, 1, 8, 8)))
    masks = torch.zeros(20, 1, 8, 8)
    masks[labels.bool(), :, 2:5, 2:5] = 1
    maps = maps + 0.5 * masks
    batches = [(i, i + 5) for i in range(0, 20, 5)]
    metric = AnomalyMetric("image_auroc")
    for a, b in batches:
        metric(scores[a:b], labels[a:b])
    assert metric.aggregate() == pytest.approx(roc_auc_score(labels, scores))

    def step(engine, batch):
        a, b = batch
        return {"score": scores[a:b], "label": labels[a:b], "map": maps[a:b], "mask": masks[a:b]}

    evaluator = Engine(step)
    AnomalyMetricHandler("image_ap", lambda o: (o["score"], o["label"])).attach(evaluator, "image_ap")
    AnomalyMetricHandler("pixel_auroc", lambda o: (o["map"], o["mask"])).attach(evaluator, "pixel_auroc")
    AnomalyMetricHandler("pixel_aupro", lambda o: (o["map"], o["mask"])).attach(evaluator, "pixel_aupro")
    evaluator.run(batches)
    m = evaluator.state.metrics
    assert m["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.reshape(-1), maps.reshape(-1)))
    assert m["pixel_aupro"] == pytest.approx(brute_force_aupro(masks[:, 0].numpy() > 0, maps[:, 0].numpy()), abs=1e-6)
    with pytest.raises(ValueError, match="unknown anomaly metric"):
        AnomalyMetric("image_aupro")
