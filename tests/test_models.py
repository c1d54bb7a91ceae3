"""Model loading: presets, official .pth key mapping both ways, HF folders, our checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pseudodepth.convert import hf_to_official, official_to_hf
from pseudodepth.infer import forward, predict
from pseudodepth.models import (ARCHS, ModelSpecError, build_model, fingerprint, infer_arch, load_model,
                                make_config, model_info, save_checkpoint, save_encoder)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_presets_are_deterministic():
    a, b = load_model("da-v2-tiny"), load_model("da-v2-tiny")
    assert _same_weights(a, b)
    assert fingerprint(a) == fingerprint(b)
    c = build_model("v2", "tiny", seed=1)
    assert not _same_weights(a, c) and fingerprint(a) != fingerprint(c)


@pytest.mark.parametrize("size,params", [("small", 24.8e6), ("base", 97.5e6)])
def test_official_sizes_have_published_parameter_counts(size, params):
    from transformers import DepthAnythingForDepthEstimation

    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(make_config("v2", size))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.005


def test_v1_and_v2_layers():
    assert make_config("v2", "small").backbone_config.out_indices == [3, 6, 9, 12]
    assert make_config("v1", "small").backbone_config.out_indices == [9, 10, 11, 12]
    assert make_config("v2", "large").backbone_config.out_indices == [5, 12, 18, 24]
    assert make_config("v2", "giant").backbone_config.out_indices == [10, 20, 30, 40]


def test_key_mapping_round_trip_and_official_names():
    model = build_model("v2", "tiny")
    hf = model.state_dict()
    official = hf_to_official(hf)
    # official layout: fused qkv (3C x C), 239 - 8*(12-4) ... tensors; names as in the official code
    embed = ARCHS["tiny"].embed
    assert official["pretrained.blocks.0.attn.qkv.weight"].shape == (3 * embed, embed)
    assert "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight" in official
    assert "depth_head.scratch.output_conv2.2.weight" in official
    assert "depth_head.resize_layers.3.weight" in official and "depth_head.resize_layers.2.weight" not in official
    assert official["pretrained.pos_embed"].shape == (1, 1370, embed)
    back = official_to_hf(official)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_small_official_layout_has_239_tensors():
    with torch.device("meta"):
        from transformers import DepthAnythingForDepthEstimation

        model = DepthAnythingForDepthEstimation(make_config("v2", "small"))
    assert len(hf_to_official(model.state_dict())) == 239


def test_qkv_split_order_is_query_key_value():
    model = build_model("v2", "tiny")
    official = hf_to_official(model.state_dict())
    w = official["pretrained.blocks.1.attn.qkv.weight"]
    embed = ARCHS["tiny"].embed
    hf = model.state_dict()
    base = "backbone.encoder.layer.1.attention.attention"
    assert torch.equal(w[:embed], hf[f"{base}.query.weight"])
    assert torch.equal(w[embed:2 * embed], hf[f"{base}.key.weight"])
    assert torch.equal(w[2 * embed:], hf[f"{base}.value.weight"])


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_official_pth(tmp_path, prefix):
    src = build_model("v2", "tiny", seed=5)
    state = {prefix + k: v for k, v in hf_to_official(src.state_dict()).items()}
    path = tmp_path / "depth_anything_v2_vitt.pth"
    torch.save(state, path)
    model = load_model(path)
    assert _same_weights(model, src)
    info = model_info(model)
    assert (info.version, info.size) == ("v2", "tiny")
    x = torch.randn(1, 3, 70, 98)
    assert torch.allclose(forward(model, x), forward(src, x))


def test_version_from_official_names_else_v2_with_one_line(tmp_path, capsys):
    state = hf_to_official(build_model("v1", "tiny").state_dict())
    for name, expected in [("depth_anything_vits14.pth", "v1"), ("depth_anything_vitl14.pth", "v1"),
                           ("depth_anything_v2_vitb.pth", "v2")]:
        torch.save(state, tmp_path / name)
        assert model_info(load_model(tmp_path / name)).version == expected
        assert capsys.readouterr().err == ""  # the name decides: nothing to say
    for name in ("teacher.pth", "da2_vits.pth", "depth_anything_vitt14.pth", "my_v1_model.pth"):
        torch.save(state, tmp_path / name)
        assert model_info(load_model(tmp_path / name)).version == "v2"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and "V2" in err and "--version v1" in err
        assert model_info(load_model(tmp_path / name, version="v1")).version == "v1"
        assert capsys.readouterr().err == ""  # the user said so
    assert model_info(load_model(tmp_path / "depth_anything_vits14.pth", version="v2")).version == "v2"
    with pytest.raises(ModelSpecError, match="--version must be one of"):
        load_model(tmp_path / "teacher.pth", version="v3")


def test_version_is_part_of_the_fingerprint(tmp_path):
    state = hf_to_official(build_model("v2", "tiny").state_dict())
    torch.save(state, tmp_path / "t.pth")
    a, b = load_model(tmp_path / "t.pth", version="v1"), load_model(tmp_path / "t.pth", version="v2")
    assert _same_weights(a, b)
    assert fingerprint(a) != fingerprint(b)


def test_official_metric_names_are_v2_names_and_load_as_metric(tmp_path, capsys):
    from pseudodepth.models import is_metric, max_depth_of, official_metric_max_depth, version_from_name

    state = hf_to_official(build_model("v2", "tiny").state_dict())
    for name, depth in (("depth_anything_v2_metric_hypersim_vits.pth", 20.0),
                        ("depth_anything_v2_metric_vkitti_vitl.pth", 80.0)):
        assert version_from_name(name) == "v2" and official_metric_max_depth(name) == depth
        torch.save(state, tmp_path / name)
        model = load_model(tmp_path / name)
        assert is_metric(model) and max_depth_of(model) == depth
        assert model_info(model).version == "v2"
    assert "not an official" not in capsys.readouterr().err  # official names: no guess announced
    assert official_metric_max_depth("depth_anything_v2_vits.pth") is None
    assert version_from_name("depth_anything_v2_metric_nyu_vits.pth") is None


def test_folders_whose_weights_do_not_all_map_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model("v2", "tiny")
    save_checkpoint(model, tmp_path / "ok")
    state = load_file(tmp_path / "ok" / "model.safetensors")
    # a folder whose config.json is not a transformers Depth Anything config (e.g. a DA3 any-view download)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_name": "something-else"}')
    save_file(state, tmp_path / "other" / "model.safetensors")
    with pytest.raises(ModelSpecError, match="not a Depth Anything config"):
        load_model(tmp_path / "other")
    # missing tensors: named, refused
    import shutil

    shutil.copytree(tmp_path / "ok", tmp_path / "missing")
    save_file({k: v for k, v in state.items() if not k.startswith("head.conv3")}, tmp_path / "missing" / "model.safetensors")
    with pytest.raises(ModelSpecError, match=r"missing from the file \(head\.conv3"):
        load_model(tmp_path / "missing")
    # unexpected tensors: named, refused
    shutil.copytree(tmp_path / "ok", tmp_path / "extra")
    save_file({**state, "head.sky.weight": torch.zeros(2)}, tmp_path / "extra" / "model.safetensors")
    with pytest.raises(ModelSpecError, match=r"unexpected tensor\(s\) in the file \(head\.sky\.weight"):
        load_model(tmp_path / "extra")
    # an official .pth with a tensor the network lacks
    official = hf_to_official(state)
    official["depth_head.scratch.sky_output_conv2.0.weight"] = torch.zeros(2)
    torch.save(official, tmp_path / "depth_anything_v2_vits.pth")
    with pytest.raises(ModelSpecError, match="sky_output_conv2.*partly random"):
        load_model(tmp_path / "depth_anything_v2_vits.pth")
    official = hf_to_official(state)
    del official["depth_head.scratch.output_conv2.2.weight"]
    torch.save(official, tmp_path / "depth_anything_v2_vits.pth")
    with pytest.raises(ModelSpecError, match=r"missing from the file \(head\.conv3\.weight"):
        load_model(tmp_path / "depth_anything_v2_vits.pth")


def test_official_loader_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelSpecError, match="cannot read as a PyTorch state dict"):
        load_model(path)


def test_mismatched_checkpoint_errors_say_what_was_expected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelSpecError, match="expected an official Depth Anything state dict"):
        load_model(path)
    state = hf_to_official(build_model("v2", "tiny").state_dict())
    state["pretrained.cls_token"] = torch.zeros(1, 1, 100)
    torch.save(state, path)
    with pytest.raises(ModelSpecError, match="unknown architecture"):
        load_model(path)
    with pytest.raises(ModelSpecError, match="preset"):
        load_model("da-v9-huge")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelSpecError, match="unsupported model file"):
        load_model(tmp_path / "weights.txt")
    with pytest.raises(ModelSpecError, match="no config.json"):
        load_model(tmp_path)


def test_checkpoint_and_hf_folder_round_trip(tmp_path):
    src = build_model("v1", "tiny", seed=3)
    save_checkpoint(src, tmp_path / "ckpt", {"step": 7})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    model = load_model(tmp_path / "ckpt")
    assert _same_weights(model, src)
    assert model_info(model).version == "v1"
    # a plain Hugging Face folder (no pseudodepth metadata): version read from out_indices
    src.config.pseudodepth = None
    src.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert model_info(load_model(tmp_path / "hf")).version == "v1"
    assert model.config.backbone_config._attn_implementation == "sdpa"


def test_infer_arch_reads_shapes():
    for size in ("tiny", "mini"):
        assert infer_arch(hf_to_official(build_model("v2", size).state_dict())) == size


def test_flip_tta_and_precisions(tiny_model):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    d32 = predict(tiny_model, rgb)
    assert d32.shape == (40, 60) and d32.dtype == np.float32  # values: tests/test_infer_paths.py
    dbf = predict(tiny_model, rgb, precision="bf16")
    assert np.linalg.norm(dbf - d32) / max(np.linalg.norm(d32), 1e-12) < 0.05
    # flip TTA = mean of the prediction and the flipped prediction of the flipped image
    from pseudodepth.preprocess import prepare

    x = torch.from_numpy(prepare(rgb))[None]
    ref = 0.5 * (forward(tiny_model, x) + forward(tiny_model, x.flip(-1)).flip(-1))
    assert torch.allclose(forward(tiny_model, x, tta="flip"), ref, atol=1e-6)
    with pytest.raises(ValueError, match="precision"):
        forward(tiny_model, x, precision="int8")


def test_position_embedding_interpolation_matches_dinov2_definition():
    """Non-square inputs use DINOv2's scale_factor=(n + 0.1) / M bicubic interpolation (official code)."""
    model = build_model("v2", "tiny")
    emb = model.backbone.embeddings
    pos = emb.position_embeddings
    tokens = torch.zeros(1, 1 + 37 * 50, pos.shape[-1])
    got = emb.interpolate_pos_encoding(tokens, 37 * 14, 50 * 14)
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, scale_factor=(37.1 / 37, 50.1 / 37), mode="bicubic")
    assert torch.equal(got[:, 0], pos[:, 0])
    assert torch.allclose(got[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1]))
    square = emb.interpolate_pos_encoding(torch.zeros(1, 1370, pos.shape[-1]), 518, 518)
    assert square is pos


