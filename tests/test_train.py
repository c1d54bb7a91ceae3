"""Teacher and student training on tiny generated data; schedule and data-order helpers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudodepth.config import load_config
from pseudodepth.models import load_model
from pseudodepth.data.sampling import StepBatches, WeightedSources
from pseudodepth.train import lr_factor, train

from train_helpers import labeled_folder, write_config


pytestmark = pytest.mark.usefixtures("one_thread")


def read_log(out: Path) -> list[dict]:
    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


class Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_lr_factor_warmup_then_decay(tmp_path: Path) -> None:
    labeled_folder(tmp_path / "labeled", count=1)
    config = load_config(write_config(tmp_path / "c.yaml", train={"steps": 110}, optim={"warmup_steps": 10}))
    for schedule, expected in [("poly", lambda t: (1 - t) ** 0.9), ("linear", lambda t: 1 - t),
                               ("constant", lambda t: 1.0)]:
        config.optim.schedule = schedule
        assert [lr_factor(s, config) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
        for step in (10, 35, 60, 109, 110):
            assert lr_factor(step, config) == pytest.approx(expected((step - 10) / 100))


def test_weighted_epoch_order_and_rank_shards() -> None:
    data = WeightedSources([Sized(10), Sized(4)], [0.5, 2.0])
    order = data.epoch_order(seed=3, epoch=0)
    first, second = order[order < 10], order[order >= 10]
    assert len(first) == 5 and len(set(first.tolist())) == 5  # a random half of source 0
    assert sorted(second.tolist()) == sorted(list(range(10, 14)) * 2)  # source 1 twice
    assert np.array_equal(order, data.epoch_order(seed=3, epoch=0))
    assert not np.array_equal(order, data.epoch_order(seed=3, epoch=1))

    ranks = [StepBatches(data, 2, seed=3, start=0, steps=6, rank=r, world=2) for r in range(2)]
    assert ranks[0].per_epoch == 3  # 13 samples // 2 ranks // batch 2
    for step in range(3):  # within an epoch the ranks never share a position of the order
        a, b = ranks[0].batch(step), ranks[1].batch(step)
        assert len(a) == len(b) == 2 and {e for e, _ in a + b} == {0}
    positions = [[k for s in range(3) for k in ranks[r].batch(s)] for r in range(2)]
    assert len(positions[0]) == len(positions[1]) == 6
    assert ranks[0].batch(4)[0][0] == 1  # step 4 is in epoch 1
    resumed = StepBatches(data, 2, seed=3, start=4, steps=6)
    assert list(resumed) == [StepBatches(data, 2, seed=3, start=0, steps=6).batch(s) for s in (4, 5)]


def test_too_small_dataset_is_explained() -> None:
    with pytest.raises(ValueError, match="too few"):
        StepBatches(WeightedSources([Sized(3)], [1.0]), 4, seed=0, start=0, steps=1, name="data.labeled")


def saved_state_matches(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    """The model SPEC in ``folder`` loads with exactly the ``expected`` weights."""
    loaded = load_model(folder).state_dict()
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


def test_teacher_overfits_and_writes_a_loadable_model(tmp_path: Path, monkeypatch) -> None:
    import pseudodepth.train as train_module

    torch.manual_seed(0)
    labeled_folder(tmp_path / "labeled", count=2)  # 42 x 42: the crop is the whole image
    config = load_config(write_config(tmp_path / "c.yaml", train={"steps": 30, "save_every": 15,
                                                                  "debug_dump_weights": True},
                                      augment={"flip_p": 0.0}))
    at_checkpoint: dict[int, dict] = {}
    real_save = train_module.save_training_state

    def recording_save(out, step, model, *args, **kwargs):
        at_checkpoint[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real_save(out, step, model, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_training_state", recording_save)
    final = train(config)
    rows = read_log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert {"loss", "labeled_ssi", "labeled_gm", "lr_encoder", "lr_decoder", "images_per_s"} <= set(rows[0])
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert float(rows[0]["lr_decoder"]) == pytest.approx(10 * float(rows[0]["lr_encoder"]))
    trained = torch.load(tmp_path / "run" / "rank0_weights.pt", weights_only=True)  # the weights in memory at the end
    saved_state_matches(final, trained)
    assert any(not torch.equal(v, load_model("da-v2-tiny").state_dict()[k]) for k, v in trained.items())
    assert load_config(tmp_path / "run" / "config.yaml").to_dict() == config.to_dict()
    assert list(at_checkpoint) == [15]
    saved_state_matches(tmp_path / "run" / "checkpoints" / "step_000015", at_checkpoint[15])
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_000015" / "trainer.pt", weights_only=True)
    assert state["step"] == 15 and len(state["optimizer"]["state"]) > 0
    with pytest.raises(FileExistsError, match="--resume"):  # never silently overwrite a run
        train(config)


def test_student_with_label_store(tmp_path: Path) -> None:
    from pseudodepth.label import label_folder
    from pseudodepth.synth import write_domain

    labeled_folder(tmp_path / "labeled", count=2)
    write_domain(tmp_path / "unlabeled", "target", 4, 100, (42, 56), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    meta = json.loads((tmp_path / "labels/store.json").read_text())  # as if labelled by a non-commercial teacher
    (tmp_path / "labels/store.json").write_text(json.dumps({**meta, "licence": "CC-BY-NC-4.0"}))
    config = load_config(write_config(
        tmp_path / "c.yaml", mode="student", train={"steps": 3, "batch_size": 3},
        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
        feature_alignment={"enabled": True}, augment={"cutmix_p": 1.0}))
    config.train.debug_dump_weights = True
    final = train(config)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 3
    for row in rows:
        assert 0.08 <= float(row["dropped_share"]) <= 0.13, row  # V2: the top 10% losses per image
        assert float(row["cutmix_area"]) > 0
        assert np.isfinite(float(row["feature_alignment"])) and np.isfinite(float(row["loss"]))
        assert 0.0 <= float(row["unlabeled_zero_share"]) < 0.99  # a healthy preset: its output is not dead
    assert float(rows[0]["feature_alignment"]) == 0.0  # the student starts as the frozen encoder: all > margin
    assert load_model(final) is not None
    assert json.loads((final / "pseudodepth.json").read_text())["licence"] == "CC-BY-NC-4.0"  # inherited
    saved_state_matches(final, torch.load(tmp_path / "run" / "rank0_weights.pt", weights_only=True))


def test_dead_output_is_warned_about() -> None:
    from pseudodepth.train import dead_output_warning

    assert dead_output_warning({"step": 50, "unlabeled_zero_share": 0.5}) is None
    assert dead_output_warning({"step": 5, "loss": 1.0}) is None  # nothing logged about the output
    text = dead_output_warning({"step": 50, "unlabeled_zero_share": 1.0})
    assert "step 50" in text and "100.0%" in text and "loss.output_anchor" in text
    assert "100.0%" in dead_output_warning({"step": 9, "zero_share": 1.0})  # a teacher logs zero_share
    assert dead_output_warning({"step": 9, "zero_share": 1.0, "unlabeled_zero_share": 0.4}) is None  # student: its
    # pseudo-labeled images decide (the labeled ones may be dead on their own for a few steps)


def test_feature_alignment_to_another_encoder(tmp_path: Path) -> None:
    from pseudodepth.label import label_folder
    from pseudodepth.models import build_model, save_checkpoint
    from pseudodepth.synth import write_domain

    labeled_folder(tmp_path / "labeled", count=1)
    write_domain(tmp_path / "unlabeled", "target", 2, 100, (42, 42), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    save_checkpoint(build_model("v2", "tiny", seed=7), tmp_path / "other")
    config = load_config(write_config(
        tmp_path / "c.yaml", mode="student", train={"steps": 2, "batch_size": 3},
        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
        feature_alignment={"enabled": True, "frozen": "other", "weight": 1.0}))
    train(config)
    alignment = [float(r["feature_alignment"]) for r in read_log(tmp_path / "run")]
    assert all(0.15 < a <= 2 for a in alignment), alignment  # unrelated encoders: cos far below 0.85


def test_frozen_tokens_in_bf16_are_close_to_fp32_and_follow_train_precision_by_default() -> None:
    """``feature_alignment.precision``: the frozen encoder's no-grad forward under its own autocast; bf16
    tokens stay within cosine 0.999 (per patch) and 2% relative L2 of fp32 ones; null follows
    ``train.precision``; fp32 is fp32 even inside an outer bf16 autocast."""
    from types import SimpleNamespace

    from pseudodepth.models import build_model
    from pseudodepth.train import frozen_tokens, patch_tokens

    encoder = build_model("v2", "tiny", seed=3).backbone.eval()
    images = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")

    def tokens(fa: str | None, train: str = "fp32") -> torch.Tensor:
        config = SimpleNamespace(feature_alignment=SimpleNamespace(precision=fa), train=SimpleNamespace(precision=train))
        return frozen_tokens(encoder, images, config, cpu)

    with torch.no_grad():
        exact = patch_tokens(encoder, images)
        with torch.autocast("cpu", torch.bfloat16):
            autocast_bf16 = patch_tokens(encoder, images).float()
    fp32, bf16 = tokens("fp32"), tokens("bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and fp32.shape == (2, 4 * 5, encoder.config.hidden_size)
    assert torch.equal(fp32, exact) and torch.equal(tokens(None), exact)
    assert torch.equal(bf16, autocast_bf16) and torch.equal(tokens(None, train="bf16"), autocast_bf16)
    assert not torch.equal(bf16, exact)
    cos = torch.nn.functional.cosine_similarity(bf16, exact, dim=-1)
    assert cos.min() > 0.999 and (bf16 - exact).norm() / exact.norm() < 0.02
    with torch.autocast("cpu", torch.bfloat16):  # the training forward's autocast does not leak into fp32
        assert torch.equal(tokens("fp32", train="bf16"), exact)


def test_student_with_the_frozen_encoder_in_bf16_trains(tmp_path: Path) -> None:
    from pseudodepth.label import label_folder
    from pseudodepth.synth import write_domain

    write_domain(tmp_path / "unlabeled", "target", 2, 100, (42, 42), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    config = load_config(write_config(
        tmp_path / "c.yaml", mode="student", train={"steps": 2, "batch_size": 2},
        data={"labeled": [], "unlabeled": [{"type": "label_store", "root": "labels"}]},  # V2: pseudo-labels only
        feature_alignment={"enabled": True, "frozen": "da-v2-tiny", "precision": "bf16"}, model={"init_seed": 5}))
    train(config)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert all(0.15 < float(r["feature_alignment"]) <= 2 for r in rows)  # another init: cos far below 0.85
    assert load_config(tmp_path / "run" / "config.yaml").feature_alignment.precision == "bf16"


def test_fused_adamw_matches_the_per_tensor_loop(tmp_path: Path) -> None:
    """``optim.fused: true``: ``make_optimizer`` uses the fused AdamW kernel, the same update as torch's
    reference per-tensor loop (``foreach=False``, the default here) with both groups' learning rates, up to
    float rounding."""
    from pseudodepth.train import build_model, make_optimizer

    labeled_folder(tmp_path / "labeled", count=1)
    path = write_config(tmp_path / "c.yaml", optim={"encoder_lr": 1e-3, "weight_decay": 0.05})
    config, fused_config = load_config(path), load_config(path, {"optim": {"fused": True}})
    assert "fused" not in config.to_dict()["optim"] and fused_config.to_dict()["optim"]["fused"] is True
    models = [build_model(config) for _ in range(2)]
    fused, loop = make_optimizer(models[0], fused_config), make_optimizer(models[1], config)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in loop.param_groups)
    assert [g["lr"] for g in fused.param_groups] == [g["lr"] for g in loop.param_groups] == [1e-3, 1e-2]
    start = [p.detach().clone() for p in models[0].parameters()]
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=generator)
                b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for before, a, b in zip(start, models[0].parameters(), models[1].parameters()):
        moved = (b.detach() - before).norm()
        assert (a.detach() - b.detach()).norm() <= 1e-5 * moved + 1e-12  # the update agrees to float rounding
    assert any(not torch.equal(before, a.detach()) for before, a in zip(start, models[0].parameters()))


def test_bf16_autocast_steps(tmp_path: Path) -> None:
    labeled_folder(tmp_path / "labeled", count=2)
    config = load_config(write_config(tmp_path / "c.yaml", train={"steps": 2, "precision": "bf16"}))
    final = train(config)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert all(v.dtype == torch.float32 for v in load_model(final).state_dict().values())  # fp32 master weights


def test_tiny_example_configs_train_end_to_end(tmp_path: Path) -> None:
    """configs/tiny_*.yaml as their comments say: generate data, teacher, pseudo-labels, student."""
    import shutil

    from pseudodepth.label import label_folder
    from pseudodepth.synth import write_domain

    root = Path(__file__).resolve().parents[1]
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("tiny_teacher.yaml", "tiny_student.yaml"):
        shutil.copy(root / "configs" / name, configs / name)
    write_domain(configs / "tiny_data" / "labeled", "source", 16, 0, (64, 80))
    teacher = train(load_config(configs / "tiny_teacher.yaml"))
    assert teacher == tmp_path / "runs" / "tiny_teacher" / "final"
    write_domain(configs / "tiny_data" / "unlabeled", "target", 16, 100, (64, 80), with_depth=False)
    label_folder(str(teacher), configs / "tiny_data" / "unlabeled" / "images", configs / "tiny_data" / "labels",
                 workers=0, progress=False)
    student = train(load_config(configs / "tiny_student.yaml", {"train": {"debug_dump_weights": True}}))
    rows = read_log(student.parent)
    assert int(rows[-1]["step"]) == 60 and float(rows[-1]["loss"]) < float(rows[0]["loss"])
    saved_state_matches(student, torch.load(student.parent / "rank0_weights.pt", weights_only=True))


def test_compile_trains_a_student_and_is_left_out_of_the_config_when_off(tmp_path: Path, monkeypatch) -> None:
    """``train --compile`` (``train.compile: true``): the network and the frozen encoder run compiled, the
    steps train and the checkpoint is the trained weights. Compiled here with the ``eager`` backend (the
    real graph capture; inductor's code generation and C++ builds take minutes on this CPU); the real
    backend's speed is what ``bench/train_throughput.py --compile`` measures."""
    import torch._dynamo

    from pseudodepth.label import label_folder
    from pseudodepth.synth import write_domain
    from pseudodepth.train import main

    calls = []
    real_compile = torch.compile

    def compile_cheaply(module, **kwargs):
        calls.append(type(module).__name__)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_cheaply)
    labeled_folder(tmp_path / "labeled", count=2)
    write_domain(tmp_path / "unlabeled", "target", 2, 100, (42, 42), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    path = write_config(tmp_path / "c.yaml", mode="student", train={"steps": 2, "batch_size": 3},
                        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
                        feature_alignment={"enabled": True})
    assert "compile" not in load_config(path).to_dict()["train"]  # off: config.yaml as before the key existed
    try:
        assert main([str(path), "--compile"]) == 0
    finally:
        torch._dynamo.reset()
    assert calls == ["DepthAndFeatures", "Dinov2Backbone"]
    rows = read_log(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert load_config(tmp_path / "run" / "config.yaml").train.compile is True
    start, trained = load_model("da-v2-tiny").state_dict(), load_model(tmp_path / "run" / "final").state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # the compiled steps moved the weights
