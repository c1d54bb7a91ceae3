"""What one training step does, against references written from the definitions: the step-loss
combination and its weights, edge-aware filtering, gradient clipping, ``encoder_from``, checkpoint
discovery and exact resume (teacher mode, data-loader workers)."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudodepth.config import load_config
from pseudodepth.data import normalize_imagenet
from pseudodepth.models import build_model, load_model, save_checkpoint
from pseudodepth.checkpoints import TRAINER_STATE, latest_checkpoint
from pseudodepth.train import DepthAndFeatures, Dist, student_loss, train

from test_losses import ref_drop_top, ref_gradient_loss, ref_masked_mean, ref_ssi_map
from train_helpers import labeled_folder, write_config

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Dist(0, 1, torch.device("cpu"))


def ref_image_terms(pred: np.ndarray, target: np.ndarray, valid: np.ndarray, ratio: float,
                    edge_threshold: float | None = None) -> tuple[list[float], list[float]]:
    """Per image (ssi, gm) of the V2 loss on the kept pixels, from the loop references of test_losses."""
    from test_losses import ref_depth_edges

    loss_map, pred_hat, target_hat, valid = ref_ssi_map(pred, target, valid)
    if edge_threshold is None:
        keep = ref_drop_top(loss_map, valid, ratio)
    else:
        edges = ref_depth_edges(target_hat, valid, edge_threshold)
        keep = ref_drop_top(loss_map, valid & edges, ratio) | ref_drop_top(loss_map, valid & ~edges, ratio)
    return ref_masked_mean(loss_map, keep)[0], ref_gradient_loss(pred_hat, target_hat, keep, 4)


def ref_alignment(student: torch.Tensor, frozen: torch.Tensor, margin: float) -> float:
    """Mean of 1 - cos over the patches whose cosine is <= margin (loops)."""
    terms = []
    for b in range(student.shape[0]):
        for i in range(student.shape[1]):
            x, y = student[b, i].double(), frozen[b, i].double()
            cos = float(x @ y / (x.norm() * y.norm()))
            if cos <= margin:
                terms.append(1 - cos)
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize(("ssi_weight", "gm_weight", "fa_weight", "edge_aware", "anchor"),
                         [(1.0, 2.0, 1.0, False, 1.0), (2.5, 0.5, 0.3, True, 0.0), (1.0, 2.0, 0.0, False, 7.0)])
def test_student_step_loss_is_the_weighted_mean_over_images(tmp_path, ssi_weight, gm_weight, fa_weight,
                                                            edge_aware, anchor):
    """loss = (n_l L_l + n_u L_u) / (n_l + n_u) + w_anchor mean(max(0, -z)) + w_fa L_fa, with
    L = ssi_weight * ssi + gm_weight * gm per image (the unlabeled images after the top-10% filter,
    edge-aware when asked) and z the last convolution's output before the final ReLU."""
    config = load_config(write_config(
        tmp_path / "c.yaml", mode="student", train={"batch_size": 6},
        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
        loss={"ssi_weight": ssi_weight, "gm_weight": gm_weight, "edge_aware": edge_aware, "output_anchor": anchor},
        augment={"strong": False, "cutmix_p": 0.0},  # the unlabeled images enter the network as they are
        feature_alignment={"enabled": True, "weight": fa_weight, "margin": 0.5}), check_paths=False)
    g = torch.Generator().manual_seed(3)
    n_l, n_u, h, w = 2, 4, 28, 42
    labeled = {"image": normalize_imagenet(torch.rand(n_l, 3, h, w, generator=g)),
               "target": torch.rand(n_l, h, w, generator=g) + 0.1, "valid": torch.rand(n_l, h, w, generator=g) < 0.9}
    pseudo = torch.rand(n_u, h, w, generator=g)
    pseudo[:, :, w // 2:] += 2.0  # a depth edge
    unlabeled = {"image": torch.rand(n_u, 3, h, w, generator=g), "target": pseudo,
                 "valid": torch.rand(n_u, h, w, generator=g) < 0.95}
    model = build_model("v2", "tiny").train()
    with torch.no_grad():
        model.head.conv3.bias.fill_(-0.05)  # part of the output below 0: the anchor term is not 0
    frozen = build_model("v2", "tiny", seed=5).backbone.eval()  # another encoder: alignment is not 0

    loss, stats = student_loss(DepthAndFeatures(model), frozen, labeled, unlabeled, 0, config, CPU)

    with torch.no_grad():
        images = torch.cat([labeled["image"], normalize_imagenet(unlabeled["image"])])
        seen = []
        hook = model.head.conv3.register_forward_hook(lambda m, i, o: seen.append(o))
        pred = model(pixel_values=images).predicted_depth.double().numpy()
        hook.remove()
        pre_activation = seen[0].double()
        clean = normalize_imagenet(unlabeled["image"])
        tokens = model.backbone(pixel_values=clean).feature_maps[-1][:, 1:]
        reference_tokens = frozen(pixel_values=clean).feature_maps[-1][:, 1:]
    ssi_l, gm_l = ref_image_terms(pred[:n_l], labeled["target"].double().numpy(), labeled["valid"].numpy(), 0.0)
    ssi_u, gm_u = ref_image_terms(pred[n_l:], pseudo.double().numpy(), unlabeled["valid"].numpy(), 0.1,
                                  edge_threshold=0.2 if edge_aware else None)
    per_image = [ssi_weight * s + gm_weight * m for s, m in zip(ssi_l + ssi_u, gm_l + gm_u)]
    fa = ref_alignment(tokens, reference_tokens, 0.5)
    assert fa > 0.01
    hinge = float(torch.clamp(-pre_activation, min=0).sum() / pre_activation.numel())
    assert hinge > 1e-4
    expected = sum(per_image) / (n_l + n_u) + anchor * hinge + fa_weight * fa
    assert float(loss.detach()) == pytest.approx(expected, rel=2e-4)
    assert stats["labeled_ssi"] == pytest.approx(np.mean(ssi_l), rel=2e-4)
    assert stats["unlabeled_gm"] == pytest.approx(np.mean(gm_u), rel=2e-4)
    assert stats["feature_alignment"] == pytest.approx(fa, rel=2e-4)


def read_log(out: Path) -> list[dict]:
    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_grad_clip_scales_the_gradient_to_the_limit(tmp_path, monkeypatch):
    """With ``optim.grad_clip = c`` the optimiser sees the unclipped gradient times c / ||g|| (||g|| > c)."""
    labeled_folder(tmp_path / "labeled", count=2)
    seen: list[torch.Tensor] = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad.flatten() for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.cat(grads).clone())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for clip, out in ((0.0, "free"), (1e-3, "clipped")):
        train(load_config(write_config(tmp_path / "c.yaml", train={"steps": 1, "out": out}, optim={"grad_clip": clip})))
    free, clipped = seen
    assert float(free.norm()) > 1e-2  # the limit binds
    assert float(clipped.norm()) == pytest.approx(1e-3, rel=1e-4)
    torch.testing.assert_close(clipped, free * (1e-3 / free.norm()), rtol=1e-4, atol=1e-10)


