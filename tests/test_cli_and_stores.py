"""The other sub-commands as a user runs them (``eval``, ``shards``, ``train``, ``label --square``) and the
label store's refusals: another teacher's weights, a source changed after labelling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pseudodepth.cli import main
from pseudodepth.evaluate import evaluate
from pseudodepth.imageio import read_png16, read_rgb
from pseudodepth.infer import predict
from pseudodepth.label import label_folder
from pseudodepth.models import build_model, save_checkpoint
from pseudodepth.shards import read_index
from pseudodepth.store import LabelStore, StoreError, decode_label
from pseudodepth.synth import write_domain

from train_helpers import labeled_folder, write_config


def image_folder(root: Path, count: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (28 + 4 * i, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")  # wide
    return root


def test_store_of_other_teacher_weights_is_refused_same_weights_under_another_name_are_not(tmp_path, tiny_model):
    imgs = image_folder(tmp_path / "imgs")
    label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False)
    save_checkpoint(build_model("v2", "tiny", seed=7), tmp_path / "other")  # same architecture and settings
    with pytest.raises(StoreError, match="--overwrite"):
        label_folder(str(tmp_path / "other"), imgs, tmp_path / "s", workers=0, progress=False)
    assert main(["label", "--model", str(tmp_path / "other"), "--images", str(imgs), "--out", str(tmp_path / "s"),
                 "--workers", "0"]) == 2  # the CLI says so in one line and exits 2
    save_checkpoint(tiny_model, tmp_path / "copy")  # the same weights in a folder: the same teacher
    again = label_folder(str(tmp_path / "copy"), imgs, tmp_path / "s", workers=0, progress=False)
    assert (again.ok, again.skipped) == (0, 3)


def test_source_changed_after_labelling_stops_the_export_until_label_relabels_it(tmp_path, tiny_model, capsys):
    imgs = image_folder(tmp_path / "imgs")
    label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False)
    old = {r["source"]: r for r in LabelStore(tmp_path / "s").rows()}
    shutil.copy(imgs / "0.png", imgs / "1.png")  # same name, other content
    assert main(["shards", str(tmp_path / "s"), "--out", str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err
    assert "1.png" in err and "changed since it was labelled" in err and len(err.strip().splitlines()) == 1
    assert main(["label", "--model", "da-v2-tiny", "--images", str(imgs), "--out", str(tmp_path / "s"),
                 "--workers", "0"]) == 0  # resume relabels the changed source, and says so
    assert "1 ok, 0 failed, 2 already done, 1 relabelled (source changed since labelled)" in capsys.readouterr().out
    new = {r["source"]: r for r in LabelStore(tmp_path / "s").rows()}
    assert new["1.png"]["hash"] == new["0.png"]["hash"] != old["1.png"]["hash"]
    assert {k: new[k] for k in ("0.png", "2.png")} == {k: old[k] for k in ("0.png", "2.png")}
    assert main(["shards", str(tmp_path / "s"), "--out", str(tmp_path / "shards")]) == 0


def test_cli_label_square_then_shards(tmp_path, tiny_model, capsys):
    imgs = image_folder(tmp_path / "imgs", count=5)
    store = tmp_path / "s"
    assert main(["label", "--model", "da-v2-tiny", "--images", str(imgs), "--out", str(store), "--square",
                 "--input-size", "56", "--workers", "0", "--batch-size", "2"]) == 0
    assert "labelled 5 ok" in capsys.readouterr().out
    assert json.loads((store / "store.json").read_text())["settings"]["keep_aspect"] is False
    for row in LabelStore(store).rows():
        rgb = read_rgb(imgs / row["source"])
        square = predict(tiny_model, rgb, input_size=56, keep_aspect=False)
        label = decode_label(read_png16(store / row["label"]), row["min"], row["max"])
        assert np.abs(label - square).max() <= 1e-4 * (row["max"] - row["min"]) + 1e-6, row["source"]
        aspect = predict(tiny_model, rgb, input_size=56)
        assert np.abs(label - aspect).max() > 1e-3 * (row["max"] - row["min"])  # --square changed the input

    assert main(["shards", str(store), "--out", str(tmp_path / "shards"), "--max-count", "2"]) == 0
    assert "wrote 3 shards" in capsys.readouterr().out
    index = read_index(tmp_path / "shards")
    assert len(index.paths) == 3 and sum(index.counts) == 5


def test_cli_eval_writes_what_the_api_computes(tmp_path, capsys):
    write_domain(tmp_path / "data", "source", 2, 0, (42, 56))
    out = tmp_path / "out"
    assert main(["eval", "--model", "da-v2-tiny", "--name", "tiny", "--data", f"folder:{tmp_path / 'data'}",
                 "--input-size", "56", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and "metrics.json" in printed
    saved = json.loads((out / "metrics.json").read_text())
    api = evaluate({"tiny": "da-v2-tiny"}, {"type": "folder", "root": str(tmp_path / "data")}, input_size=56,
                   progress=False)
    assert saved["models"]["tiny"] == pytest.approx(api["tiny"], rel=1e-6)
    assert (out / "per_image.csv").read_text().count("\n") == 1 + 2
    assert main(["eval", "--model", "da-v2-tiny", "--data", f"folder:{tmp_path / 'nowhere'}",
                 "--out", str(out)]) == 2


def test_cli_train_and_its_errors(tmp_path, capsys, one_thread):
    labeled_folder(tmp_path / "labeled", count=2)
    path = write_config(tmp_path / "c.yaml")
    assert main(["train", str(path), "--steps", "2", "--out", str(tmp_path / "cli_run")]) == 0
    assert f"final model: {tmp_path / 'cli_run' / 'final'}" in capsys.readouterr().out
    assert (tmp_path / "cli_run" / "log.csv").read_text().count("\n") == 1 + 2
    final = (tmp_path / "cli_run" / "final" / "model.safetensors").read_bytes()
    again = main(["train", str(path), "--steps", "2", "--out", str(tmp_path / "cli_run")])
    err = capsys.readouterr().err
    assert again == 2 and "--resume" in err  # a finished run (final/ only, no checkpoint) is not overwritten
    assert (tmp_path / "cli_run" / "final" / "model.safetensors").read_bytes() == final
    bad = write_config(tmp_path / "bad.yaml", optim={"betas": [0.9]})
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml" in err and "optim.betas" in err and len(err.splitlines()) == 1