def test_random_presets_start_with_a_live_output_on_every_seed():
    """Official-style decoder init (PyTorch default) with the last bias at 1: no dead ReLU at step 0."""
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    for seed in range(6):
        d = forward(build_model("v2", "tiny", seed=seed), x)
        assert (d > 0).all() and d.std() > 0


def test_pretrained_encoders_load_from_dinov2_pth_hf_folder_and_any_spec(tmp_path):
    from transformers import Dinov2Model

    from pseudodepth.models import load_encoder_state

    src = build_model("v2", "tiny", seed=4)
    ref = src.backbone.state_dict()
    official = hf_to_official(src.state_dict())
    dino = {k[len("pretrained."):]: v for k, v in official.items() if k.startswith("pretrained.")}
    torch.save(dino, tmp_path / "dinov2_vitt14_pretrain.pth")
    hf = Dinov2Model(src.config.backbone_config)
    hf.load_state_dict(ref, strict=False)
    hf.save_pretrained(tmp_path / "dinov2-tiny", safe_serialization=True)
    save_checkpoint(src, tmp_path / "ckpt")
    save_encoder(src, tmp_path / "shipped" / "encoder.safetensors")  # the form a pretrained encoder is shipped in
    for spec in (tmp_path / "dinov2_vitt14_pretrain.pth", tmp_path / "dinov2-tiny", tmp_path / "ckpt",
                 tmp_path / "shipped" / "encoder.safetensors"):
        state = load_encoder_state(spec)
        target = build_model("v2", "tiny", seed=9).backbone
        target.load_state_dict(state)
        assert all(torch.equal(target.state_dict()[k], ref[k]) for k in ref), spec
    dino["register_tokens"] = torch.zeros(1, 4, 64)
    torch.save(dino, tmp_path / "dinov2_reg.pth")
    with pytest.raises(ModelSpecError, match="registers"):
        load_encoder_state(tmp_path / "dinov2_reg.pth")
    from safetensors.torch import save_file

    save_file({"decoder.weight": torch.zeros(2)}, str(tmp_path / "not_an_encoder.safetensors"))
    with pytest.raises(ModelSpecError, match="not_an_encoder.safetensors: not an encoder state dict"):
        load_encoder_state(tmp_path / "not_an_encoder.safetensors")
