"""The training numerics and the demo's evidence: fp32 head under bf16, the output anchor against a dead
ReLU, one encoder pass for depth and alignment, the seed, the image-blind baseline, wrong pseudo-labels
and the ablation tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pseudodepth import ablation, demo, losses
from pseudodepth.baselines import BlindMap, normalized_disparity
from pseudodepth.config import config_from_dict
from pseudodepth.models import build_model, head_outputs
from pseudodepth.train import DepthAndFeatures, Dist, patch_tokens, student_loss, teacher_loss

CPU = Dist(0, 1, torch.device("cpu"))


# --------------------------------------------------------------------------- bf16: the head runs in fp32


def test_bf16_training_output_keeps_fp32_resolution_and_the_fp32_gradient():
    """Under bf16 autocast the head computes exactly what it computes in fp32 from the same features:
    the output keeps its resolution (a bf16 map at the preset's initial level ~1 holds about a dozen
    values) and the loss gradient on the last convolution is the fp32 one."""
    torch.manual_seed(0)
    model = build_model("v2", "tiny").train()
    x, target = torch.randn(2, 3, 56, 56), torch.rand(2, 56, 56) + 0.1
    valid = torch.ones_like(target, dtype=torch.bool)
    with torch.no_grad():
        features = [h.detach() for h in model.neck(model.backbone(pixel_values=x).feature_maps, 4, 4)]

    def head_grad(bf16: bool, promoted: bool):
        model.zero_grad()
        head = model.head
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if promoted:
                depth = head_outputs(head, features, 4, 4)[1]
            else:  # transformers' head as it runs under autocast without the promotion
                y = nn.functional.interpolate(head.conv1(features[-1]), (56, 56), mode="bilinear", align_corners=True)
                depth = head.activation2(head.conv3(head.activation1(head.conv2(y)))).squeeze(1).float()
        losses.affine_invariant_loss(depth, target, valid).backward()
        return depth.detach(), head.conv3.weight.grad.flatten().clone()

    fp32, g32 = head_grad(False, True)
    promoted, g_promoted = head_grad(True, True)
    rounded, g_rounded = head_grad(True, False)
    assert all(torch.unique(d).numel() < 50 for d in rounded)  # the defect: a dozen distinct values
    assert all(torch.unique(d).numel() > 1000 for d in promoted)
    torch.testing.assert_close(promoted, fp32)
    assert nn.functional.cosine_similarity(g_promoted, g32, dim=0) > 0.9999
    assert nn.functional.cosine_similarity(g_rounded, g32, dim=0) < 0.99  # what the promotion fixes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inference = model(pixel_values=x).predicted_depth
        training = DepthAndFeatures(model)(x).depth
    assert inference.dtype == training.dtype == torch.float32
    assert all(torch.unique(d).numel() > 1000 for d in inference)


def test_training_forward_is_the_model_forward_with_pre_activation():
    model = build_model("v2", "tiny").eval()
    x = torch.randn(3, 3, 42, 56)
    with torch.no_grad():
        out = DepthAndFeatures(model)(x, align_from=1)
        reference = model(pixel_values=x).predicted_depth
        tokens = patch_tokens(model.backbone, x[1:])
    torch.testing.assert_close(out.depth, reference)
    torch.testing.assert_close(out.depth, torch.relu(out.pre_activation))
    torch.testing.assert_close(out.tokens, tokens)  # the alignment features of the same pass


def test_depth_and_alignment_features_come_from_one_encoder_pass():
    model = build_model("v2", "tiny")
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    DepthAndFeatures(model)(torch.randn(4, 3, 28, 28), align_from=2)
    assert len(calls) == 1


# --------------------------------------------------------------------------- the output anchor


def test_output_anchor_loss_matches_its_definition():
    z = torch.randn(3, 7, 5) * 2
    reference = sum(max(0.0, -float(v)) for v in z.flatten()) / z.numel()
    assert float(losses.output_anchor_loss(z)) == pytest.approx(reference, rel=1e-6)
    assert float(losses.output_anchor_loss(z.abs())) == 0.0  # a live output costs nothing
    assert float(losses.output_anchor_loss(torch.zeros(2, 3, 3))) == 0.0


def _teacher_config(anchor: float, tmp_path):
    return config_from_dict({"mode": "teacher", "model": {"init": "da-v2-tiny"},
                             "data": {"labeled": [{"type": "folder", "root": "unused"}]},
                             "loss": {"output_anchor": anchor},
                             "train": {"steps": 10, "batch_size": 2, "crop_size": 28, "precision": "fp32",
                                       "out": str(tmp_path)}}, base_dir=tmp_path, check_paths=False)


@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_a_dead_output_stays_dead_without_the_anchor_and_recovers_with_it(anchor, tmp_path, one_thread):
    """The condition of the collapsed runs: the final ReLU off on every pixel. SSI + GM then pass exactly
    zero gradient; the anchor lifts the output back within a few steps."""
    torch.manual_seed(0)
    model = build_model("v2", "tiny").train()
    with torch.no_grad():
        model.head.conv3.bias.fill_(-3.0)
    config = _teacher_config(anchor, tmp_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    net = DepthAndFeatures(model)
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 28, 28, generator=generator),
             "target": torch.rand(2, 28, 28, generator=generator) + 0.1, "valid": torch.ones(2, 28, 28, dtype=torch.bool)}
    shares = []
    for _ in range(30):
        loss, stats = teacher_loss(net, batch, config, CPU)
        optimizer.zero_grad()
        loss.backward()
        if anchor == 0.0 and not shares:
            assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.parameters())
        optimizer.step()
        shares.append(stats["zero_share"])
    assert shares[0] == 1.0
    if anchor == 0.0:
        assert shares[-1] == 1.0  # no gradient ever reaches it
    else:
        assert shares[-1] < 0.5


@pytest.mark.parametrize("n_unlabeled", [1, 2])
def test_cutmix_never_mixes_an_image_with_itself(n_unlabeled, tmp_path):
    """CutMix pairs unlabeled image i with image i - 1: with a single unlabeled image that is itself, so the
    step must not cut at all (before the fix it did, p = 1 here)."""
    config = config_from_dict({
        "mode": "student", "model": {"init": "da-v2-tiny"},
        "data": {"labeled": [{"type": "folder", "root": "unused"}], "unlabeled": [{"type": "label_store", "root": "x"}]},
        "augment": {"cutmix_p": 1.0, "strong": False}, "feature_alignment": {"enabled": False},
        "train": {"steps": 1, "batch_size": 1 + n_unlabeled, "labeled_ratio": [1, n_unlabeled], "crop_size": 28,
                  "precision": "fp32", "out": str(tmp_path)}}, base_dir=tmp_path, check_paths=False)
    generator = torch.Generator().manual_seed(0)

    def batch(n, normalized):
        return {"image": torch.rand(n, 3, 28, 28, generator=generator) - (0.5 if normalized else 0.0),
                "target": torch.rand(n, 28, 28, generator=generator) + 0.1, "valid": torch.ones(n, 28, 28, dtype=torch.bool)}

    _, stats = student_loss(DepthAndFeatures(build_model("v2", "tiny")), None, batch(1, True),
                            batch(n_unlabeled, False), 0, config, CPU)
    assert (stats["cutmix_area"] == 0.0) == (n_unlabeled == 1)


# --------------------------------------------------------------------------- the seed


def test_with_seed_drives_scenes_initialisation_and_training():
    base = demo.load_settings(quick=True)
    one, two, one_again = demo.with_seed(base, 1), demo.with_seed(base, 2), demo.with_seed(base, 1)
    assert one == one_again and one.seed == 1
    for recipe in (one.teacher, one.student):
        assert recipe["train"]["seed"] == 1 and recipe["model"]["init_seed"] == 1
    d = base.data
    count = d["n_source_train"] + d["n_target_unlabeled"] + d["n_source_test"] + d["n_target_test"]
    extra = ablation.EXTRA_SCENES * 3 + d["n_target_unlabeled"]  # the ablation's oracle, validation and source-pool scenes
    assert two.data["seed"] - one.data["seed"] > max(count, extra)  # no scene shared between seeds
    assert demo.with_seed(base, 0).data["seed"] == 0
    with pytest.raises(ValueError, match="--seed"):
        demo.with_seed(base, -1)


# --------------------------------------------------------------------------- the image-blind baseline


class _Source:
    def __init__(self, depths, valids):
        self.depths, self.valids = depths, valids

    def __len__(self):
        return len(self.depths)

    def load(self, index):
        return np.zeros((*self.depths[index].shape, 3), np.uint8), self.depths[index], self.valids[index]


def test_blind_map_is_the_mean_normalised_disparity_per_pixel():
    rng = np.random.default_rng(0)
    depths = [rng.uniform(0.5, 20, (6, 5)) for _ in range(4)]
    valids = [rng.random((6, 5)) > 0.3 for _ in range(4)]
    depths[1][0, 0] = np.inf
    blind = BlindMap.from_source(_Source(depths, valids))
    for y in range(6):
        for x in range(5):
            values = []
            for d, v in zip(depths, valids):
                ok = v & np.isfinite(d) & (d > 0)
                if ok[y, x]:
                    disp = 1 / d[ok]
                    values.append((1 / d[y, x] - disp.min()) / (disp.max() - disp.min()))
            expected = np.mean(values) if values else 0.0
            assert blind.disparity[y, x] == pytest.approx(expected, abs=1e-6)
    rgb = np.zeros((12, 10, 3), np.uint8)
    assert blind(rgb).shape == (12, 10) and blind(np.zeros((6, 5, 3), np.uint8)).tolist() == blind.disparity.tolist()
    assert normalized_disparity(np.full((2, 2), 3.0), np.ones((2, 2), bool)).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="at least one"):
        BlindMap.from_source(_Source([], []))


# --------------------------------------------------------------------------- wrong pseudo-labels


def test_wrong_regions_cover_the_area_and_leave_the_rest_alone():
    rng = np.random.default_rng(0)
    label = np.random.default_rng(1).random((40, 50)).astype(np.float32)
    wrong, mask = ablation.wrong_regions(label, 0.25, rng)
    assert mask.mean() >= 0.25
    np.testing.assert_array_equal(wrong[~mask], label[~mask])
    assert np.abs(wrong[mask] - label[mask]).mean() > 0.1  # replaced by something else
    assert ablation.wrong_regions(label, 0.0, rng)[1].sum() == 0


# --------------------------------------------------------------------------- tables


def _scores(target, source, val=None, zero=0.0):
    out = {"target_test": {"abs_rel": target, "delta1": 0.5}, "source_test": {"abs_rel": source, "delta1": 0.6},
           "zero_output_target": zero}
    if val is not None:
        out["target_val"] = {"abs_rel": val, "delta1": 0.5}
    return out


def test_ablation_tables_and_goals_from_per_seed_scores():
    def seed(t, s):
        return {"image-blind mean map": {"group": "baselines", **_scores(0.40, 0.30)},
                "teacher (labeled source only)": {"group": "baselines", **_scores(t, 0.20)},
                "student": {"group": "table9", **_scores(s, 0.20)},
                "compute-matched teacher (9 steps)": {"group": "controls", **_scores(t * 0.99, 0.19)},
                "wrong labels, filter ratio 0": {"group": "wrong_labels", **_scores(0.33, 0.2, val=0.34)},
                "wrong labels, filter ratio 0.2": {"group": "wrong_labels", **_scores(0.31, 0.2, val=0.30)}}

    summary = {"seeds": [0, 1], "per_seed": {"0": seed(0.30, 0.27), "1": seed(0.32, 0.28)}, "student_row": "student",
               "setup": "set-up", "command": "pseudodepth demo --ablation"}
    baselines, table9, controls, wrong, choice = ablation.tables(summary)
    assert baselines.rows[1][1] == f"0.3100 ± {np.std([0.30, 0.32], ddof=1):.4f}"
    assert table9.rows[0][4] == f"{0.27 / 0.30:.3f} / {0.28 / 0.32:.3f}"
    assert choice.rows == [["0", "0.3400", "0.3000", "wrong labels, filter ratio 0.2", "0.3100"],
                           ["1", "0.3400", "0.3000", "wrong labels, filter ratio 0.2", "0.3100"]]
    goals = ablation.goals(summary, "student")
    assert goals.rows[0] == ["0", f"{0.30 / 0.40:.3f}", f"{0.27 / 0.30:.3f}", f"{0.27 / (0.30 * 0.99):.3f}", "1.000"]
    text = ablation.markdown(summary)
    assert text.startswith("# Ablation") and goals.markdown() in text and choice.markdown() in text
    assert ablation.mean_std([0.5]) == "0.5000"


def test_ablation_plan_has_baselines_controls_rows_and_wrong_labels():
    settings = demo.load_settings()
    rows = ablation.plan(settings)
    groups = [r.group for r in rows]
    assert groups[:2] == ["baselines", "baselines"] and {"table9", "controls", "wrong_labels"} <= set(groups)
    t, s = settings.teacher["train"], settings.student["train"]
    matched = next(r for r in rows if r.name.startswith("compute-matched"))
    assert matched.overrides["train"]["steps"] * t["batch_size"] == pytest.approx(
        t["steps"] * t["batch_size"] + s["steps"] * s["batch_size"], abs=t["batch_size"])
    assert [r.overrides["loss"]["drop_top_ratio"] for r in rows if r.labels == "wrong"] == [0.0, 0.1, 0.2, 0.3]
    assert ablation.student_row(settings) == next(r["name"] for r in settings.ablation["rows"] if r["student"] == {})


def test_ablation_controls_continue_the_teacher_and_train_the_student_recipe_on_clean_source_images():
    settings = demo.load_settings()
    rows = {r.name: r for r in ablation.plan(settings)}
    s = settings.student["train"]
    continued = next(r for n, r in rows.items() if n.startswith("teacher continued"))
    assert continued.kind == "teacher" and continued.group == "controls"
    assert continued.overrides["model"]["init"] == f"{settings.teacher['train']['out']}/final"
    assert (continued.overrides["train"]["steps"], continued.overrides["train"]["batch_size"]) == (s["steps"], s["batch_size"])
    assert continued.overrides["optim"] == settings.student["optim"]
    pool = next(r for r in rows.values() if r.labels == "source_pool")
    assert pool.kind == "student" and pool.group == "controls" and pool.overrides["train"]["out"] != s["out"]
    # the student rows train into ablation_<index>: a control inserted before them would move their folders
    names = list(rows)
    assert names.index(continued.name) > max(names.index(r["name"]) for r in settings.ablation["rows"])


def test_severity_means_bin_per_image_scores_by_the_scenes_camera_effects(tmp_path):
    from pseudodepth.synth import make_demo_data

    make_demo_data(tmp_path / "data", 1, 1, 1, 12, seed=40, size=(16, 16))
    split = tmp_path / "data" / "target_test"
    severity = ablation.scene_severities(split)
    expected_seeds = json.loads((tmp_path / "data" / "synth.json").read_text())["splits"]["target_test"]["seed0"]
    assert expected_seeds == 43 and len(severity) == 12 and ((0 <= severity) & (severity <= 1)).all()
    assert ablation.scene_severities(tmp_path / "data" / "source_test") is None  # a clean domain
    scores = np.linspace(0.1, 1.2, 12)
    csv_path = tmp_path / "per_image.csv"
    skipped = 5  # an image without a valid pixel: an empty abs_rel cell
    csv_path.write_text("model,index,abs_rel\n" + "".join(f"m,{i},{'' if i == skipped else v}\n" for i, v in enumerate(scores)))
    got = ablation.severity_means(csv_path, severity)
    for k, (low, high) in enumerate(zip(ablation.SEVERITY_BINS, ablation.SEVERITY_BINS[1:])):
        inside = [scores[i] for i in range(12) if i != skipped and (low <= severity[i] < high or severity[i] == high == 1.0)]
        assert (got[k] is None) if not inside else got[k] == pytest.approx(np.mean(inside))


# --------------------------------------------------------------------------- confidence and edges rows

# every row of the shipped plan before the confidence and edge rows, with the folder it trains into: a rerun
# of `demo --ablation` on an existing run folder must find each of these models where it left it
EXISTING_OUTS = {
    "teacher (labeled source only)": None,  # the seed's teacher itself
    "+ pseudo-labeled target pool": "ablation_2",
    "+ strong perturbations (colour, blur, CutMix)": "ablation_3",
    "+ top-10% loss filtering (= the demo's student)": "ablation_4",
    "+ feature alignment (V1: to the student's initial encoder)": "ablation_5",
    "compute-matched teacher (2250 steps)": "teacher_matched",
    "oracle: teacher recipe on 300 labeled target scenes": "oracle",
    "teacher continued on labeled source (the student's steps, batch and schedule)": "teacher_continued",
    "student recipe, unlabeled pool = clean source images (no target image)": "student_source_pool",
    **{f"wrong labels, filter ratio {r:g}": f"student_wrong_{r:g}" for r in (0.0, 0.1, 0.2, 0.3)},
}
STORES = {labels: f"labels/{labels}" for labels in ("clean", "wrong", "source_pool", "flip")}


def _outs(settings) -> dict:
    return {row.name: ablation.row_recipe(row, i, settings, STORES)[1].get("train", {}).get("out")
            for i, row in enumerate(ablation.plan(settings)) if row.kind != "blind"}


def test_confidence_and_edge_rows_are_the_demo_student_plus_one_lever():
    from pseudodepth.config import deep_merge

    settings = demo.load_settings()
    rows = ablation.check_plan(settings)  # every row's configuration validates
    quality = [(i, r) for i, r in enumerate(rows) if r.group == "pseudo_label_quality"]
    assert [i for i, _ in quality] == [len(rows) - 2, len(rows) - 1]  # appended after every other row
    (ci, conf), (ei, edge) = quality
    minimum = settings.ablation["confidence"]["min"]
    assert conf.name == f"+ confidence filter (flip agreement >= {minimum:g})" and conf.kind == "student"
    assert conf.labels == "flip" and edge.labels == "clean" and edge.kind == "student"
    assert conf.overrides == {"loss": {"confidence": {"min": minimum}}, "train": {"out": "student_confidence"}}
    assert edge.overrides == {"loss": {"edge_aware": True}, "train": {"out": "student_edges"}}
    assert "edge" in edge.name and "top 10%" in edge.name
    for index, row, store in ((ci, conf, "labels/target_unlabeled_flip"), (ei, edge, "labels/target_unlabeled")):
        recipe, overrides = ablation.row_recipe(row, index, settings, {"clean": "labels/target_unlabeled",
                                                                       "flip": "labels/target_unlabeled_flip"})
        merged, student = deep_merge(recipe, overrides), settings.student
        assert merged["data"]["unlabeled"] == [{"type": "label_store", "root": store}]
        assert merged["model"]["init"] == f"{settings.teacher['train']['out']}/final"  # from the teacher
        # the demo's student (the Table 9 row with `student: {}`) but for the lever, the store and the folder
        differs = {k for k in merged if merged[k] != student[k]}
        assert differs - {"data"} == {"loss", "train"}  # the edge row's store is the student's own
        assert {k: v for k, v in merged["train"].items() if k != "out"} == \
               {k: v for k, v in student["train"].items() if k != "out"}
        assert {k for k in merged["loss"] if merged["loss"][k] != student["loss"].get(k)} == \
               set(row.overrides["loss"])
    assert ablation.student_row(settings) not in (conf.name, edge.name)


def test_existing_ablation_rows_keep_their_folders_and_configuration():
    settings = demo.load_settings()
    with_quality = _outs(settings)
    assert {n: o for n, o in with_quality.items() if n in EXISTING_OUTS} == EXISTING_OUTS
    assert list(with_quality)[:len(EXISTING_OUTS)] == list(EXISTING_OUTS)
    without = demo.load_settings()
    without.ablation = {**without.ablation, "confidence": None, "edge_aware": False}
    before, after = ablation.plan(without), ablation.plan(settings)
    assert after[:len(before)] == before and _outs(without) == EXISTING_OUTS
    assert [r.group for r in after[len(before):]] == ["pseudo_label_quality"] * 2


@pytest.mark.parametrize("change, message", [
    ({"confidence": {"min": 1.5}}, "ablation.confidence must be"),
    ({"confidence": {"min": 0}}, "ablation.confidence must be"),
    ({"confidence": 0.5}, "ablation.confidence must be"),
    ({"confidence": {"minimum": 0.5}}, "ablation.confidence must be"),
    ({"edge_aware": "yes"}, "ablation.edge_aware must be true or false"),
    ({"edge_awre": True}, r"unknown key\(s\) edge_awre"),
])
def test_bad_confidence_or_edge_settings_fail_before_any_work(change, message, tmp_path, monkeypatch):
    settings = demo.load_settings(quick=True)
    settings.ablation = {**settings.ablation, **change}
    with pytest.raises(ValueError, match=message):
        ablation.check_plan(settings)
    monkeypatch.setattr(demo, "load_settings", lambda *a, **k: settings)
    monkeypatch.setattr(demo, "generate_data", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        demo.run_demo(tmp_path / "run", quick=True, ablation=True, photos=False, progress=False)


def test_run_seed_labels_the_flip_store_only_for_a_confidence_row(tmp_path, monkeypatch):
    settings = demo.load_settings(quick=True)
    conf, edge = (next(r.name for r in ablation.plan(settings) if r.labels == "flip"),
                  next(r.name for r in ablation.plan(settings) if "edge" in r.name))
    labelled, trained = [], {}
    monkeypatch.setattr(demo, "generate_data", lambda out, data: {"target_unlabeled": out / "data" / "pool",
                                                                  "source_train": out / "data" / "source"})
    monkeypatch.setattr(ablation, "extra_splits", lambda root, s: {"source_pool": root / "source_pool"})
    monkeypatch.setattr(demo, "pseudo_label", lambda teacher, images, store, s, progress, confidence=None:
                        labelled.append((images.name, store.relative_to(tmp_path).as_posix(), confidence)) or "ok")
    monkeypatch.setattr(demo, "train_recipe", lambda recipe, out, overrides, name, resume: trained.update(
        {name: (overrides, resume)}) or demo.Trained(out / overrides["train"]["out"], True))
    monkeypatch.setattr(ablation, "load_model", lambda path: path)
    monkeypatch.setattr(demo, "evaluate_models", lambda models, *a, **k:
                        {n: {"target_test": {"abs_rel": 0.2}} for n in models})
    monkeypatch.setattr(demo, "zero_output_share", lambda *a: 0.0)
    monkeypatch.setattr(ablation, "scene_severities", lambda split: None)
    reuse = {"teacher": demo.Trained(tmp_path / "teacher" / "final", fresh=False)}
    flip = ("pool", "labels/target_unlabeled_flip", "flip")

    results = ablation.run_seed(tmp_path, settings, False, reuse, resume=True, only={edge})
    assert labelled == [] and list(results) == [edge] and list(trained) == [edge]
    overrides, resume = trained[edge]
    assert overrides["data"]["unlabeled"][0]["root"] == str(tmp_path / "labels" / "target_unlabeled")
    assert overrides["loss"] == {"edge_aware": True} and resume  # the teacher was reused, not retrained

    trained.clear()
    results = ablation.run_seed(tmp_path, settings, False, reuse, resume=True, only={conf})
    assert labelled == [flip] and list(results) == [conf]
    overrides, _ = trained[conf]
    assert overrides["data"]["unlabeled"][0]["root"] == str(tmp_path / "labels" / "target_unlabeled_flip")
    assert overrides["loss"]["confidence"] == settings.ablation["confidence"]
    assert overrides["train"]["out"] == "student_confidence"

    labelled.clear()
    others = {r.name for r in ablation.plan(settings) if r.kind == "student" and r.labels in ("clean", "source_pool")}
    ablation.run_seed(tmp_path, settings, False, reuse, resume=True, only=others)
    assert edge in others and flip not in labelled  # rows without confidence never label the flip store
