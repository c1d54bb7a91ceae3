"""Training config validation: every bad config fails before any work, naming what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pseudodepth.config import ConfigError, TrainConfig, config_from_dict, deep_merge, load_config

from train_helpers import write_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "labeled" / "images").mkdir(parents=True)
    (tmp_path / "labeled" / "depth").mkdir(parents=True)
    return tmp_path


def edited(folder: Path, edit) -> Path:
    path = write_config(folder / "c.yaml")
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_good_config_defaults_and_paths(folder: Path) -> None:
    config = load_config(write_config(folder / "c.yaml"))
    assert isinstance(config, TrainConfig) and config.mode == "teacher"
    assert config.loss.gm_weight == 2.0 and config.loss.drop_top_ratio == 0.1
    assert config.optim.decoder_lr_mult == 10 and config.feature_alignment.margin == 0.85
    assert config.out_dir == folder.resolve() / "run"
    saved = config.to_dict()
    assert saved["data"]["labeled"][0]["root"] == str(folder.resolve() / "labeled")
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(saved)), folder)
    assert again.to_dict() == saved


def test_overrides_apply(folder: Path) -> None:
    config = load_config(write_config(folder / "c.yaml"), {"train": {"steps": 7}})
    assert config.train.steps == 7 and config.train.batch_size == 2


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda d: d["optim"].update(lr=1.0), ["'lr'", "'optim'", "encoder_lr"]),
    (lambda d: d.update(trainer={}), ["'trainer'", "top level", "feature_alignment"]),
    (lambda d: d["train"].update(batchsize=2), ["'batchsize'", "'train'", "batch_size"]),
])
def test_unknown_key_is_named_with_its_section(folder: Path, edit, needles) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(edited(folder, edit))
    for needle in needles:
        assert needle in str(err.value)
    assert "c.yaml" in str(err.value)


@pytest.mark.parametrize(("edit", "key"), [
    (lambda d: d["train"].update(steps="many"), "train.steps"),
    (lambda d: d["train"].update(steps=2.5), "train.steps"),
    (lambda d: d["train"].update(precision="fp8"), "train.precision"),
    (lambda d: d["feature_alignment"].update(enabled="yes") if "feature_alignment" in d
     else d.update(feature_alignment={"enabled": "yes"}), "feature_alignment.enabled"),
    (lambda d: d["train"].update(steps=0), "train.steps"),
    (lambda d: d["train"].update(crop_size=50), "train.crop_size"),
    (lambda d: d.update(loss={"drop_top_ratio": 1.0}), "loss.drop_top_ratio"),
    (lambda d: d["optim"].update(schedule="cosine"), "optim.schedule"),
    (lambda d: d.update(mode="pupil"), "mode"),
    (lambda d: d.update(augment={"cutmix_p": 1.5}), "augment.cutmix_p"),
    (lambda d: d["data"]["labeled"][0].update(weight=0), "data.labeled[0].weight"),
    (lambda d: d["data"]["labeled"][0].update(type="imagenet"), "data.labeled[0].type"),
    (lambda d: d.update(feature_alignment={"precision": "fp16"}), "feature_alignment.precision"),
])
def test_bad_value_is_named(folder: Path, edit, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(edited(folder, edit))


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml")  # no labeled/ folder beside it
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(tmp_path / "labeled") in str(err.value) and "data.labeled[0].root" in str(err.value)


def test_missing_model_path_is_named(folder: Path) -> None:
    with pytest.raises(ConfigError, match="model.encoder_from"):
        load_config(edited(folder, lambda d: d["model"].update(encoder_from="weights/none.pth")))


def test_mode_rules(folder: Path) -> None:
    (folder / "labels").mkdir()
    store = [{"type": "label_store", "root": "labels"}]
    with pytest.raises(ConfigError, match="data.unlabeled.*teacher"):
        load_config(edited(folder, lambda d: d["data"].update(unlabeled=store)))
    with pytest.raises(ConfigError, match="data.unlabeled"):
        load_config(edited(folder, lambda d: d.update(mode="student")))
    with pytest.raises(ConfigError, match="feature_alignment.enabled"):
        load_config(edited(folder, lambda d: d.update(feature_alignment={"enabled": True})))
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(edited(folder, lambda d: (d.update(mode="student"), d["data"].update(unlabeled=store),
                                              d["train"].update(batch_size=1))))
    with pytest.raises(ConfigError, match=r"train.batch_size = 8 cannot be split 1 : 2.*multiple of 3"):
        load_config(edited(folder, lambda d: (d.update(mode="student"), d["data"].update(unlabeled=store),
                                              d["train"].update(batch_size=8))))
    with pytest.raises(ConfigError, match="label_store"):
        load_config(edited(folder, lambda d: d["data"].update(labeled=store)))


@pytest.mark.parametrize("name", ["teacher_vits", "student_vits", "student_vitb", "student_vitl",
                                  "tiny_teacher", "tiny_student"])
def test_example_configs_parse(name: str) -> None:
    config = load_config(ROOT / "configs" / f"{name}.yaml", check_paths=False)
    assert config.mode in name
    if name.startswith("student_"):  # the published recipe
        assert config.train.crop_size == 518 and config.optim.encoder_lr == 5e-6
        assert config.train.labeled_ratio == [1, 2] and config.loss.drop_top_ratio == 0.1
        assert config.train.precision == "bf16" and config.feature_alignment.margin == 0.85
        assert config.augment.cutmix_p == 0.5
        assert config.train.batch_size % 3 == 0  # exactly 1 : 2, not 3 : 5 or 1 : 3
        assert "dinov2_vit" in config.feature_alignment.frozen  # V1: align to the frozen DINOv2 encoder
    if name.endswith(("_vits", "_vitb", "_vitl")):  # the paper starts teacher and student from DINOv2
        assert "dinov2_vit" in config.model.encoder_from and "depth_anything" not in config.model.encoder_from


@pytest.mark.parametrize(("edit", "key"), [
    (lambda d: d.update(feature_alignment={"margin": 1.5}), "feature_alignment.margin"),
    (lambda d: d.update(feature_alignment={"margin": -1.01}), "feature_alignment.margin"),
    (lambda d: d["optim"].update(betas=[0.9]), "optim.betas"),
    (lambda d: d["optim"].update(betas=[0.9, 1.0]), "optim.betas"),
    (lambda d: d["optim"].update(betas=[-0.1, 0.999]), "optim.betas"),
    (lambda d: d["train"].update(labeled_ratio=[1, 0]), "train.labeled_ratio"),
    (lambda d: d["train"].update(labeled_ratio=[1, 2, 3]), "train.labeled_ratio"),
    (lambda d: d.update(augment={"blur_sigma": [2.0, 0.1]}), "augment.blur_sigma"),
    (lambda d: d.update(augment={"blur_sigma": [0.0, 1.0]}), "augment.blur_sigma"),
    (lambda d: d.update(augment={"blur_sigma": [0.1]}), "augment.blur_sigma"),
    (lambda d: d["train"].update(device="tpu"), "train.device"),
    (lambda d: d["train"].update(device="gpu:0"), "train.device"),
    (lambda d: d["optim"].update(grad_clip=-1.0), "optim.grad_clip"),
])
def test_out_of_range_values_are_named(folder: Path, edit, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        load_config(edited(folder, edit))
    assert "c.yaml" in str(err.value)


@pytest.mark.parametrize(("edit", "key"), [
    (lambda d: d.update(feature_alignment={"margin": -1.0}), "feature_alignment.margin"),
    (lambda d: d["optim"].update(betas=[0.0, 0.99]), "optim.betas"),
    (lambda d: d.update(augment={"blur_sigma": [0.5, 0.5]}), "augment.blur_sigma"),
    (lambda d: d["train"].update(device="cuda:1"), "train.device"),
    (lambda d: d["optim"].update(grad_clip=0.0), "optim.grad_clip"),  # 0 turns clipping off
])
def test_boundary_values_are_accepted(folder: Path, edit, key: str) -> None:
    load_config(edited(folder, edit))


def test_missing_mode_invalid_yaml_and_missing_file_are_named(folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: mode is required: teacher, student or metric"):
        load_config(edited(folder, lambda d: d.pop("mode")))
    bad = folder / "bad.yaml"
    bad.write_text("mode: teacher\ntrain: {steps: 4\n")  # unclosed flow mapping
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: config file not found"):
        load_config(folder / "nowhere.yaml")


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    merged = deep_merge(base, {"a": {"c": [9], "e": {"f": 1}}, "d": None})
    assert merged == {"a": {"b": 1, "c": [9], "e": {"f": 1}}, "d": None}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 3}  # inputs untouched


def test_frozen_precision_is_saved_only_when_set(folder: Path) -> None:
    """``feature_alignment.precision``: null (follow train.precision) is left out of config.yaml, so runs
    saved before the key existed compare equal (``adapt``); a set value is kept and read back."""
    config = load_config(write_config(folder / "c.yaml"))
    assert config.feature_alignment.precision is None and "precision" not in config.to_dict()["feature_alignment"]
    config = load_config(edited(folder, lambda d: d.update(feature_alignment={"precision": "bf16"})))
    assert config.feature_alignment.precision == "bf16" and config.to_dict()["feature_alignment"]["precision"] == "bf16"
