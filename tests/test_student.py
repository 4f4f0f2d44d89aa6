"""The fast scoring mode: a single-pass student distilled from the full scorer, calibrated on its own scores of
normals it never trained on, stored in the model file and chosen by load_detector."""

import numpy as np
import pytest
import torch

from monai_mtlmad.apps.bundle import load_detector
from monai_mtlmad.data import head_phantoms, insert_lesions
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.scoring.student import distill_student
from monai_mtlmad.transforms.foreground import foreground_mask

from helpers import train_model


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A small trained teacher (a model file as the bundle writes it) and its student, distilled for 150 steps."""
    folder = tmp_path_factory.mktemp("student")
    teacher = train_model(folder / "teacher.pt", 2, "png", steps=60)
    train = torch.from_numpy(head_phantoms(16, (32, 32), seed=1))  # the teacher's training images
    calibration = torch.from_numpy(head_phantoms(8, (32, 32), seed=2))  # its calibration normals
    torch.manual_seed(0)
    distill_student(teacher, [train[:8], train[8:]], [calibration], steps=150, batch_size=8)
    teacher.save(folder / "with_student.pt")
    return folder, teacher, calibration


def _fused(scorer, images, fast):
    scorer.use_fast(fast)
    try:
        out = scorer.score(images)
    finally:
        scorer.use_fast(False)
    return out


def test_student_reproduces_the_teachers_maps_on_unseen_lesions(distilled):
    _, scorer, _ = distilled
    images, masks = insert_lesions(*head_phantoms(6, (32, 32), seed=7, return_brain=True), seed=7)
    images = torch.from_numpy(images)
    full, fast = _fused(scorer, images, False), _fused(scorer, images, True)
    fg = full.foreground
    a, b = full.map[fg], fast.map[fg]
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert corr > 0.5, corr
    # an undistilled student (same architecture, no training) does not: the agreement is learned
    kept = scorer.student
    untrained = distill_student(scorer, [images], [images], steps=0)
    scorer.student = kept
    c0 = float(torch.corrcoef(torch.stack([a, untrained.fuse(untrained.maps(images), fg)[1][fg]]))[0, 1])
    assert corr > c0 + 0.3, (corr, c0)
    # one map per dense task, in the full mode's units, and no per-task image scores or routing in one pass
    assert set(fast.task_maps) == {"inpainting", "jigsaw", "pseudo_anomaly", "pseudo_label"}
    assert fast.task_scores == {} and fast.expert_usage == {} and set(fast.image_scores) == {"map_quantile"}
    assert fast.map.shape == full.map.shape == (6, 1, 32, 32)


def test_student_calibration_is_its_own(distilled):
    _, scorer, calibration = distilled
    student = scorer.student
    # thresholds and p-values come from the student's scores of the calibration normals, not the teacher's
    scores = _fused(scorer, calibration, True).score.cpu()
    torch.testing.assert_close(student.normal_scores, torch.sort(scores).values)
    assert student.threshold == pytest.approx(float(torch.quantile(scores, 1 - scorer.fpr)))
    assert student.threshold != pytest.approx(scorer.thresholds["map_quantile"])
    scorer.use_fast(True)
    try:
        assert scorer.threshold == student.threshold and scorer.map_threshold == student.pixel_threshold
        assert scorer.mode == "fast"
    finally:
        scorer.use_fast(False)
    assert scorer.threshold == scorer.thresholds[scorer.image_score] and scorer.mode == "full"
    assert student.training["steps"] == 150 and student.training["pool_images"] == 16 * 4  # each with 3 anomalous copies
    check = student.training["synthetic_check"]  # teacher and student where neither trained
    assert set(check) == {"teacher_image_auroc", "student_image_auroc", "teacher_pixel_auroc", "student_pixel_auroc"}
    assert student.calibration["images"] == 8


def test_fast_mode_in_the_model_file(distilled):
    folder, scorer, calibration = distilled
    images = calibration[:3]
    expected = _fused(scorer, images, True)
    # load_detector scores in the fast mode whenever the file holds one and the image score is the map quantile
    loaded = load_detector(folder / "with_student.pt")
    assert loaded.mode == "fast"
    again = loaded.score(images)
    torch.testing.assert_close(again.map, expected.map)
    torch.testing.assert_close(again.p_value, expected.p_value)
    assert load_detector(folder / "with_student.pt", fast=False).mode == "full"
    # the fast mode decides by its own map quantile whatever image score the full mode uses
    chosen = load_detector(folder / "with_student.pt", image_score="task_mean")
    assert chosen.mode == "fast" and chosen.deciding_score == "map_quantile" and chosen.threshold == scorer.student.threshold
    full = load_detector(folder / "with_student.pt", image_score="task_mean", fast=False)
    assert full.deciding_score == "task_mean" and full.threshold == full.thresholds["task_mean"]
    # a file without a student scores in the full mode, and says so when the fast mode is asked for
    assert load_detector(folder / "teacher.pt").mode == "full"
    with pytest.raises(ValueError, match="teacher.pt.*holds no fast mode"):
        load_detector(folder / "teacher.pt", fast=True)
    assert AnomalyScorer.load(folder / "teacher.pt").student is None


def test_student_scores_images_of_other_sizes(distilled):
    """Sizes the UNet cannot halve three times are padded and cropped back; larger ones run in sliding windows."""
    _, scorer, _ = distilled
    student = scorer.student
    odd = torch.from_numpy(head_phantoms(2, (30, 36), seed=3))
    assert student.predict(odd).shape == (2, 4, 30, 36)
    student.roi_size = (32, 32)
    try:
        big = torch.from_numpy(head_phantoms(1, (64, 48), seed=3))
        maps = student.maps(big)
        assert maps["jigsaw"].shape == (1, 1, 64, 48)
        assert all(bool(torch.isfinite(m).all()) for m in maps.values())
    finally:
        student.roi_size = None
    fg = foreground_mask(odd)
    score, fused = student.fuse(student.maps(odd), fg)
    assert score.shape == (2,) and bool((fused[~fg] <= fused[fg].min()).all())
    assert np.isfinite(score.numpy()).all()
