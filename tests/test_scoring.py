"""AnomalyScorer: calibration on normals, fusion, thresholds, persistence, foreground, 3D sliding window."""

import numpy as np
import pytest
import torch

from monai_mtlmad.data import head_phantoms, insert_lesions
from monai_mtlmad.engines import fit_learner
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.safe_io import CorruptFileError, load_checked
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
    with pytest.warns(UserWarning, match="calibrating on 20 normal images"):  # below 30: says so
        scorer = AnomalyScorer(net, tasks, fpr=0.1, rim=0.06).fit(normals)
    assert set(scorer.stats) == set(DEFAULT_TASKS)
    assert "pixel_loc" not in scorer.stats["orientation"] and "pixel_scale" in scorer.stats["inpainting"]
    res = scorer.score(normals)
    # the threshold is conformal at 10 % over the normals' cross-fitted scores: about 10 % flagged, never more than 15 %
    assert res.anomalous.float().mean() <= 0.15
    assert torch.all((res.p_value > 0) & (res.p_value <= 1))
    # normalised task scores of the calibration normals are centred (median 0) on a robust unit scale
    for name, s in res.task_scores.items():
        assert abs(float(s.median())) < 1e-4, name
    # task maps are normalised after smoothing: on these normals each one has median 0 and unit robust scale
    from monai_mtlmad.scoring.scorer import _robust

    for name, m in res.task_maps.items():
        loc, scale = _robust(m[res.foreground])
        assert abs(loc) < 1e-3 and scale == pytest.approx(1.0, rel=1e-3), (name, loc, scale)
    assert res.map.shape == (20, 1, 48, 48) and set(res.task_maps) == {
        "inpainting", "jigsaw", "pseudo_anomaly", "pseudo_label"
    }
    assert not bool(res.foreground[:, :, 0, 0].any())  # the corner is background
    usage = res.expert_usage["bottleneck_moe"]["selection"]
    assert usage.shape == (5, 4) and torch.allclose(usage.sum(1), torch.full((5,), 2.0))


def test_scoring_keeps_the_routing_statistics_of_training(trained):
    """A validation run in the middle of a training epoch must not change the routing that epoch recorded."""
    net, tasks = trained
    scorer = AnomalyScorer(net, tasks).fit(torch.from_numpy(head_phantoms(4, (48, 48), seed=17)))
    net.reset_usage()
    net.train()
    ids = torch.arange(len(tasks)).repeat_interleave(2)
    net(torch.from_numpy(head_phantoms(2 * len(tasks), (48, 48), seed=18)), ids)  # "training" routing
    before = net.expert_usage()
    res = scorer.score(torch.from_numpy(head_phantoms(3, (48, 48), seed=19)))
    after = net.expert_usage()
    for block in before:
        for kind in ("selection", "probability"):
            torch.testing.assert_close(after[block][kind], before[block][kind])
            assert not torch.allclose(res.expert_usage[block][kind], before[block][kind])  # scoring's own routing


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
    torch.testing.assert_close(res.image_scores["task_mean"], res.task_scores["inpainting"])
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


