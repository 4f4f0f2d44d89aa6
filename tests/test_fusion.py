"""Fusion chosen from normals alone: synthetic-lesion weights, the one-class model, shrinkage covariance."""

import pytest
import torch

from monai_mtlmad.metrics import pixel_auroc_anomalous, roc_auc
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.scoring.fusion import (
    OneClassGaussian,
    auroc_weights,
    conformal_threshold,
    fewest_calibration_normals,
    forward_select_map_weights,
    image_scores,
    insert_validation_lesions,
    ledoit_wolf,
    normal_thresholds,
    select_map_weights,
    synthetic_feature_weights,
)
from monai_mtlmad.scoring.scorer import conformal_p_values
from monai_mtlmad.scoring.student import distill_student
from monai_mtlmad.tasks import ProxyTask, register_task
from monai_mtlmad.transforms.foreground import foreground_mask, foreground_quantile
from monai_mtlmad.transforms.functional import smooth_noise


class _FixedMapTask(ProxyTask):
    """A dense task whose error map is computed from the image alone (no network): lets a test decide which task
    carries the evidence."""

    kind = "dense"
    out_channels = 1

    def training_views(self, images, generator=None, batch=None):  # pragma: no cover - never trained here
        raise NotImplementedError

    def loss(self, output, views):  # pragma: no cover
        raise NotImplementedError

    def inference_views(self, images, batch=None):  # pragma: no cover
        raise NotImplementedError

    def error(self, output, views):  # pragma: no cover
        raise NotImplementedError

    def score(self, predict, images, batch=None):
        emap = self.map(images)
        return emap.flatten(1).mean(1), emap


@register_task("test_deviation")
class DeviationTask(_FixedMapTask):
    """Knows what normal tissue looks like (intensity 0.5): localises any intensity change."""

    def map(self, images):
        return (images - 0.5).abs() * (images > 0.1)


@register_task("test_noise")
class NoiseTask(_FixedMapTask):
    """Localises nothing: its map is blobs of noise as large as lesions."""

    def map(self, images):
        g = torch.Generator().manual_seed(int(images.sum() * 1000) % 2**31)
        return smooth_noise(images.shape[0], images.shape[2:], 6, g).clamp_min(0) ** 2


@register_task("test_deviation_twin")
class DeviationTwinTask(DeviationTask):
    """The same map as ``test_deviation``: no synthetic lesion can tell one from the other, or from their mixture."""


