"""``pseudodepth adapt`` on the real photos: end to end, killed with SIGKILL during training, then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pseudodepth import cli
from pseudodepth.adapt import labeled_source, load_recipe, plan_run, student_section, unique_names
from pseudodepth.config import ConfigError, config_from_dict
from pseudodepth.models import build_model, load_model, save_checkpoint
from pseudodepth.store import LabelStore
from pseudodepth.synth import write_domain

from train_helpers import one_thread_env

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_RECIPE = {
    "input_size": 56,
    "label": {"batch_size": 4, "workers": 0},
    "figures": {"images": 2, "eval_examples": 1},
    "optim": {"encoder_lr": 1.0e-4},
    "train": {"batch_size": 3, "workers": 0, "log_every": 1, "save_every": 4, "precision": "fp32"},
}


@pytest.fixture
def setup(tmp_path: Path, photos: Path) -> tuple[list[str], Path]:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    write_domain(tmp_path / "evalset", "target", 2, 500, (56, 70))
    run = tmp_path / "run"
    argv = ["adapt", "--teacher", "da-v2-tiny", "--images", str(photos), "--out", str(run), "--student", "da-v2-tiny",
            "--eval", f"folder:{tmp_path / 'evalset'}", "--steps", "16", "--config", str(recipe), "--device", "cpu"]
    return argv, run


def label_state(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "labels").rglob("*.png")}


def test_adapt_killed_during_training_then_resumed(setup, capsys) -> None:
    argv, run = setup
    checkpoint = run / "student" / "checkpoints" / "step_000004" / "trainer.pt"
    proc = subprocess.Popen([sys.executable, "-m", "pseudodepth.cli", *argv], env=one_thread_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 900  # generous: the CI machine may be shared
    try:
        while not checkpoint.is_file():
            assert proc.poll() is None, f"adapt ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no training checkpoint after 900 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9, data-loader workers included
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.stderr.close()
    assert not (run / "student" / "final" / "pseudodepth.json").exists(), "training finished before the kill"
    store = run / "labels" / "photos"
    rows = LabelStore(store).rows()
    assert len(rows) == sum(r["status"] == "ok" for r in rows) == 20  # README.md is no input: no row
    labels = label_state(store)

    assert cli.main(argv) == 0  # the same command continues
    err = capsys.readouterr().err
    assert "0 ok, 0 failed, 20 already done, 1 non-image file ignored (README.md)" in err  # labels not redone
    assert label_state(store) == labels
    run_info = json.loads((run / "run.json").read_text())
    resumed = run_info["student"]
    assert resumed.startswith("resumed from step_0000"), resumed
    assert int(resumed.split("step_")[1]) >= 4
    log_steps = [int(line.split(",")[0]) for line in (run / "student" / "log.csv").read_text().splitlines()[1:]]
    assert log_steps == list(range(1, 17))  # one row per step: the resumed run replaced what the killed one logged late

    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student"}
    for model in ("teacher", "student"):
        assert 0 < metrics[model]["evalset"]["abs_rel"] < 5 and 0 <= metrics[model]["evalset"]["delta1"] <= 1
    html = (run / "report.html").read_text()
    for figure in ("figures/gallery.png", "figures/eval_evalset.png", "figures/curves.png"):
        assert f'src="{figure}"' in html and (run / figure).is_file()
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["input_size"] == 56 and recipe["run"]["training_config"]["train"]["steps"] == 16
    assert recipe["run"]["training_config"]["data"]["labeled"] == []  # V2's setting: pseudo-labels only
    card = (run / "student" / "final" / "README.md").read_text()
    assert "| student | `evalset` |" in card and "pseudo-labels by the teacher `da-v2-tiny`" in card
    assert json.loads((run / "student" / "final" / "preprocessor_config.json").read_text())["size"]["height"] == 56

    assert cli.main(argv) == 0  # everything finished: skipped
    err = capsys.readouterr().err
    assert "finished earlier: skipped" in err
    assert json.loads((run / "run.json").read_text())["eval_skipped"] == ["evalset"]
    assert json.loads((run / "metrics.json").read_text()) == metrics
    # An earlier run's recipe.yaml repeats the run: the same training config, so nothing is retrained.
    again = [a if a != argv[argv.index("--config") + 1] else str(run / "recipe.yaml") for a in argv]
    assert cli.main(again) == 0 and "finished earlier: skipped" in capsys.readouterr().err


def test_a_changed_recipe_is_refused_not_mixed(setup, tmp_path: Path, capsys) -> None:
    argv, run = setup
    (run / "student").mkdir(parents=True)
    (run / "student" / "config.yaml").write_text("mode: student\n")
    code = cli.main(argv)
    assert code == 2
    assert "holds a student trained with another recipe" in capsys.readouterr().err


def test_bad_inputs_fail_before_any_work(tmp_path: Path, photos: Path) -> None:
    teacher = load_model("da-v2-tiny")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        plan_run("da-v2-tiny", teacher, [str(tmp_path / "nope")], tmp_path / "run")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {steps: 3}\n")
    with pytest.raises(ConfigError, match="unknown key.*trian"):
        plan_run("da-v2-tiny", teacher, [str(photos)], tmp_path / "run", recipe_path=bad)
    bad.write_text("loss: {drop_top_ratio: 1.5}\n")
    with pytest.raises(ConfigError, match="drop_top_ratio"):
        plan_run("da-v2-tiny", teacher, [str(photos)], tmp_path / "run", recipe_path=bad)
    with pytest.raises(ValueError, match="multiple of 14"):
        plan_run("da-v2-tiny", teacher, [str(photos)], tmp_path / "run", input_size=50)
    with pytest.raises(FileNotFoundError):
        plan_run("da-v2-tiny", teacher, [str(photos)], tmp_path / "run", evals=[f"folder:{tmp_path / 'none'}"])
    assert not (tmp_path / "run").exists()


def test_student_starting_points(tmp_path: Path) -> None:
    teacher = load_model("da-v2-tiny")
    assert student_section(None, "da-v2-tiny", teacher) == ({"init": "da-v2-tiny", "encoder_from": "da-v2-tiny"}, "tiny")
    assert student_section("da-v2-mini", "da-v2-tiny", teacher) == ({"init": "da-v2-mini"}, "mini")
    full = save_checkpoint(build_model("v2", "tiny", seed=3), tmp_path / "ck")
    assert student_section(str(full), "da-v2-tiny", teacher) == ({"init": str(full)}, "tiny")
    # A Hugging Face Dinov2Model folder: the encoder only, with a fresh decoder of its size.
    from transformers import Dinov2Model

    encoder = Dinov2Model(build_model("v2", "tiny").config.backbone_config)
    encoder.save_pretrained(tmp_path / "dinov2")
    section, size = student_section(str(tmp_path / "dinov2"), "da-v2-tiny", teacher)
    assert section == {"init": "da-v2-tiny", "encoder_from": str(tmp_path / "dinov2")} and size == "tiny"
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        student_section(str(tmp_path / "missing"), "da-v2-tiny", teacher)


def test_recipe_sizes_labeled_sources_and_names(tmp_path: Path, photos: Path) -> None:
    write_domain(tmp_path / "lab", "source", 1, 0, (42, 42))
    plan = plan_run("da-v2-small", None, [str(photos)], tmp_path / "run", student="da-v2-base",
                    labeled=[f"folder:{tmp_path / 'lab'},png_scale=1000,crop=none"])
    assert plan.train_config["train"]["batch_size"] == load_recipe()["sizes"]["base"]["train"]["batch_size"]
    assert plan.train_config["data"]["labeled"] == [{"type": "folder", "root": str(tmp_path / "lab"), "png_scale": 1000}]
    assert plan.train_config["model"] == {"init": "da-v2-base"}
    assert labeled_source(str(tmp_path / "lab")) == {"type": "folder", "root": str(tmp_path / "lab")}
    assert unique_names(["/a/photos", "/b/photos/", "/c/x"]) == ["photos", "photos-2", "x"]


def test_student_config_without_labeled_data(tmp_path: Path) -> None:
    data = {"mode": "student", "model": {"init": "da-v2-tiny"},
            "data": {"unlabeled": [{"type": "label_store", "root": "labels"}]}}
    assert config_from_dict(data, tmp_path, check_paths=False).data.labeled == []
    # No labeled : unlabeled split to honour: any batch size (with labeled data, 4 is refused for 1 : 2).
    assert config_from_dict({**data, "train": {"batch_size": 4}}, tmp_path, check_paths=False).train.batch_size == 4
    with pytest.raises(ConfigError, match="cannot be split"):
        config_from_dict({**data, "train": {"batch_size": 4},
                          "data": {**data["data"], "labeled": [{"type": "folder", "root": "x"}]}},
                         tmp_path, check_paths=False)
    with pytest.raises(ConfigError, match="data.labeled needs at least one labeled source"):
        config_from_dict({"mode": "teacher", "model": {"init": "da-v2-tiny"}}, tmp_path, check_paths=False)