def test_load_to_a_device_keeps_the_calibration_on_the_cpu(trained, tmp_path):
    """``map_location`` moves the network only: the calibration stays where ``fit`` keeps it, on the CPU (the one-class
    model scores CPU features; loading it onto the GPU broke every evaluation there, session 23). The "meta" device
    stands in for a GPU on machines without one."""
    net, tasks = trained
    normals = torch.from_numpy(head_phantoms(8, (48, 48), seed=16))
    path = tmp_path / "model.pt"
    AnomalyScorer(net, tasks, rim=0.06).fit(normals).save(path)
    loaded = AnomalyScorer.load(path, map_location="meta")
    assert next(loaded.net.parameters()).device.type == "meta"
    calibration = [loaded.one_class, loaded.normal_scores]
    tensors = [v for part in calibration for v in part.values() if torch.is_tensor(v)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def test_model_file_rebuilds_the_whole_detector(tmp_path):
    """The model file alone gives the same detector: network arguments, non-default task options, preprocessing
    (with every default written out) and calibration."""
    from monai_mtlmad import __version__

    torch.manual_seed(0)
    tasks = create_tasks(["inpainting", {"name": "jigsaw", "grid": 2}, "orientation", "pseudo_anomaly", "pseudo_label"], 2)
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32), strides=(2, 2, 2), num_experts=3)
    fit_learner(net, tasks, torch.from_numpy(head_phantoms(8, (48, 48), seed=30)), steps=3, batch_size=2)
    scorer = AnomalyScorer(net, tasks, rim=0.1, fpr=0.2, image_score="task_mean",
                           preprocessing={"preset": "mri", "spatial_size": 48})
    normals = torch.from_numpy(head_phantoms(6, (48, 48), seed=31))
    scorer.fit(normals)
    scorer.training = {"epoch": 7, "selection": "test"}
    path = tmp_path / "model.pt"
    scorer.save(path)
    state = load_checked(path)
    assert state["package_version"] == __version__ and state["format"] == "monai-mtlmad-model/2"
    assert state["tasks"][1]["grid"] == 2 and state["tasks"][1]["shifted_grids"] is True  # defaults written out
    assert state["preprocessing"] == {
        "preset": "mri", "spatial_size": 48, "ct_window": [-160.0, 240.0], "spacing": None, "crop_to_body": False,
    }
    loaded = AnomalyScorer.load(path)
    assert loaded.net.config == net.config and loaded.net is not net
    assert [t.spec for t in loaded.tasks] == [t.spec for t in tasks] and loaded.tasks[1].out_channels == tasks[1].out_channels
    assert (loaded.rim, loaded.fpr, loaded.image_score, loaded.training) == (0.1, 0.2, "task_mean", scorer.training)
    a, b = scorer.score(normals), loaded.score(normals)
    torch.testing.assert_close(a.score, b.score)
    torch.testing.assert_close(a.map, b.map)
    det, _ = loaded.preprocessing()
    assert [type(t).__name__ for t in det.transforms][-3:] == ["ScaleIntensityInForegroundd", "Resized", "ForegroundMaskd"]
    # a file from before the 3D crop to the body preprocesses as it was trained: uncropped
    del state["preprocessing"]["crop_to_body"]
    torch.save(state, tmp_path / "uncropped.pt")
    assert AnomalyScorer.load(tmp_path / "uncropped.pt").preprocessing_config["crop_to_body"] is False
    # a file from before the model files described themselves cannot rebuild a network on its own
    del state["network_config"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old.pt: an older model file"):
        AnomalyScorer.load(tmp_path / "old.pt")


def test_3d_model_files_crop_as_they_were_trained(tmp_path):
    net, tasks = small(3)
    scorer = AnomalyScorer(net, tasks, batch_size=2, preprocessing={"preset": "mri", "spatial_size": 32})
    scorer.fit(torch.from_numpy(head_phantoms(2, (32, 32, 32), seed=4)))
    scorer.save(tmp_path / "model.pt")
    state = load_checked(tmp_path / "model.pt")
    assert state["preprocessing"]["crop_to_body"] is False  # the default (whole scan) written out

    def steps(crop):
        state["preprocessing"]["crop_to_body"] = crop
        if crop == "absent":
            del state["preprocessing"]["crop_to_body"]
        torch.save(state, tmp_path / "edited.pt")
        det, _ = AnomalyScorer.load(tmp_path / "edited.pt").preprocessing()
        return [type(t).__name__ for t in det.transforms]

    assert "CropToBodyd" not in steps(False) and "CropToBodyd" in steps(True)
    # sessions 14-15 wrote None when the crop was the 3D default: those files keep cropping; older ones never did
    assert "CropToBodyd" in steps(None) and "CropToBodyd" not in steps("absent")


def test_model_files_of_an_older_format_are_refused(tmp_path, trained):
    from monai_mtlmad.safe_io import save_checked

    net, tasks = trained
    path = tmp_path / "model.pt"
    AnomalyScorer(net, tasks, synthetic_lesions=False).fit(torch.from_numpy(head_phantoms(4, (48, 48), seed=40))).save(path)
    state = load_checked(path)
    state["format"] = "monai-mtlmad-model/1"
    save_checked(state, path)
    with pytest.raises(ValueError, match=r"model\.pt: a monai-mtlmad-model/1 model file; .* train again"):
        AnomalyScorer.load(path)


def test_damaged_model_files_are_refused(tmp_path, trained):
    net, tasks = trained
    path = tmp_path / "model.pt"
    AnomalyScorer(net, tasks).fit(torch.from_numpy(head_phantoms(4, (48, 48), seed=32))).save(path)
    data = path.read_bytes()
    weight = net.state_dict()["encoder.0.conv.unit0.conv.weight"].flatten()[:4].numpy().tobytes()
    at = data.find(weight)  # the bytes of one stored weight tensor
    assert at > 0
    (tmp_path / "tampered.pt").write_bytes(data[: at + 1] + bytes([data[at + 1] ^ 0xFF]) + data[at + 2 :])
    with pytest.raises(CorruptFileError, match="tampered.pt: its content does not match its checksum"):
        AnomalyScorer.load(tmp_path / "tampered.pt")
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated.pt: unreadable or truncated"):
        AnomalyScorer.load(tmp_path / "truncated.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt: no such file"):
        AnomalyScorer.load(tmp_path / "missing.pt")
    AnomalyScorer.load(path)  # the intact file still loads


def test_a_killed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch, trained):
    net, tasks = trained
    path = tmp_path / "model.pt"
    scorer = AnomalyScorer(net, tasks).fit(torch.from_numpy(head_phantoms(4, (48, 48), seed=33)))
    scorer.save(path)
    before = path.read_bytes()

    def dies(*args, **kwargs):  # the process dies in the middle of writing
        raise KeyboardInterrupt

    monkeypatch.setattr("monai_mtlmad.safe_io.os.fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        scorer.save(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no debris either


def test_calibration_is_cross_fitted():
    """Each calibration normal's score comes from normalisation statistics fitted without it: with one fold per
    image, the normal scores are exactly those of leave-one-out calibrations."""
    net, tasks = small(seed=3)
    normals = torch.from_numpy(head_phantoms(6, (32, 32), seed=40))
    scorer = AnomalyScorer(net, tasks, folds=6).fit(normals)
    assert scorer.calibration == {"images": 6, "folds": 6}
    for kind in ("map_quantile", "task_mean"):
        out_of_fold = []
        for i in range(6):
            others = torch.cat([normals[:i], normals[i + 1 :]])
            held = AnomalyScorer(net, tasks, folds=1, image_score=kind).fit(others).score(normals[i : i + 1])
            out_of_fold.append(float(held.score[0]))
        torch.testing.assert_close(scorer.normal_scores[kind], torch.tensor(sorted(out_of_fold)), rtol=1e-4, atol=1e-5)
        in_sample = AnomalyScorer(net, tasks, folds=1, image_score=kind).fit(normals).score(normals).score
        assert not torch.allclose(scorer.normal_scores[kind], torch.sort(in_sample).values, atol=1e-3)


def test_scales_cannot_collapse_when_a_task_is_solved_on_every_normal():
    from monai_mtlmad.scoring.scorer import _robust

    solved = torch.full((20,), 1e-4)  # errors identical on every normal: MAD 0
    loc, scale = _robust(solved)
    assert loc == pytest.approx(1e-4, rel=1e-5) and scale == pytest.approx(0.05 * 1e-4, rel=1e-5)
    heavy = torch.cat([torch.zeros(95), torch.tensor([5.0, 6.0, 7.0, 8.0, 9.0])])  # MAD 0, a heavy upper tail
    assert _robust(heavy)[1] > 1.0  # the tail sets the scale: a normal-looking 9 is not millions of "MADs"


def test_foreground_strips_the_skull_rim():
    images, brain = head_phantoms(4, (96, 96), seed=3, return_brain=True)
    head = foreground_mask(images).numpy()
    stripped = foreground_mask(images, rim=0.06).numpy()
    assert head.mean() > stripped.mean()
    assert (stripped & brain).sum() / stripped.sum() > 0.98  # what remains is brain, not skull
    assert (stripped & brain).sum() / brain.sum() > 0.7
    blank = foreground_mask(np.zeros((1, 1, 16, 16), np.float32))
    assert blank.all()


def test_a_head_small_in_its_volume_keeps_its_inside_under_the_rim():
    # as FitSpacingd leaves an anisotropic head volume fitted whole into 48^3: the head fills a few percent of the
    # cube, and a rim of 6 % of the cube's side is most of its radius. The mask must stay inside the head (it fell
    # back to the whole cube, background included, when the erosion left under 1 % of the volume)
    small = head_phantoms(2, (20, 20, 20), seed=5, scalp=True)
    cube = np.zeros((2, 1, 48, 48, 48), np.float32)
    cube[:, :, 14:34, 14:34, 14:34] = small
    inside = np.zeros((2, 1, 48, 48, 48), bool)
    inside[:, :, 14:34, 14:34, 14:34] = small > 0
    mask = foreground_mask(cube, rim=0.06).numpy()
    body = foreground_mask(cube).numpy()
    for m, b, head in zip(mask, body, inside):
        assert m.sum() < b.sum() and not (m & ~head).any()  # eroded, and nothing outside the head
        assert m.sum() >= 0.25 * b.sum()  # the erosion left the inside of the head


def test_3d_sliding_window_scores_full_volume():
    net, tasks = small(3)
    vol = torch.from_numpy(head_phantoms(3, (32, 32, 32), seed=4))
    blob = torch.zeros(32, 32, 32, dtype=torch.bool)
    blob[18:26, 6:14, 8:16] = True  # a bright block in one corner of the third volume
    vol[2, 0][blob] = 1.0
    whole = AnomalyScorer(net, tasks, batch_size=2).fit(vol[:2])
    windows = AnomalyScorer(net, tasks, roi_size=(16, 16, 16), batch_size=2).fit(vol[:2])
    res = windows.score(vol[2:])
    assert res.map.shape == (1, 1, 32, 32, 32) and torch.isfinite(res.map).all() and torch.isfinite(res.score).all()
    # windows stitched in place: even untrained, inpainting fails most on the block, as on the whole volume
    by_window, at_once = windows.raw(vol[2:])["inpainting"][1][0, 0], whole.raw(vol[2:])["inpainting"][1][0, 0]
    assert blob[np.unravel_index(int(by_window.argmax()), by_window.shape)]
    assert by_window[blob].mean() > 2 * by_window[~blob].mean()
    assert float(np.corrcoef(by_window.flatten(), at_once.flatten())[0, 1]) > 0.9  # measured 0.98


def test_overlay_png_2d_and_3d(tmp_path, trained):
    net, tasks = trained
    img = torch.from_numpy(head_phantoms(1, (48, 48), seed=5))
    scorer = AnomalyScorer(net, tasks).fit(torch.from_numpy(head_phantoms(4, (48, 48), seed=6)))
    res = scorer.score(img)
    mask = torch.zeros(1, 48, 48)
    mask[0, 10:20, 10:20] = 1
    p = render_overlay(tmp_path / "o.png", img[0], res.map[0], {k: v[0] for k, v in res.task_maps.items()}, mask, "t")
    from PIL import Image

    assert Image.open(p).size == (80 * 3 * (2 + 4), int(80 * 3.3))  # image, fused map and the four task maps
    vol = torch.rand(1, 8, 8, 8)
    p3 = render_overlay(tmp_path / "o3.png", vol, vol, {"x": vol}, vol > 0.5)
    assert Image.open(p3).size == (80 * 3 * 3, int(80 * 3.3))
    # arrays come x first (MONAI's readers); pictures show x to the right: a wide, short image, bright on its left
    wide = torch.zeros(1, 64, 16)
    wide[0, :32] = 1
    row = np.asarray(Image.open(render_overlay(tmp_path / "w.png", wide, wide)).convert("RGB")).astype(int)
    row = row[row.shape[0] // 2, :, 0]  # red channel across the middle of the figure
    assert row[250:350].mean() > 150 and row[380:470].mean() < 60  # the fused-map panel: hot left, cold right


def test_pixel_exact_map_pictures():
    from monai_mtlmad.scoring.overlay import blend_map, map_to_uint8

    amap = np.array([[-1.0, 0.0, 1.0, 2.0, 4.0]])
    np.testing.assert_array_equal(map_to_uint8(amap, threshold=1.0), [[0, 0, 128, 255, 255]])  # 128: the threshold
    picture = np.array([[0, 50, 100, 150, 200]], np.uint8)
    out = blend_map(picture, amap, threshold=1.0)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert (out[0, :2] == out[0, :2, :1]).all()  # at or below 0: the picture in plain grey
    np.testing.assert_array_equal(out[0, :2, 0], [0, 64])  # its grey levels rescaled to 0..255
    assert out[0, 3, 0] > out[0, 3, 1] + 60  # at twice the threshold: strongly coloured (red end of jet)


def test_upper_quantile_is_torch_quantile():
    """The partial-selection quantile the fusion uses equals torch.quantile (linear interpolation) at every size."""
    from monai_mtlmad.scoring.scorer import upper_quantile

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 10, 1000, 65537):
        v = torch.randn(n, generator=g)
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            torch.testing.assert_close(upper_quantile(v, q), torch.quantile(v, q), rtol=0, atol=1e-6)
