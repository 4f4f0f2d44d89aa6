"""The fast scoring mode: a single-pass student distilled from the full scorer, calibrated on its own scores of
normals it never trained on, stored in the model file and chosen by load_detector."""

import numpy as np
import pytest
import torch

from monai_mtlmad.apps.bundle import load_detector
from monai_mtlmad.data import head_phantoms, insert_lesions
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.scoring.fusion import conformal_threshold
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
    c0 = float(torch.corrcoef(torch.stack([a, untrained.score(images, fg)[3][fg]]))[0, 1])
    assert corr > c0 + 0.3, (corr, c0)
    # one map per dense task, in the full mode's units, every task's error and image score, and no routing in one pass
    assert set(fast.task_maps) == {"inpainting", "jigsaw", "pseudo_anomaly", "pseudo_label"}
    assert set(fast.task_scores) == set(full.task_scores) and fast.expert_usage == {}
    assert set(fast.image_scores) == set(full.image_scores) == {"map_quantile", "task_mean", "one_class", "synthetic"}
    assert fast.map.shape == full.map.shape == (6, 1, 32, 32)


def test_student_predicts_the_teachers_task_errors(distilled):
    """The task errors (orientation's is no map) come out of the one pass following the teacher's across images
    neither trained on (per-task correlation); an untrained student's do not."""
    _, scorer, _ = distilled
    images, _ = insert_lesions(*head_phantoms(8, (32, 32), seed=9, return_brain=True), seed=9)
    images = torch.cat([torch.from_numpy(images), torch.from_numpy(head_phantoms(8, (32, 32), seed=10))])
    full, fast = _fused(scorer, images, False), _fused(scorer, images, True)
    teacher = torch.stack([full.task_scores[n] for n in scorer.student.score_tasks]).cpu()
    student = torch.stack([fast.task_scores[n] for n in scorer.student.score_tasks]).cpu()
    kept = scorer.student
    untrained = distill_student(scorer, [images], [images], steps=0)
    scorer.student = kept
    fg = full.foreground
    blank = torch.stack([untrained.evidence(images, fg)[0][n] for n in untrained.score_tasks]).cpu()

    def correlation(pred):
        return sum(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(pred, teacher)) / len(teacher)

    learned, chance = correlation(student), correlation(blank)
    assert learned > 0.5 and learned > chance + 0.4, (learned, chance)  # measured 0.75 against -0.56


def test_student_calibration_is_its_own(distilled):
    _, scorer, calibration = distilled
    student = scorer.student
    # thresholds and p-values come from the student's scores of the calibration normals, not the teacher's; the
    # one-class score is cross-fitted (no normal scores against a model fitted on itself), the others are not
    out = _fused(scorer, calibration, True)
    for name in ("map_quantile", "task_mean", "synthetic"):
        scores = out.image_scores[name].cpu()
        torch.testing.assert_close(student.normal_scores[name], torch.sort(scores).values)
        assert student.thresholds[name] == pytest.approx(conformal_threshold(scores, scorer.fpr))
        assert student.thresholds[name] != pytest.approx(scorer.thresholds[name])
    in_sample = torch.sort(out.image_scores["one_class"].cpu()).values
    assert not torch.allclose(student.normal_scores["one_class"], in_sample)
    # its synthetic-lesion weights are chosen on its own features
    assert set(student.feature_weights) == set(scorer.feature_weights)
    assert student.feature_weights != pytest.approx(scorer.feature_weights)
    scorer.use_fast(True)
    try:
        assert scorer.deciding_score == scorer.image_score == "synthetic"
        assert scorer.threshold == student.thresholds["synthetic"] and scorer.map_threshold == student.pixel_threshold
        assert scorer.mode == "fast"
    finally:
        scorer.use_fast(False)
    assert scorer.threshold == scorer.thresholds[scorer.image_score] and scorer.mode == "full"
    assert student.training["steps"] == 150 and student.training["pool_images"] == 16 * 4  # each with 3 anomalous copies
    check = student.training["synthetic_check"]  # teacher and student where neither trained
    assert set(check) == {"teacher_image_auroc", "student_image_auroc", "teacher_pixel_auroc", "student_pixel_auroc",
                          "teacher_image_score", "student_image_score"}
    assert check["teacher_image_score"] == check["student_image_score"] == "synthetic"
    assert student.calibration["images"] == 8