def test_encoder_from_replaces_the_encoder_and_keeps_the_decoder(tmp_path):
    """A run with ``model.encoder_from`` starts from that encoder and ``model.init``'s decoder (lr ~ 0, so the
    final weights are still the initial ones)."""
    labeled_folder(tmp_path / "labeled", count=2)
    donor = build_model("v2", "tiny", seed=7)
    save_checkpoint(donor, tmp_path / "donor")
    final = train(load_config(write_config(tmp_path / "c.yaml", train={"steps": 1}, model={"encoder_from": "donor"},
                                           optim={"encoder_lr": 1e-12, "weight_decay": 0.0})))
    trained = load_model(final)
    init = load_model("da-v2-tiny")
    for name, value in trained.backbone.state_dict().items():
        torch.testing.assert_close(value, donor.backbone.state_dict()[name], rtol=0, atol=1e-9, msg=name)
    assert any(not torch.allclose(v, init.backbone.state_dict()[k]) for k, v in trained.backbone.state_dict().items())
    for part in ("neck", "head"):
        for name, value in getattr(trained, part).state_dict().items():
            torch.testing.assert_close(value, getattr(init, part).state_dict()[name], rtol=0, atol=1e-8, msg=name)


def test_latest_checkpoint_skips_half_written_folders(tmp_path):
    ckpt = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    for name, complete in [("step_000004", True), ("step_000008", True), ("step_000012.tmp", True),
                           ("step_000016", False), ("other", True)]:
        (ckpt / name).mkdir(parents=True)
        if complete:
            (ckpt / name / TRAINER_STATE).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == ckpt / "step_000008"
    (ckpt / "step_000016" / TRAINER_STATE).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == ckpt / "step_000016"


def test_teacher_resume_with_loader_workers_matches_an_uninterrupted_run(tmp_path):
    """A teacher run stopped after its checkpoint at step 2 and resumed to step 6 (one data-loader worker
    process) ends with the weights of a 6-step run; its log has each step once."""
    labeled_folder(tmp_path / "labeled", count=4)
    common = {"batch_size": 2, "workers": 1, "save_every": 2}
    optim = {"schedule": "poly", "warmup_steps": 2}
    path = write_config(tmp_path / "c.yaml", train={**common, "steps": 6}, optim=optim)
    reference = train(load_config(path, {"train": {"out": str(tmp_path / "reference")}}))
    # the interrupted run: the same config, stopped after step 3 (the checkpoint of step 2 is the newest)
    stopped = tmp_path / "stopped"
    train(load_config(path, {"train": {"out": str(stopped), "steps": 3}}))
    assert latest_checkpoint(stopped) == stopped / "checkpoints" / "step_000002"
    resumed = train(load_config(path, {"train": {"out": str(stopped)}}), resume=True)
    a, b = load_model(resumed).state_dict(), load_model(reference).state_dict()
    initial = load_model("da-v2-tiny").state_dict()
    assert any(not torch.allclose(a[k], initial[k]) for k in a)
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [int(r["step"]) for r in read_log(stopped)] == list(range(1, 7))
