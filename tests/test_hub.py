"""Checkpoints are complete Hugging Face model folders: transformers' pipeline loads them offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pseudodepth.config import load_config
from pseudodepth.hub import licence_of, model_card, preprocessor_config, update_model_card
from pseudodepth.imageio import read_rgb
from pseudodepth.infer import predict
from pseudodepth.models import build_model, load_model, save_checkpoint
from pseudodepth.preprocess import IMAGENET_MEAN, IMAGENET_STD, network_size
from pseudodepth.train import train

from train_helpers import labeled_folder, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny teacher trained for a few steps (its final/ folder as train writes it)."""
    root = tmp_path_factory.mktemp("hub")
    labeled_folder(root / "labeled", count=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_config(write_config(root / "c.yaml", train={"steps": 3, "save_every": 2})))
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_is_a_complete_hf_folder(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "pseudodepth.json"} <= names
    periodic = trained.parent / "checkpoints" / "step_000002"
    assert (periodic / "preprocessor_config.json").is_file() and (periodic / "README.md").is_file()
    card = (trained / "README.md").read_text()
    assert "pipeline_tag: depth-estimation" in card and "3 training steps" in card
    assert "## Licence\n\nunknown." in card
    assert "3 steps x batch 2" in card and "`folder`" in card  # recipe and data from the run's config.yaml


def test_pipeline_matches_predict_exactly_without_resizing(trained: Path) -> None:
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=str(trained), device="cpu")
    assert type(pipe.image_processor).__name__.startswith("DPTImageProcessor")
    rgb = np.random.default_rng(0).integers(0, 256, (518, 518, 3), dtype=np.uint8)  # already the network size
    ours = predict(load_model(trained), rgb, input_size=518)
    theirs = pipe(Image.fromarray(rgb))["predicted_depth"].numpy()
    assert theirs.shape == ours.shape == (518, 518)
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()


def test_pipeline_close_to_predict_on_a_real_photo(trained: Path, photos: Path) -> None:
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=str(trained), device="cpu")
    path = sorted(photos.glob("*.jpg"))[0]
    rgb = read_rgb(path)
    ours = predict(load_model(trained), rgb, input_size=518)
    theirs = pipe(Image.fromarray(rgb))["predicted_depth"].numpy()
    assert theirs.shape == ours.shape == rgb.shape[:2]
    rel = np.linalg.norm(theirs - ours) / np.linalg.norm(ours)
    assert rel < 0.05, f"{path.name}: relative L2 difference {rel:.3g} between the pipeline and predict"


@pytest.mark.parametrize("size", [(1362, 2048), (2048, 1362), (600, 600), (519, 1037), (700, 530)])
def test_processor_network_size_equals_official_for_large_images(size: tuple[int, int]) -> None:
    """Images larger than the input on both sides: DPTImageProcessor's size equals the official lower bound."""
    from transformers import DPTImageProcessor

    processor = DPTImageProcessor(**{k: v for k, v in preprocessor_config(518).items() if k != "image_processor_type"})
    rgb = np.zeros((*size, 3), np.uint8)
    out = processor(images=Image.fromarray(rgb), return_tensors="np")["pixel_values"][0]
    assert tuple(out.shape[1:]) == network_size(*size, 518)
    grey = np.full((*size, 3), 128, np.uint8)
    value = processor(images=Image.fromarray(grey), return_tensors="np")["pixel_values"][0][:, 0, 0]
    np.testing.assert_allclose(value, (128 / 255 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)


def test_preprocessor_config_rejects_bad_sizes() -> None:
    for bad in (0, 13, 500):
        with pytest.raises(ValueError, match="multiple of 14"):
            preprocessor_config(bad)


def test_input_size_and_licence_reach_the_card(tmp_path: Path) -> None:
    folder = save_checkpoint(build_model("v2", "tiny"), tmp_path / "ck", {"licence": "CC-BY-NC-4.0"}, input_size=140)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 140, "width": 140}
    card = (folder / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "CC-BY-NC-4.0." in card and "inherit its terms" in card
    meta = update_model_card(folder, metrics={"teacher": {"photos_eval": {"abs_rel": 0.25, "delta1": 0.6}}})
    assert meta["input_size"] == 140  # kept
    card = (folder / "README.md").read_text()
    assert "| teacher | `photos_eval` | 0.2500 | 0.600 |" in card
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"]["height"] == 140


def test_licence_fields_and_teacher_inheritance(tmp_path: Path) -> None:
    assert licence_of({}) is None
    assert licence_of({"licenses": ["Apache-2.0", "CC-BY-NC-4.0"]}) == "Apache-2.0, CC-BY-NC-4.0"
    assert licence_of({"license": {"id": "apache-2.0"}}) == "apache-2.0"
    teacher = save_checkpoint(build_model("v2", "tiny"), tmp_path / "teacher", {"license": "Apache-2.0"})
    store = tmp_path / "labels"
    store.mkdir()
    (store / "store.json").write_text(json.dumps({"model": str(teacher)}))
    card = model_card({"mode": "student"}, {"mode": "student", "data": {"unlabeled": [{"type": "label_store",
                                                                                        "root": str(store)}]}})
    assert f"pseudo-labels by the teacher `{teacher}`" in card
    assert f"Apache-2.0 (inherited from the teacher {teacher})." in card