def test_fast_mode_in_the_model_file(distilled):
    folder, scorer, calibration = distilled
    images = calibration[:3]
    expected = _fused(scorer, images, True)
    loaded = load_detector(folder / "with_student.pt", fast=True)
    assert loaded.mode == "fast"
    again = loaded.score(images)
    torch.testing.assert_close(again.map, expected.map)
    torch.testing.assert_close(again.p_value, expected.p_value)
    assert load_detector(folder / "with_student.pt", fast=False).mode == "full"
    # the fast mode decides by the image score the full mode uses, with its own threshold
    chosen = load_detector(folder / "with_student.pt", image_score="task_mean", fast=True)
    assert chosen.mode == "fast" and chosen.deciding_score == "task_mean"
    assert chosen.threshold == scorer.student.thresholds["task_mean"]
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
    assert student.predict(odd).shape == (2, 4 + 5, 30, 36)  # four task maps, five task errors
    student.roi_size = (32, 32)
    try:
        big = torch.from_numpy(head_phantoms(1, (64, 48), seed=3))
        maps = student.maps(big)
        assert maps["jigsaw"].shape == (1, 1, 64, 48)
        assert all(bool(torch.isfinite(m).all()) for m in maps.values())
    finally:
        student.roi_size = None
    fg = foreground_mask(odd)
    scores, _, _, fused = student.score(odd, fg)
    score = scores["map_quantile"]
    assert score.shape == (2,) and bool((fused[~fg] <= fused[fg].min()).all())
    assert np.isfinite(score.numpy()).all()


def test_maps_only_student_decides_by_its_map_quantile(distilled, tmp_path):
    """A student without task errors (``task_errors=False``, as every student before them) has the fused map's
    quantile only, and the fast mode decides by it whatever the full mode's image score; its file loads as such."""
    _, scorer, calibration = distilled
    kept = scorer.student
    try:
        train = torch.from_numpy(head_phantoms(8, (32, 32), seed=1))
        maps_only = distill_student(scorer, [train], [calibration], steps=5, task_errors=False)
        assert maps_only.score_tasks == [] and set(maps_only.thresholds) == {"map_quantile"}
        scorer.save(tmp_path / "maps_only.pt")
    finally:
        scorer.student = kept
    loaded = load_detector(tmp_path / "maps_only.pt")
    assert loaded.mode == "fast" and loaded.image_score == "synthetic" and loaded.deciding_score == "map_quantile"
    out = loaded.score(calibration[:2])
    assert set(out.image_scores) == {"map_quantile"} and out.task_scores == {}
    assert loaded.threshold == maps_only.thresholds["map_quantile"]


@pytest.mark.parametrize("student_auroc, mode", [(0.79, "fast"), (0.70, "full")])
def test_fast_mode_is_the_default_only_where_it_kept_the_quality(distilled, tmp_path, caplog, student_auroc, mode):
    """load_detector's default scores in the fast mode when the distillation's synthetic check found the student's
    image AUROC within FAST_MODE_TOLERANCE of the teacher's, and otherwise in the full mode, saying why."""
    from monai_mtlmad.safe_io import load_checked, save_checked

    folder, _, _ = distilled
    state = load_checked(folder / "with_student.pt")
    state["student"]["training"]["synthetic_check"].update(teacher_image_auroc=0.80, student_image_auroc=student_auroc)
    save_checked(state, tmp_path / "model.pt")
    with caplog.at_level("WARNING"):
        loaded = load_detector(tmp_path / "model.pt")
    assert loaded.mode == mode and loaded.student is not None
    assert ("separated synthetic lesions less well" in caplog.text) == (mode == "full")
    assert load_detector(tmp_path / "model.pt", fast=True).mode == "fast"  # asked for, it is used anyway


def test_model_files_with_interpolated_thresholds_get_conformal_ones_when_loaded(distilled, tmp_path):
    """Files written before session 18 hold interpolated quantiles as image thresholds (with few normals they flag
    new normals more often than fpr); loading sets them again from the kept calibration scores, for the full scorer
    and the fast mode, and says so naming the file. A current file loads as saved, silently."""
    import warnings

    from monai_mtlmad.safe_io import load_checked, save_checked

    folder, teacher, _ = distilled
    state = load_checked(folder / "with_student.pt")
    fpr = state["scorer"]["fpr"]
    for part in (state["scorer"], state["student"]):
        part["thresholds"] = {k: float(torch.quantile(v, 1 - fpr)) for k, v in part["normal_scores"].items()}
    save_checked(state, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=r"old\.pt( \(fast mode\))?: image thresholds set again as conformal") as caught:
        loaded = AnomalyScorer.load(tmp_path / "old.pt")
    assert any("old.pt (fast mode)" in str(w.message) for w in caught)
    for part, stored in ((loaded, state["scorer"]), (loaded.student, state["student"])):
        for name, normal in stored["normal_scores"].items():
            assert part.thresholds[name] == conformal_threshold(normal, fpr) != stored["thresholds"][name]
    # too few kept normals for fpr: no threshold at all, so nothing is flagged
    state["scorer"]["normal_scores"] = {k: v[:3] for k, v in state["scorer"]["normal_scores"].items()}
    save_checked(state, tmp_path / "few.pt")
    with pytest.warns(UserWarning, match="few.pt"):
        few = AnomalyScorer.load(tmp_path / "few.pt")
    assert few.threshold is None and not bool(few.score(torch.from_numpy(head_phantoms(2, (32, 32), seed=3))).anomalous.any())
    with warnings.catch_warnings(record=True) as caught:  # a file written now: thresholds kept as saved, silently
        warnings.simplefilter("always")
        current = AnomalyScorer.load(folder / "with_student.pt")
    assert not [w for w in caught if "set again" in str(w.message)]
    assert current.thresholds == teacher.thresholds and current.student.thresholds == teacher.student.thresholds