def discs(n, seed, size=48, spatial_dims=2):
    """Normal images: a disc (a ball in 3D) of intensity 0.5 with a smooth texture on a black background."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij")
    disc = (sum(c**2 for c in grid) < 0.7).float()
    return (disc * (0.5 + 0.05 * smooth_noise(n, (size,) * spatial_dims, 10, g))).clamp(0, 1)


def scorer(map_weights, image_score="map_quantile", names=("test_deviation", "test_noise"), spatial_dims=2, **settings):
    from monai_mtlmad.tasks import create_tasks

    tasks = create_tasks(list(names), spatial_dims)
    net = MTLMoENet(spatial_dims, 1, {t.name: t.head for t in tasks}, channels=(4, 8), strides=(2, 2))
    return AnomalyScorer(net, tasks, map_weights=map_weights, image_score=image_score, **settings)


@pytest.fixture(scope="module")
def test_set():
    normal = discs(12, seed=2)
    sick = discs(12, seed=3)
    # bright squares: another lesion family than the calibration's synthetic one
    mask = torch.zeros_like(sick, dtype=torch.bool)
    for i in range(12):
        r, c = 12 + (i * 5) % 16, 10 + (i * 7) % 18
        mask[i, 0, r : r + 8, c : c + 8] = True
    sick = torch.where(mask, sick + 0.03, sick)  # subtle: a noisy task can drown it
    return torch.cat([normal, sick]), torch.cat([torch.zeros_like(mask), mask]), torch.tensor([0] * 12 + [1] * 12)


def test_synthetic_lesions_choose_the_task_that_localises(test_set):
    images, masks, labels = test_set
    normals = discs(30, seed=1)
    equal, chosen = scorer("equal").fit(normals), scorer("synthetic").fit(normals)
    auroc = chosen.selection["pixel_auroc"]
    assert auroc["test_deviation"] > 0.9 and 0.35 < auroc["test_noise"] < 0.65, auroc
    assert chosen.fitted_map_weights["test_deviation"] > 0.95 and equal.fitted_map_weights == {
        "test_deviation": 1.0, "test_noise": 1.0
    }
    fused = {}
    for name, s in (("equal", equal), ("synthetic", chosen)):
        res = s.score(images)
        fused[name] = pixel_auroc_anomalous(res.map, masks, labels, res.foreground)
    assert fused["synthetic"] > fused["equal"] + 0.03, fused
    # the image-level weights follow the same evidence; every calibrated image score separates clearer lesions
    w = chosen.feature_weights
    assert w["test_deviation:map"] > 0.3 and w["test_noise"] + w["test_noise:map"] < 0.05, w
    res = chosen.score(torch.where(masks, images + 0.1, images))
    assert set(res.image_scores) == set(AnomalyScorer.IMAGE_SCORES)
    for name in ("synthetic", "one_class", "map_quantile"):
        assert roc_auc(res.image_scores[name], labels) > 0.9, name


def test_selected_map_weights_drop_a_map_that_only_blurs_the_best_one(test_set):
    images, masks, labels = test_set
    normals = discs(30, seed=1)
    synthetic, selected = scorer("synthetic").fit(normals), scorer("selected").fit(normals)
    # the proportional weights still give the noise some share; the selection gives it none
    assert 0 < synthetic.fitted_map_weights["test_noise"] < 0.05, synthetic.fitted_map_weights
    assert selected.fitted_map_weights == {"test_deviation": 1.0, "test_noise": 0.0}, selected.fitted_map_weights
    assert selected.selection["fused_pixel_auroc"] > 0.9
    fused = {}
    for name, s in (("synthetic", synthetic), ("selected", selected)):
        res = s.score(images)
        fused[name] = pixel_auroc_anomalous(res.map, masks, labels, res.foreground)
    assert fused["selected"] >= fused["synthetic"], fused
    # the image features keep the user's mixture: the image scores are those of equal map weights
    equal = scorer("equal").fit(normals)
    assert selected.feature_map_weights == equal.fitted_map_weights == {"test_deviation": 1.0, "test_noise": 1.0}
    torch.testing.assert_close(selected.score(images).image_scores["map_quantile"],
                               equal.score(images).image_scores["map_quantile"])
    # a task the user weighs 0 is never selected back in
    off = scorer("selected", weights={"test_deviation": 0.0, "test_noise": 1.0}).fit(normals)
    assert off.fitted_map_weights == {"test_deviation": 0.0, "test_noise": 1.0}
    # the fast mode's student shows the selected map and describes the image with the user's mixture, as its teacher
    student = distill_student(selected, [normals[:8]], [normals[8:]], steps=2, batch_size=4)
    assert student.map_weights == selected.fitted_map_weights
    fg = foreground_mask(images)
    task_scores, task_maps = student.evidence(images, fg)
    features, _ = student.features(task_scores, task_maps, fg)
    mixture = (task_maps["test_deviation"] + task_maps["test_noise"]) / 2
    torch.testing.assert_close(features[:, -1], foreground_quantile(mixture, fg, selected.quantile)[0].float().cpu())


def test_selection_mixes_maps_that_see_different_lesions():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(20_000, generator=g) < 0.1
    half = torch.rand(20_000, generator=g) < 0.5  # each map sees the lesion pixels of one half
    left = torch.randn(20_000, generator=g) + 3.0 * (labels & half)
    right = torch.randn(20_000, generator=g) + 3.0 * (labels & ~half)
    noise = torch.randn(20_000, generator=g)
    values = torch.stack([left, noise, right], 1)
    weights, auroc = select_map_weights(values, labels, ["left", "noise", "right"])
    assert weights["noise"] == 0 and abs(weights["left"] - 0.5) <= 0.1 and abs(weights["right"] - 0.5) <= 0.1, weights
    assert auroc > max(roc_auc(left, labels), roc_auc(right, labels)) + 0.03
    assert abs(auroc - roc_auc(values @ torch.tensor([weights["left"], 0.0, weights["right"]]), labels)) < 1e-6


def test_selection_keeps_the_users_mixture_unless_the_lesions_show_a_map_blurs_it():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(50_000, generator=g) < 0.1
    strong = torch.randn(50_000, generator=g) + 4.0 * labels  # finds the lesions at pixel AUROC ~0.998
    weaker = torch.randn(50_000, generator=g) + 1.5 * labels  # mixed in, within 0.001 of the strong map alone
    blur = torch.randn(50_000, generator=g) + 0.3 * labels  # above chance (~0.58), yet mixed in it blurs the strong map
    noise = 0.3 * torch.randn(50_000, generator=g)  # at chance: sees nothing (and a small spread)
    values = torch.stack([strong, weaker], 1)
    assert abs(roc_auc(strong + weaker, labels) - roc_auc(strong, labels)) < 2e-3  # the lesions cannot tell them apart
    weights, auroc = select_map_weights(values, labels, ["strong", "weaker"], weights=[3.0, 1.0])
    assert weights == pytest.approx({"strong": 0.75, "weaker": 0.25}), weights  # the prior stays, as given
    assert auroc == pytest.approx(roc_auc(values @ torch.tensor([3.0, 1.0]), labels), abs=1e-6)
    assert roc_auc(blur, labels) > 0.55 and roc_auc(strong + blur, labels) < roc_auc(strong, labels) - 0.005
    weights, _ = select_map_weights(torch.stack([strong, blur], 1), labels, ["strong", "blur"])
    assert weights == {"strong": 1.0, "blur": 0.0}, weights  # eliminated on the evidence
    # pure noise costs these strong lesions little (a removal would not pass tol), but it is left out at chance
    assert roc_auc(strong + weaker, labels) - roc_auc(strong + weaker + noise, labels) < 0.005
    three, names = torch.stack([strong, weaker, noise], 1), ["strong", "weaker", "noise"]
    assert select_map_weights(three, labels, names)[0] == {"strong": 0.5, "weaker": 0.5, "noise": 0.0}
    assert select_map_weights(three, labels, names, chance_margin=-1.0)[0]["noise"] > 0  # elimination alone keeps it
    # no map finds the lesions (a barely trained learner): no evidence, the user's mixture stands whole
    chance = torch.stack([noise, torch.randn(50_000, generator=g), 0.5 * torch.randn(50_000, generator=g)], 1)
    chosen = select_map_weights(chance, labels, ["a", "b", "c"], weights=[1.0, 1.0, 2.0], tol=0.0)[0]  # even at tol 0
    assert chosen == {"a": 0.25, "b": 0.25, "c": 0.5}, chosen
    # no lesion pixel: nothing to decide on, the user's mixture and a nan AUROC
    weights, auroc = select_map_weights(values, torch.zeros_like(labels), ["strong", "weaker"])
    assert weights == {"strong": 0.5, "weaker": 0.5} and auroc != auroc


def test_forward_selection_leans_to_one_map_and_adds_another_only_on_evidence():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(20_000, generator=g) < 0.1
    half = torch.rand(20_000, generator=g) < 0.5
    strong = torch.randn(20_000, generator=g) + 3.0 * labels
    noise = torch.randn(20_000, generator=g)
    # two maps the lesions cannot tell apart: backward keeps the user's mixture, forward the first map alone
    same = torch.stack([strong, 2.0 * strong], 1)
    assert select_map_weights(same, labels, ["a", "b"])[0] == {"a": 0.5, "b": 0.5}
    weights, auroc = forward_select_map_weights(same, labels, ["a", "b"])
    assert weights == {"a": 1.0, "b": 0.0} and auroc == pytest.approx(roc_auc(strong, labels), abs=1e-9)
    # the best map first, whatever the order; one that sees nothing never joins
    weights, _ = forward_select_map_weights(torch.stack([noise, strong], 1), labels, ["noise", "strong"])
    assert weights == {"noise": 0.0, "strong": 1.0}, weights
    # maps that see different lesions are mixed, at a weight that is a multiple of 1 / rounds
    left = torch.randn(20_000, generator=g) + 3.0 * (labels & half)
    right = torch.randn(20_000, generator=g) + 3.0 * (labels & ~half)
    weights, auroc = forward_select_map_weights(torch.stack([left, right], 1), labels, ["left", "right"])
    assert 0.3 <= weights["left"] <= 0.7 and weights["left"] + weights["right"] == pytest.approx(1.0), weights
    assert auroc > max(roc_auc(left, labels), roc_auc(right, labels)) + 0.03
    assert all(abs(10 * w - round(10 * w)) < 1e-6 for w in weights.values())
    # no lesion pixel: the user's mixture and a nan AUROC, as the backward rule
    weights, auroc = forward_select_map_weights(same, torch.zeros_like(labels), ["a", "b"], [3.0, 1.0])
    assert weights == {"a": 0.75, "b": 0.25} and auroc != auroc


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_map_selection_rule_follows_the_learners_dimensions_unless_set(spatial_dims):
    names = ("test_deviation", "test_deviation_twin", "test_noise")
    normals = discs(12, seed=1, size=48 if spatial_dims == 2 else 24, spatial_dims=spatial_dims)
    mixture = {"test_deviation": 0.5, "test_deviation_twin": 0.5, "test_noise": 0.0}  # backward: the twins stay
    single = {"test_deviation": 1.0, "test_deviation_twin": 0.0, "test_noise": 0.0}  # forward: the first twin alone
    expected = {None: single if spatial_dims == 3 else mixture, "backward": mixture, "forward": single}
    for rule, weights in expected.items():
        fitted = scorer("selected", names=names, spatial_dims=spatial_dims, map_selection=rule).fit(normals)
        assert fitted.fitted_map_weights == weights, (rule, fitted.fitted_map_weights)
        assert fitted.selection["rule"] == (rule or ("forward" if spatial_dims == 3 else "backward"))
    # the setting travels with the model's state; a wrong one is refused
    again = scorer("selected", names=names, spatial_dims=spatial_dims)
    assert again.load_state_dict(fitted.state_dict()).map_selection == "forward"
    with pytest.raises(ValueError, match="map_selection"):
        scorer("selected", map_selection="sideways")


def test_every_image_score_has_its_own_threshold_and_can_decide(test_set):
    images, _, labels = test_set
    s = scorer("synthetic", image_score="one_class").fit(discs(30, seed=1))
    assert set(s.thresholds) == set(AnomalyScorer.IMAGE_SCORES)
    res = s.score(images)
    torch.testing.assert_close(res.score, res.image_scores["one_class"])
    assert torch.equal(res.anomalous, res.score >= s.thresholds["one_class"])
    with pytest.raises(ValueError, match="synthetic_lesions"):
        scorer("synthetic").__class__(s.net, s.tasks, image_score="synthetic", synthetic_lesions=False)


@pytest.mark.parametrize("n, fpr", [(20, 0.05), (10, 0.1), (59, 0.05)])
def test_a_new_normal_crosses_the_image_threshold_at_most_at_the_nominal_rate(n, fpr):
    """Split conformal: over many draws of ``n`` calibration normals and one new normal (all exchangeable), the new
    one is flagged at most ``fpr`` of the time (exactly ``floor((n + 1) fpr) / (n + 1)``). An interpolated quantile
    of these normals flags 6-17 % (measured)."""
    draws = torch.randn(20_000, n + 1, generator=torch.Generator().manual_seed(n))
    flagged = torch.tensor([bool(row[n] >= conformal_threshold(row[:n], fpr)) for row in draws])
    exact = int((n + 1) * fpr + 1e-9) / (n + 1)
    assert float(flagged.float().mean()) == pytest.approx(exact, abs=0.005) and exact <= fpr


def test_the_image_decision_is_the_p_value_at_the_nominal_rate():
    """``score >= threshold`` exactly when ``p <= fpr``, for every score: ties, the normals' own values, between them."""
    g = torch.Generator().manual_seed(0)
    normal = torch.sort(torch.round(torch.randn(40, generator=g) * 4) / 4).values  # many ties
    queries = torch.cat([normal, torch.randn(400, generator=g) * 2, normal + 1e-6, normal - 1e-6])
    for fpr in (0.05, 0.1, 0.2):
        thr = conformal_threshold(normal, fpr)
        assert torch.equal(queries >= thr, conformal_p_values(normal, queries) <= fpr + 1e-12), fpr


