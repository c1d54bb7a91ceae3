"""Depth Anything 3 mono teachers: hub layout -> DepthAnythingForDepthEstimation, offline.

A scaled-down DA3 network ('tiny' widths, the mapping is size-generic) is saved in the official hub
layout; its outputs are checked against the definition (exp depth, sky head on the shared conv1),
computed independently through a Depth Anything V2 network holding the same weights.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pseudodepth import da3
from pseudodepth.convert import hf_to_official
from pseudodepth.infer import forward, predict
from pseudodepth.models import ModelSpecError, build_model, load_model, model_info
from pseudodepth.preprocess import prepare_da3


def _official_da3_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random DA3 mono state dict in the official hub naming (model.backbone.pretrained.*, model.head.*)."""
    model = da3.build_da3("tiny", seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf = {k: v for k, v in model.state_dict().items() if k not in da3.UNUSED and not k.startswith("head.sky_")}
    official = hf_to_official(hf)
    official["depth_head.scratch.sky_output_conv2.0.weight"] = model.head.sky_conv2.weight.detach().clone()
    official["depth_head.scratch.sky_output_conv2.0.bias"] = model.head.sky_conv2.bias.detach().clone()
    official["depth_head.scratch.sky_output_conv2.2.weight"] = model.head.sky_conv3.weight.detach().clone()
    official["depth_head.scratch.sky_output_conv2.2.bias"] = model.head.sky_conv3.bias.detach().clone()
    out = {}
    for k, v in official.items():
        if k.startswith("pretrained."):
            out["model.backbone." + k] = v.contiguous()
        else:
            out["model.head." + k[len("depth_head."):]] = v.contiguous()
    return out


def _hub_folder(path, state, name="da3mono-large"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_name": name}))
    save_file(state, path / "model.safetensors")
    return path


def test_official_layout_has_no_mask_token_or_refinenet4_residual_and_maps_completely(tmp_path):
    state = _official_da3_state()
    assert not any("mask_token" in k for k in state)
    assert not any("refinenet4.resConfUnit1" in k for k in state)
    assert "model.head.scratch.sky_output_conv2.0.weight" in state
    mapped, unexpected = da3.da3_to_hf(state)
    assert unexpected == []
    model = load_model(_hub_folder(tmp_path / "DA3MONO-LARGE", state))
    assert model_info(model).version == "da3mono"
    net = model.state_dict()
    assert set(net) - set(mapped) == set(da3.UNUSED)  # every other network tensor comes from the file
    assert all(torch.equal(net[k], mapped[k].to(net[k].dtype)) for k in mapped)
    assert model.backbone.layernorm.eps == 1e-5 and model.backbone.encoder.layer[0].norm1.eps == 1e-6


def test_outputs_follow_the_definition_exp_depth_and_sky_on_the_shared_conv1(tmp_path):
    state = _official_da3_state(seed=1)
    model = load_model(_hub_folder(tmp_path / "m", state))
    # reference: a V2 network with the same shared weights, its final ReLU removed, final norm eps 1e-5
    ref = build_model("v2", "tiny")
    official = da3.hub_to_official(state)
    shared = {k: v for k, v in official.items() if "sky_output_conv2" not in k}
    from pseudodepth.convert import official_to_hf

    missing, unexpected = ref.load_state_dict(official_to_hf(shared), strict=False)
    assert set(missing) == set(da3.UNUSED) and not unexpected
    ref.backbone.layernorm.eps = 1e-5
    ref.head.activation2 = torch.nn.Identity()
    conv1_up = {}
    ref.head.conv1.register_forward_hook(lambda m, i, o: conv1_up.setdefault("x", o))
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        logits = ref(pixel_values=x).predicted_depth
        depth = model(pixel_values=x).predicted_depth
        up = F.interpolate(conv1_up["x"], (56, 84), mode="bilinear", align_corners=True)
        h = F.relu(F.conv2d(up, official["depth_head.scratch.sky_output_conv2.0.weight"],
                            official["depth_head.scratch.sky_output_conv2.0.bias"], padding=1))
        sky = F.relu(F.conv2d(h, official["depth_head.scratch.sky_output_conv2.2.weight"],
                              official["depth_head.scratch.sky_output_conv2.2.bias"]))[:, 0]
    assert torch.allclose(depth, torch.exp(logits), rtol=1e-4, atol=0)  # exp: depth, no ReLU
    assert (depth > 0).all()
    assert torch.allclose(model.head.sky, sky, rtol=1e-4, atol=1e-6)
    # the project's convention: disparity = 1 / depth, NaN where sky >= 0.3
    disparity = forward(model, x)
    expected = torch.where(sky >= 0.3, torch.tensor(float("nan")), 1.0 / depth)
    assert torch.equal(torch.isnan(disparity), torch.isnan(expected))
    assert torch.allclose(disparity[~disparity.isnan()], expected[~expected.isnan()], rtol=1e-5)


def test_sky_pixels_are_invalid_in_the_label_store(tmp_path):
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.store import LabelStore

    state = _official_da3_state(seed=2)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "a.png"), np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    for name, bias, invalid in (("sky", 10.0, 30 * 40), ("ground", -10.0, 0)):
        state["model.head.scratch.sky_output_conv2.2.bias"] = torch.tensor([bias])
        folder = _hub_folder(tmp_path / name, state)
        label_folder(str(folder), imgs, tmp_path / f"store_{name}", workers=0, progress=False,
                     settings=LabelSettings(input_size=42))
        store = LabelStore(tmp_path / f"store_{name}")
        row = store.rows()[0]
        assert row["status"] == "ok" and row["invalid"] == invalid
        assert int(np.isnan(store.read_disparity(row)).sum()) == invalid
        meta = json.loads((tmp_path / f"store_{name}/store.json").read_text())
        assert meta["version"] == "da3mono" and meta["settings"]["resize"] == "da3" and meta["licence"] == "Apache-2.0"


def test_legacy_pth_names_load_the_same_weights(tmp_path):
    state = _official_da3_state(seed=3)
    legacy = {}
    for k, v in state.items():
        k = k.replace("model.", "module.", 1).replace(".backbone.", ".net.")
        legacy[k.replace("sky_output_conv2", "output_conv2_additional.sky_mask")] = v
    torch.save(legacy, tmp_path / "da3metric_large.pth")
    a = load_model(tmp_path / "da3metric_large.pth")
    b = load_model(_hub_folder(tmp_path / "hub", state, "da3metric-large"))
    assert model_info(a).version == model_info(b).version == "da3metric"
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_incomplete_extra_and_any_view_checkpoints_are_refused(tmp_path):
    state = _official_da3_state()
    partial = {k: v for k, v in state.items() if "sky_output_conv2.2" not in k}
    with pytest.raises(ModelSpecError, match=r"missing from the file \(head\.sky_conv3"):
        load_model(_hub_folder(tmp_path / "partial", partial))
    with pytest.raises(ModelSpecError, match="unexpected tensor.*model.head.scratch.extra"):
        load_model(_hub_folder(tmp_path / "extra", {**state, "model.head.scratch.extra.weight": torch.zeros(1)}))
    with pytest.raises(ModelSpecError, match="any-view"):
        load_model(_hub_folder(tmp_path / "anyview", state, "da3-large"))
    with pytest.raises(ModelSpecError, match="any-view"):
        load_model(_hub_folder(tmp_path / "cam", {**state, "model.backbone.pretrained.camera_token":
                                                    torch.zeros(1, 2, 64)}))
    with pytest.raises(ModelSpecError, match="unknown DA3 model_name"):
        load_model(_hub_folder(tmp_path / "odd", state, "da3-weird"))


@pytest.mark.parametrize("hw,expected", [((300, 400), (378, 504)), ((100, 333), (154, 504)),
                                         ((800, 1000), (406, 504)), ((504, 504), (504, 504)),
                                         ((1000, 300), (504, 154))])
def test_da3_preprocessing_against_its_definition(hw, expected):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    x = prepare_da3(rgb)
    assert x.shape == (3, *expected) and x.dtype == np.float32
    # reference, step by step: longest side -> 504 (cubic if enlarging, area if shrinking), then the
    # nearest multiple of 14 per side (ties up) by a second resize; ImageNet mean/std
    h, w = hw
    scale = 504 / max(h, w)
    img = rgb
    if max(h, w) != 504:
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        img = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    h1, w1 = img.shape[:2]
    mult = [min((d // 14) * 14, (d // 14 + 1) * 14, key=lambda m: (abs(m - d), -m)) for d in (h1, w1)]
    if tuple(mult) != (h1, w1):
        grow = mult[0] > h1 or mult[1] > w1
        img = cv2.resize(img, (mult[1], mult[0]), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)
    ref = ((img / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    assert np.abs(x - ref).max() < 1e-5


def test_predict_uses_da3_preprocessing_and_returns_disparity_at_the_input_size(tmp_path):
    model = load_model(_hub_folder(tmp_path / "m", _official_da3_state(seed=4)))
    rgb = np.random.default_rng(1).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    out = predict(model, rgb, input_size=56)
    assert out.shape == (33, 47)
    x = torch.from_numpy(prepare_da3(rgb, 56))[None]
    net = forward(model, x)
    up = F.interpolate(net[:, None], (33, 47), mode="bilinear", align_corners=True)[0, 0].numpy()
    assert np.allclose(out, up, equal_nan=True)


def test_metric_depth_uses_the_focal_length_over_300():
    out = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(da3.metric_depth(out, 600.0), torch.tensor([[2.0, 4.0]]))


# ----------------------------------------------------------------------------- DA3METRIC: metres from the focal length


def _da3metric(tmp_path, sky_bias=-10.0):
    """A random-weights DA3METRIC stand-in (tiny widths, hub layout); ``sky_bias`` -10: no sky, 10: all sky."""
    state = _official_da3_state(seed=5)
    state["model.head.scratch.sky_output_conv2.2.bias"] = torch.tensor([sky_bias])
    return _hub_folder(tmp_path / f"DA3METRIC-LARGE-{sky_bias:g}", state, "da3metric-large")


def _metres_reference(model, rgb, fx, fy, input_size=56):
    """From the definition: the head's exp output at the network size times the network-input focal / 300,
    the focal scaled per axis by the resize (fx by net_w / w, fy by net_h / h), upsampled bilinearly."""
    x = torch.from_numpy(prepare_da3(rgb, input_size))[None]
    with torch.no_grad():
        raw = model(pixel_values=x).predicted_depth  # the official head's output (exp)
    (h, w), (nh, nw) = rgb.shape[:2], x.shape[-2:]
    focal_net = (fx * nw / w + fy * nh / h) / 2
    metres = raw * focal_net / 300.0
    return F.interpolate(metres[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0].numpy(), focal_net


def test_da3metric_predict_gives_metres_from_the_focal_length(tmp_path):
    from pseudodepth.predict import predict_files

    folder = _da3metric(tmp_path)
    model = load_model(folder)
    rgb = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)  # network 42 x 56: unequal axes
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "b.png"), rgb[..., ::-1])
    predict_files(str(folder), [tmp_path / "a.png"], tmp_path / "one", raw=True, input_size=56, model=model,
                  progress=False, focal=da3.FocalSettings(focal_px=500.0))
    expected, _ = _metres_reference(model, rgb, 500.0, 500.0)
    np.testing.assert_allclose(np.load(tmp_path / "one/a.npy"), expected, rtol=1e-5)
    # per image intrinsics (fx != fy); an image missing from the file is skipped with the reason
    (tmp_path / "k.csv").write_text("image,fx,fy\na.png,400,900\n")
    written, errors = predict_files(str(folder), [tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "csv", raw=True,
                                    input_size=56, model=model, progress=False,
                                    focal=da3.FocalSettings(intrinsics=str(tmp_path / "k.csv")))
    expected, _ = _metres_reference(model, rgb, 400.0, 900.0)
    np.testing.assert_allclose(np.load(tmp_path / "csv/a.npy"), expected, rtol=1e-5)
    assert len(errors) == 1 and "b.png" in errors[0] and "no focal length for this image" in errors[0]
    assert not (tmp_path / "csv/b.npy").exists()


def test_network_focal_against_hand_computed_values():
    assert da3.network_focal(500.0, 500.0, (1000, 2000), (252, 504)) == pytest.approx(126.0)  # both axes / 3.97
    assert da3.network_focal(400.0, 900.0, (33, 47), (42, 56)) == pytest.approx(0.5 * (400 * 56 / 47 + 900 * 42 / 33))
    out = torch.tensor([[2.0, float("nan")]])  # disparity 2 -> output 0.5; sky (NaN) stays NaN
    metres = da3.metres_from_disparity(out, 600.0)
    assert metres[0, 0].item() == pytest.approx(1.0) and torch.isnan(metres[0, 1])


def test_da3metric_without_a_focal_length_is_refused_in_one_line(tmp_path, capsys):
    from pseudodepth.cli import main
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.label_ray import label_folder_ray

    folder = _da3metric(tmp_path)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8))
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(folder), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DA3METRIC gives metres only with the focal length" in err
    assert "--focal-px" in err and not (tmp_path / "p").exists()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "a.png"), np.zeros((20, 30, 3), np.uint8))
    for engine in (label_folder, label_folder_ray):  # refused before any work, Ray not even started
        with pytest.raises(ValueError, match="DA3METRIC gives metres only with the focal length"):
            engine(str(folder), imgs, tmp_path / "s", settings=LabelSettings(input_size=56), progress=False)
    assert not (tmp_path / "s").exists()
    # a focal length for another teacher, or with --align-to, is refused too; a bad focal fails before work
    assert main(["label", "--model", "da-v2-tiny", "--images", str(imgs), "--out", str(tmp_path / "s"),
                 "--focal-px", "500"]) == 2
    assert "applies only to a DA3METRIC teacher" in capsys.readouterr().err
    assert main(["label", "--model", str(folder), "--images", str(imgs), "--out", str(tmp_path / "s"),
                 "--focal-px", "500", "--align-to", str(imgs)]) == 2
    assert "both set the metric scale" in capsys.readouterr().err
    assert main(["label", "--model", str(folder), "--images", str(imgs), "--out", str(tmp_path / "s"),
                 "--focal-px", "-3"]) == 2
    assert "--focal-px must be a positive number" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("image,fx\na.png,wide\n")
    assert main(["label", "--model", str(folder), "--images", str(imgs), "--out", str(tmp_path / "s"),
                 "--intrinsics", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv:2: expected image,fx[,fy]" in capsys.readouterr().err  # one line naming file and line
    assert not (tmp_path / "s").exists()


def test_da3metric_labels_hold_metres_and_the_store_records_the_scale_source(tmp_path):
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.store import LabelStore

    rng = np.random.default_rng(3)
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    rgbs = {"a.png": rng.integers(0, 256, (33, 47, 3), dtype=np.uint8),
            "sub/b.png": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
            "c.png": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)}
    for rel, rgb in rgbs.items():
        cv2.imwrite(str(imgs / rel), rgb[..., ::-1])
    (tmp_path / "k.csv").write_text("a.png,400,900\nsub/b.png,300\n")  # c.png has none: a failed row
    folder = _da3metric(tmp_path)
    model = load_model(folder)
    settings = LabelSettings(input_size=56, focal=da3.FocalSettings(intrinsics=str(tmp_path / "k.csv")))
    report = label_folder(str(folder), imgs, tmp_path / "s", workers=0, settings=settings, model=model,
                          progress=False)
    assert (report.ok, report.failed) == (2, 1)
    store = LabelStore(tmp_path / "s")
    meta = json.loads((tmp_path / "s/store.json").read_text())
    assert store.label_space == "metric_depth" and meta["metric_scale"]["source"] == "focal_length"
    assert meta["metric_scale"]["intrinsics"] == str((tmp_path / "k.csv").resolve())
    assert meta["settings"]["focal"]["intrinsics_sha256"]  # part of the teacher fingerprint
    rows = {r["source"]: r for r in store.rows()}
    assert rows["c.png"]["status"] == "failed" and "no focal length for this image" in rows["c.png"]["error"]
    for rel, (fx, fy) in (("a.png", (400.0, 900.0)), ("sub/b.png", (300.0, 300.0))):
        expected, focal_net = _metres_reference(model, rgbs[rel], fx, fy)
        row = rows[rel]
        assert row["scale"] == pytest.approx(focal_net / 300.0) and row["shift"] == 0.0 and row["inliers"] is None
        np.testing.assert_allclose(store.read_label(row), expected, rtol=2e-4)  # 16-bit log-depth quantisation
    # one --focal-px for all, in the fingerprint: another focal length is another teacher
    other = LabelSettings(input_size=56, focal=da3.FocalSettings(focal_px=500.0))
    with pytest.raises(Exception, match="holds labels from teacher"):
        label_folder(str(folder), imgs, tmp_path / "s", workers=0, settings=other, model=model, progress=False)


def test_label_resize_on_device_is_refused_for_da3_and_confidence_scales_uses_its_preprocessing(tmp_path):
    """DA3's preprocessing runs in the workers only: an explicit ``--resize-on device`` is refused in one line
    (not silently changed); ``--confidence scales`` prepares both sizes with DA3's own resize (504 -> 756)."""
    from pseudodepth.confidence import second_input_size
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.store import LabelStore

    folder = _hub_folder(tmp_path / "DA3MONO-LARGE", _official_da3_state(seed=3))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "a.png"), np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"--resize-on device: .* Depth Anything 3 teacher.*--resize-on worker"):
        label_folder(str(folder), imgs, tmp_path / "dev", workers=0, progress=False, resize_on="device")
    assert not (tmp_path / "dev").exists()
    assert second_input_size(504) == 756
    model = load_model(folder)
    label_folder(str(folder), imgs, tmp_path / "s", workers=0, progress=False, model=model,
                 settings=LabelSettings(input_size=42, confidence="scales"))
    store = LabelStore(tmp_path / "s")
    row = store.rows()[0]
    rgb = cv2.cvtColor(cv2.imread(str(imgs / "a.png")), cv2.COLOR_BGR2RGB)
    a = forward(model, torch.from_numpy(prepare_da3(rgb, 42))[None])
    b = forward(model, torch.from_numpy(prepare_da3(rgb, 70))[None])
    assert a.shape[-2:] == (28, 42) and b.shape[-2:] == (56, 70)  # DA3: longest side to 42 / 70, multiples of 14
    from pseudodepth.confidence import agreement
    from pseudodepth.preprocess import upsample

    expected = upsample(agreement(a, upsample(b, (28, 42))), (30, 40))[0].numpy()
    assert np.abs(store.read_confidence(row) - expected).max() < 1e-4