def test_too_few_normals_for_the_rate_set_no_image_threshold_and_flag_nothing(test_set):
    images, _, labels = test_set
    with pytest.warns(UserWarning, match="18 calibration normals cannot support a false-positive rate of 0.05"):
        assert normal_thresholds({"s": torch.randn(18)}, [], 0.05, 0.01)[1] == {"s": None}
    assert normal_thresholds({"s": torch.randn(19)}, [], 0.05, 0.01)[1]["s"] is not None  # 19 suffice at 5 %
    for fpr in (0.01, 0.05, 0.1, 0.2, 0.3, 0.5):  # the count the MONAI Label retraining asks for is the exact one
        k = fewest_calibration_normals(fpr)
        assert conformal_threshold(torch.randn(k - 1), fpr) is None and conformal_threshold(torch.randn(k), fpr) is not None
    with pytest.warns(UserWarning, match="cannot support a false-positive rate of 0.05"):
        few = scorer("synthetic").fit(discs(12, seed=1))
    assert few.threshold is None and set(few.thresholds.values()) == {None}
    res = few.score(images)
    assert not bool(res.anomalous.any()) and bool((res.p_value >= 1 / 13).all())  # p-values still hold
    enough = scorer("synthetic").fit(discs(30, seed=1))
    obvious = images[labels == 1].clone()
    obvious[..., 14:30, 14:30] += 0.3  # lesions no normal comes near
    res = enough.score(torch.cat([images, obvious]))
    assert torch.equal(res.anomalous, res.p_value <= enough.fpr) and bool(res.anomalous[len(images):].all())


def test_validation_lesions_stay_in_the_foreground_and_change_the_image():
    images = discs(6, seed=4)
    fg = images > 0.1
    lesioned, masks = insert_validation_lesions(images, fg, torch.Generator().manual_seed(0))
    assert masks.any(dim=(1, 2, 3)).all() and not (masks & ~fg).any()
    assert torch.equal(lesioned[~masks], images[~masks])
    shift = (lesioned - images)[masks].abs()
    assert float(shift.mean()) > 0.05


def test_one_class_distance_is_one_sided():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(200, 4, generator=g)
    model = OneClassGaussian().fit(normal)
    mean = normal.mean(0)
    below, above = model.score((mean - 5).unsqueeze(0)), model.score((mean + 5).unsqueeze(0))
    assert float(below) == 0.0 and float(above) > 5
    restored = OneClassGaussian.from_state(model.state_dict())
    torch.testing.assert_close(restored.score(normal[:5]), model.score(normal[:5]))


def test_ledoit_wolf_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    x = torch.randn(25, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected, _ = covariance.ledoit_wolf(x.numpy())
    torch.testing.assert_close(ledoit_wolf(x), torch.from_numpy(expected))


def test_normal_std_scale_keeps_a_wide_weak_feature_from_drowning_a_narrow_strong_one():
    """Weights from AUROCs are scale-free, a weighted sum is not: a feature that varies widely among normals but barely
    separates lesions outweighs a narrow, telling one unless each is put in units of its normal spread."""
    g = torch.Generator().manual_seed(0)

    def draw(n, shift):  # column 0: spread 100, shifted 25 by a lesion; column 1: spread 0.1, shifted 0.2
        return torch.randn(n, 2, generator=g) * torch.tensor([100.0, 0.1]) + shift * torch.tensor([25.0, 0.2])

    names = ["wide", "narrow"]
    normal, lesioned = draw(200, 0), draw(200, 1)
    test, labels = torch.cat([draw(300, 0), draw(300, 1)]), torch.tensor([0] * 300 + [1] * 300)
    auroc = {}
    for scale in ("raw", "normal_std"):
        aurocs, weights = synthetic_feature_weights(normal, lesioned, names, scale)
        assert aurocs["narrow"] > 0.85 and aurocs["wide"] < 0.65, aurocs
        auroc[scale] = roc_auc(image_scores(test, names, {}, weights)["synthetic"], labels)
    assert auroc["normal_std"] > 0.85 and auroc["raw"] < 0.7, auroc
    with pytest.raises(ValueError, match="feature scale"):
        synthetic_feature_weights(normal, lesioned, names, "z")
    # the scorer applies its setting at calibration and keeps it in the model's state
    s = scorer("equal", image_score="synthetic", feature_scale="normal_std").fit(discs(30, seed=1))
    raw = scorer("equal", image_score="synthetic").fit(discs(30, seed=1))
    assert s.state_dict()["feature_scale"] == "normal_std"
    assert s.feature_weights != raw.feature_weights and s.selection["image_auroc"] == raw.selection["image_auroc"]
    with pytest.raises(ValueError, match="feature_scale"):
        scorer("equal", feature_scale="z")


def test_auroc_weights_ignore_evidence_at_chance():
    assert auroc_weights({"a": 0.9, "b": 0.5, "c": 0.3}) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert auroc_weights({"a": 0.5, "b": 0.4}) == {"a": 0.5, "b": 0.5}


def test_more_synthetic_copies_steady_the_feature_weights():
    """Lesioned copies of each calibration normal: K copies give K times the synthetic anomalies, and the AUROCs that
    weigh the features vary less from one draw of lesions (seed) to the next."""
    normals = discs(30, seed=1)
    spread = {}
    for copies in (1, 6):
        aurocs = []
        for seed in range(5):
            s = scorer("equal", image_score="synthetic", synthetic_copies=copies).fit(normals, seed=seed)
            assert s.selection["lesioned_images"] == copies * 30 and s.selection["images"] == 30
            aurocs.append([s.selection["image_auroc"][n] for n in s.feature_names])
        spread[copies] = float(torch.tensor(aurocs).std(0).mean())
    assert spread[6] < 0.7 * spread[1], spread
    assert AnomalyScorer.load_state_dict(scorer("equal"), s.state_dict()).synthetic_copies == 6  # kept in the file
