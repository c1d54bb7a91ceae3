"""``pseudodepth demo``: teacher -> pseudo-labels -> student, end to end on generated scenes, with a report.

Every stage runs the real command's code (``DIR`` is ``--out``)::

    1 data     synth.make_demo_data       DIR/data/{source_train, target_unlabeled, source_test, target_test}
    2 teacher  train(demo_teacher.yaml)   DIR/teacher/   labeled source scenes only
    3 label    label.label_folder         DIR/labels/target_unlabeled/ (+ DIR/labels/photos/, the real photos)
    4 student  train(demo_student.yaml)   DIR/student/   labeled source + the pseudo-labeled target pool
    5 eval     evaluate.evaluate          DIR/eval/{source_test, target_test}/
    6 report   report.Report              DIR/metrics.json, DIR/report.md, DIR/report.html, DIR/figures/

The labeled *source* domain is rooms (walls, floors, boxes, spheres, tables; depth to 20 m); the
unlabeled *target* domain is the same kind of rooms seen through a poor camera (``synth.CameraEffects``:
a global hue shift, washed-out colours, lost contrast, wrong exposure and blur, severity 0-1 per image),
like a cheap camera with poor white balance and a dirty lens. The teacher never sees the target domain; the student starts
from the teacher's weights and sees the target pool through the teacher's
pseudo-labels, with strong perturbations, CutMix and top-10% loss filtering. Every result stands next
to the image-blind baseline (:class:`pseudodepth.baselines.BlindMap`). ``--seed N`` drives everything
random (:func:`with_seed`). ``--ablation`` adds, on several seeds, the controls (a compute-matched
teacher, an oracle), the rows of Depth Anything V1's Table 9, the filter on wrong pseudo-labels and
the confidence and edge-aware filters (:mod:`pseudodepth.ablation`). ``--resume`` continues an
interrupted run: finished models (same configuration) and label stores are reused.

Settings are data: ``configs/demo.yaml`` (sizes, input size, figures, quick mode, ablation rows)
and the training recipes ``configs/demo_teacher.yaml`` and ``configs/demo_student.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import ablation
from . import report as rp
from .ablation import check_plan, run_ablation
from .baselines import BlindMap
from .colorize import colorize
from .config import config_from_dict, deep_merge
from .data.sources import folder as folder_source
from .imageio import is_image_name
from .infer import predict
from .label import LabelSettings
from .models import load_model
from .report import run as run_report
from .report.run import ERROR_SCALE, SceneViews, pseudo_label_rows, scene_figure, scene_views
from .stages import Stages, Trained, cpu_seconds, evaluate_sets, label_images, train_run
from .synth import domain_fingerprint, make_demo_data

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TEST_SPLITS = ("source_test", "target_test")
MODELS = ("teacher", "student")
SETTINGS_KEYS = {"data", "input_size", "label_batch_size", "photos_to_label", "figures", "quick", "ablation"}
DATA_KEYS = {"n_source_train", "n_target_unlabeled", "n_source_test", "n_target_test", "size", "seed", "workers"}
QUICK_KEYS = {"data", "input_size", "label_batch_size", "photos_to_label", "figures", "train", "ablation"}


# --------------------------------------------------------------------------- settings


@dataclass
class DemoSettings:
    """Everything a demo run needs: ``configs/demo.yaml`` plus the two training recipes (YAML data)."""

    data: dict
    input_size: int
    label_batch_size: int
    examples: int
    photos: int
    photos_to_label: int | None
    teacher: dict
    student: dict
    ablation: dict = field(default_factory=dict)
    quick: bool = False
    seed: int = 0


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the demo settings ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _check_keys(data: dict, allowed: set[str], where: str, required: bool = False) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(allowed - set(data))
    if required and missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")


def load_settings(quick: bool = False, config_dir: str | os.PathLike = CONFIG_DIR) -> DemoSettings:
    """Read ``demo.yaml``, ``demo_teacher.yaml`` and ``demo_student.yaml`` from ``config_dir``;
    ``quick`` merges the ``quick:`` section over them (its ``train:`` goes into both recipes)."""
    config_dir = Path(config_dir)
    path = config_dir / "demo.yaml"
    raw = _read_yaml(path)
    _check_keys(raw, SETTINGS_KEYS, str(path), required=True)
    teacher = _read_yaml(config_dir / "demo_teacher.yaml")
    student = _read_yaml(config_dir / "demo_student.yaml")
    if quick:
        changes = raw["quick"] or {}
        _check_keys(changes, QUICK_KEYS, f"{path}: quick")
        train_changes = {"train": changes.pop("train", {})}
        raw = deep_merge(raw, changes)
        teacher, student = deep_merge(teacher, train_changes), deep_merge(student, train_changes)
    _check_keys(raw["data"], DATA_KEYS, f"{path}: data", required=True)
    _check_keys(raw["figures"], {"examples", "photos"}, f"{path}: figures", required=True)
    return DemoSettings(data=dict(raw["data"], size=tuple(raw["data"]["size"])), input_size=int(raw["input_size"]),
                        label_batch_size=int(raw["label_batch_size"]), examples=int(raw["figures"]["examples"]),
                        photos=int(raw["figures"]["photos"]), photos_to_label=raw["photos_to_label"], teacher=teacher, student=student,
                        ablation=raw["ablation"] or {}, quick=quick)


SCENES_PER_SEED = 1_000_003  # demo seed s renders scene seeds from s * SCENES_PER_SEED: no scene is shared


def with_seed(settings: DemoSettings, seed: int) -> DemoSettings:
    """``settings`` with one seed driving everything random: the scenes (their seed range), both models'
    initialisation (``model.init_seed``), data order, crops, perturbations and CutMix (``train.seed``)."""
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    per_model = {"train": {"seed": seed}, "model": {"init_seed": seed}}
    return dataclasses.replace(settings, data=dict(settings.data, seed=seed * SCENES_PER_SEED), seed=seed,
                               teacher=deep_merge(settings.teacher, per_model),
                               student=deep_merge(settings.student, per_model))


def default_photos() -> Path | None:
    """The real photos beside the checkout (``../shared/data/photos``), if present."""
    candidates = [Path(__file__).resolve().parents[3] / "shared" / "data" / "photos",
                  Path.cwd().parent / "shared" / "data" / "photos"]
    return next((p for p in candidates if p.is_dir()), None)


# --------------------------------------------------------------------------- stages


def generate_data(out: Path, data: dict) -> dict[str, Path]:
    """``out/data/<split>`` from :func:`pseudodepth.synth.make_demo_data`; reused when an earlier run
    wrote the same settings with the same domain definitions (``out/data/demo_data.json``)."""
    root = out / "data"
    marker = root / "demo_data.json"
    wanted = json.dumps({**{k: list(v) if isinstance(v, tuple) else v for k, v in sorted(data.items())},
                         "domains": domain_fingerprint("source", "target")})
    splits = ("source_train", "target_unlabeled", *TEST_SPLITS)
    if marker.is_file() and marker.read_text() == wanted and all((root / s / "images").is_dir() for s in splits):
        return {s: root / s for s in splits}
    shutil.rmtree(root, ignore_errors=True)
    folders = make_demo_data(root, **data)
    marker.write_text(wanted)
    return folders


def train_recipe(recipe: dict, out: Path, overrides: dict | None = None, name: str = "recipe",
                 resume: bool = False) -> Trained:
    """Train ``recipe`` (training YAML data, paths relative to ``out``) with ``overrides`` merged on top, as
    :func:`pseudodepth.stages.train_run` does (``resume``: reuse a finished run of the same configuration,
    continue an interrupted one from its checkpoint)."""
    return train_run(config_from_dict(deep_merge(recipe, overrides or {}), base_dir=out, file=name), resume=resume)


def pseudo_label(teacher: Trained, images: Path, store: Path, settings: DemoSettings, progress: bool,
                 confidence: str | None = None) -> str:
    """Label ``images`` into the label store ``store`` with ``teacher``; returns the one-line summary.
    ``confidence`` (flip | scales) also stores a confidence map per label (``label --confidence``).

    A teacher trained in this run relabels everything; a reused one continues the store (labels
    already written are kept, see :func:`pseudodepth.label.label_folder`)."""
    report = label_images(str(teacher.final), images, store,
                          LabelSettings(input_size=settings.input_size, confidence=confidence),
                          batch_size=settings.label_batch_size, workers=1, overwrite=teacher.fresh, progress=progress)
    return report.summary() + (f" ({'; '.join(report.failures)})" if report.failures else "")


def evaluate_models(models: dict[str, Any], data: Path, settings: DemoSettings, out: Path | None,
                    progress: bool, extra_splits: tuple[str, ...] = ()) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {split: metrics}}`` on ``data/<split>`` for the test splits and ``extra_splits``
    (``out/<split>/`` files), by :func:`pseudodepth.stages.evaluate_sets`."""
    sets = {split: f"folder:{data / split}" for split in (*TEST_SPLITS, *extra_splits)}
    return evaluate_sets(models, sets, settings.input_size, out, progress)[0]


# --------------------------------------------------------------------------- per-pixel views


def zero_output_share(model: torch.nn.Module, split_dir: Path, input_size: int, count: int = 20) -> float:
    """Share of pixels where ``model`` outputs exactly 0 on the first ``count`` images of ``split_dir``.

    The network ends in a ReLU and its losses are shift-invariant, so nothing keeps the last layer's
    input above 0: a large share means that part of the output has collapsed (no gradient reaches it).
    """
    source = folder_source(split_dir)
    shares = [float(np.mean(predict(model, source.load(i)[0], input_size) <= 0))
              for i in range(min(count, len(source)))]
    return float(np.mean(shares)) if shares else float("nan")


def filter_overlap(views: list[SceneViews], ratio: float) -> float:
    """Share of the filter's dropped pixels (on valid ground truth) that lie among each image's top ``ratio``
    teacher errors (per-pixel AbsRel); a filter that knew nothing would score ``ratio``."""
    hits = total = 0
    for v in views:
        ok = np.isfinite(v.teacher_error)
        if not ok.any():
            continue
        worst = v.teacher_error >= np.quantile(v.teacher_error[ok], 1 - ratio)
        dropped = v.dropped & ok
        hits += int((dropped & worst).sum())
        total += int(dropped.sum())
    return hits / total if total else float("nan")


# --------------------------------------------------------------------------- figures


def photo_figure(store: Path, student: torch.nn.Module, count: int, input_size: int,
                 per_row: int = 2) -> tuple[np.ndarray, list[str]]:
    """Real photos with the teacher's stored pseudo-labels and the student's prediction."""
    triplets, names = [], []
    for source, rgb, pseudo, pred in pseudo_label_rows(store, student, count, input_size):
        triplets.append([rgb, colorize(pseudo), colorize(pred)])  # image_grid scales
        names.append(source)
    rows = [sum(triplets[i:i + per_row], []) for i in range(0, len(triplets), per_row)]
    width = 3 * min(per_row, len(triplets))
    rows = [r + [np.full((8, 8, 3), 255, np.uint8)] * (width - len(r)) for r in rows]
    titles = ["photo", "teacher pseudo-label", "student"] * (width // 3)
    return rp.image_grid(rows, titles, panel_height=150), names


# --------------------------------------------------------------------------- the demo


@dataclass
class DemoRun:
    """Paths and results of one demo run (what the report is built from)."""

    out: Path
    settings: DemoSettings
    folders: dict[str, Path]
    metrics: dict[str, dict[str, dict[str, float]]]
    label_summary: str
    photos: Path | None
    photo_summary: str
    seconds: dict[str, float]
    ablation: dict | None = None


def _photos_folder(photos: str | os.PathLike | bool | None) -> Path | None:
    if photos is False:
        return None
    if photos is None or photos is True:
        return default_photos()
    path = Path(photos)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: photos folder not found; pass --photos DIR with images, or --no-photos")
    return path


def run_demo(out: str | os.PathLike = "demo_out", quick: bool = False, ablation: bool = False,
             photos: str | os.PathLike | bool | None = None, progress: bool = True, resume: bool = False,
             seed: int = 0, config_dir: str | os.PathLike = CONFIG_DIR) -> dict:
    """Run the whole loop into ``out``; returns ``metrics.json``'s content
    ``{"teacher": {split: {"abs_rel": .., "delta1": .., ...}}, "student": {...}}``.

    ``quick`` runs every stage at toy size (seconds; for tests). ``ablation`` also trains the rows
    of Table 9 (:func:`run_ablation`, much longer). ``photos``: a folder of real photos to
    pseudo-label for the pictures; None looks for ``../shared/data/photos``, False skips them.
    ``resume`` continues an interrupted run in ``out``: every model whose training finished with the
    same configuration is reused, label stores are continued; evaluation and the report are redone.
    ``seed`` drives everything random (:func:`with_seed`); ``config_dir`` holds the three YAML files.
    The image-blind baseline (:class:`pseudodepth.baselines.BlindMap`) is scored beside the models.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = with_seed(load_settings(quick, config_dir), seed)
    if ablation:
        check_plan(settings)  # a bad ablation setting fails now, not after the main run
    photo_dir = _photos_folder(photos)
    stages = Stages(6 + (1 if ablation else 0), progress)
    stages.say(f"pseudodepth demo -> {out}" + (" (quick)" if quick else ""))
    d = settings.data

    with stages("data", f"rendering {d['n_source_train']} labeled source scenes, {d['n_target_unlabeled']} unlabeled "
                        f"target scenes, {d['n_source_test']} + {d['n_target_test']} test scenes"):
        folders = generate_data(out, settings.data)
    with stages("teacher", f"training on the {d['n_source_train']} labeled source scenes only"):
        teacher = train_recipe(settings.teacher, out, name="configs/demo_teacher.yaml", resume=resume)
    with stages("label", f"pseudo-labelling the {d['n_target_unlabeled']} target images"
                         + (f" and the photos in {photo_dir}" if photo_dir else "")):
        label_summary = pseudo_label(teacher, folders["target_unlabeled"], out / "labels" / "target_unlabeled",
                                     settings, progress)
        photo_summary = ""
        if photo_dir is not None:
            to_label = link_first_images(photo_dir, settings.photos_to_label, out / "data" / "photos")
            photo_summary = pseudo_label(teacher, to_label, out / "labels" / "photos", settings, progress)
    with stages("student", "training on labeled source + pseudo-labeled target images"):
        student = train_recipe(settings.student, out, name="configs/demo_student.yaml",
                               resume=resume and not teacher.fresh)
    with stages("eval", f"teacher and student on {' and '.join(TEST_SPLITS)}"):
        models = {"teacher": load_model(teacher.final), "student": load_model(student.final)}
        blind = BlindMap.from_source(folder_source(folders["source_train"]))
        metrics = evaluate_models({"blind": blind, **models}, out / "data", settings, out / "eval", progress)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run = DemoRun(out, settings, folders, metrics, label_summary, photo_dir, photo_summary, stages.seconds)
    if ablation:
        with stages("ablation", "Table 9 rows (several teachers and students; this takes a while)"):
            run.ablation = run_ablation(out, settings, progress, reuse={"teacher": teacher, "student": student},
                                        resume=resume)
    with stages("report", "figures, report.md and report.html"):
        write_demo_report(run, models)
    (out / "run.json").write_text(json.dumps({"quick": quick, "seed": seed, "seconds": stages.seconds,
                                              "total_seconds": time.perf_counter() - stages.start,
                                              "cpu_seconds": cpu_seconds(), "label": label_summary,
                                              "photos": photo_summary}, indent=2) + "\n")
    teacher_target, student_target = (metrics[m]["target_test"]["abs_rel"] for m in MODELS)
    stages.say(f"target_test AbsRel: teacher {teacher_target:.4f}, student {student_target:.4f} "
               f"({'student ahead' if student_target < teacher_target else 'student NOT ahead'}); "
               f"report: {out / 'report.html'}")
    return metrics


def link_first_images(folder: Path, count: int | None, out: Path) -> Path:
    """``folder`` itself, or with a ``count`` a fresh folder ``out`` of links to its first ``count`` images
    (sorted by name; other files are left out)."""
    if count is None:
        return folder
    images = [p for p in sorted(folder.iterdir()) if is_image_name(p.name) and p.is_file()][:count]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for image in images:
        (out / image.name).symlink_to(image.resolve())
    return out


# --------------------------------------------------------------------------- report


def metrics_table(metrics: dict) -> rp.Table:
    """Blind map, teacher and student per test split, with the student's change against the teacher and
    the teacher's against the blind map (a model that does not beat the blind map learned no image cue)."""
    return run_report.metrics_table(
        metrics, "test split", "Least-squares scale and shift in disparity space per image, then metrics in depth; "
                               "mean over images. The image-blind map predicts the same map for every image (the mean "
                               "normalised disparity of the labeled source scenes).",
        baseline=("blind", "image-blind map", "teacher vs blind"))


def _recipe_table(settings: DemoSettings) -> rp.Table:
    t, s = settings.teacher, settings.student
    fa = s["feature_alignment"]
    rows = [
        ["model", f"`{t['model']['init']}` (random init, seed {t['model'].get('init_seed', 0)})",
         f"`{s['model']['init']}`" + (" (the teacher's final weights)" if s["model"]["init"].endswith("/final")
                                      else "")],
        ["data", f"{settings.data['n_source_train']} labeled source scenes",
         f"the same + {settings.data['n_target_unlabeled']} pseudo-labeled target images"],
        ["steps x batch", f"{t['train']['steps']} x {t['train']['batch_size']}",
         f"{s['train']['steps']} x {s['train']['batch_size']} (labeled : unlabeled = "
         f"{s['train']['labeled_ratio'][0]} : {s['train']['labeled_ratio'][1]})"],
        ["crops / precision", f"{t['train']['crop_size']} / {t['train']['precision']}",
         f"{s['train']['crop_size']} / {s['train']['precision']}"],
        ["loss", "SSI + 2 x gradient matching", f"the same; pseudo-labels drop their top "
                                                 f"{100 * s['loss']['drop_top_ratio']:g}% losses"],
        ["perturbations", "flips", ("colour jitter, grayscale, blur" if s["augment"]["strong"] else "none")
         + f"; CutMix p = {s['augment']['cutmix_p']:g}; flips"],
        ["feature alignment", "-", (f"1 - cos to the frozen {'encoder ' + fa['frozen'] if fa['frozen'] else 'initial encoder'}, "
                                    f"margin {fa['margin']:g}" if fa["enabled"] else "off")],
        ["learning rate", f"{t['optim']['encoder_lr']:g} (decoder x {t['optim']['decoder_lr_mult']:g}), "
                          f"{t['optim']['schedule']}", f"{s['optim']['encoder_lr']:g} (decoder x "
                                                       f"{s['optim']['decoder_lr_mult']:g}), {s['optim']['schedule']}"],
    ]
    return rp.Table(["", "teacher", "student"], rows)


def write_demo_report(run: DemoRun, models: dict[str, torch.nn.Module]) -> tuple[Path, Path]:
    """Figures under ``out/figures/`` and ``out/report.md`` / ``out/report.html``."""
    out, settings, metrics = run.out, run.settings, run.metrics
    ratio = float(settings.student["loss"]["drop_top_ratio"]) or 0.1
    n_target = settings.data["n_target_test"]
    target_views = scene_views(models, folder_source(out / "data" / "target_test"), range(n_target), settings.input_size,
                               ratio)
    overlap = filter_overlap(target_views, ratio)
    shown = target_views[:settings.examples]
    source_views = scene_views(models, folder_source(out / "data" / "source_test"),
                               range(min(2, settings.data["n_source_test"])), settings.input_size, ratio)
    rows = [f"target {i}" for i in range(len(shown))] + [f"source {i}" for i in range(len(source_views))]
    figure = scene_figure(shown + source_views, rows, [("teacher error (AbsRel)", "teacher_error"),
                                                        ("dropped by the filter", "dropped")])
    examples = rp.save_figure(out, "figures/examples.png", figure)
    logs = {name: rp.read_log(out / name / "log.csv") for name in MODELS}
    curves = str(rp.plot_curves(logs, [("total loss", ["loss"]), ("labeled source images", ["labeled_loss"]),
                                       ("student: pseudo-labeled images", ["unlabeled_loss"]),
                                       ("student: feature alignment (1 - cos)", ["feature_alignment"])],
                                out / "figures" / "curves.png", smooth=5).relative_to(out))

    fa = settings.student["feature_alignment"]
    t_target, s_target = (metrics[m]["target_test"]["abs_rel"] for m in MODELS)
    verdict = (f"The student is ahead on the target domain: AbsRel {t_target:.4f} -> **{s_target:.4f}** "
               f"({100 * (s_target / t_target - 1):+.1f}%)." if s_target < t_target else
               f"The student is **not** ahead on the target domain in this run: AbsRel {t_target:.4f} (teacher) vs "
               f"{s_target:.4f} (student).")
    doc = rp.Report("pseudodepth demo: teacher -> pseudo-labels -> student", intro=[
        "Depth Anything's loop at toy scale, on this machine's CPU: a **teacher** trained on labeled scenes of "
        "one domain (rooms) pseudo-labels unlabeled images of a shifted domain (the same kind of rooms through a "
        "poor camera: hue shift, washed-out colours, low contrast, wrong exposure, blur); a **student**, started "
        "from the teacher's weights and trained on the labeled scenes plus those "
        "pseudo-labels is then compared with its teacher and with an image-blind baseline on held-out scenes of "
        "both domains. " + verdict,
        "Everything here was produced by `pseudodepth demo`" + (" `--quick` (toy sizes: the numbers mean nothing)"
                                                               if settings.quick else "")
        + "; `metrics.json` holds the numbers, `eval/` the per-image scores.",
    ])
    zero = {m: zero_output_share(models[m], out / "data" / "target_test", settings.input_size) for m in MODELS}
    collapse = ("" if zero["student"] < 0.5 else
                " **The student's output has collapsed on the target domain** (its final ReLU is off on most pixels, "
                "so no gradient reaches them): this happens to some training runs from scratch, see the ablation in `BENCHMARKS.md`.")
    doc.add("Results", metrics_table(metrics),
            "Relative depth, evaluated as Depth Anything does: the prediction is affine-invariant disparity, so "
            "each image gets the least-squares scale and shift against the ground truth before AbsRel "
            "(mean |d - g| / g, lower is better) and δ1 (share of pixels within 1.25x, higher is better).",
            f"Pixels of the target test scenes where the output is exactly 0 (final ReLU off): teacher "
            f"{100 * zero['teacher']:.1f}%, student {100 * zero['student']:.1f}%." + collapse)
    doc.add("What the models see", rp.Figure(
        examples, "Held-out scenes (4 target, 2 source). Depth maps are disparity in Spectral_r (near = warm), "
                  "each min-max scaled; ground truth is black where invalid. Teacher error: "
                  f"per-pixel AbsRel after alignment, 0 (black) to {ERROR_SCALE:g} or more (yellow), grey where invalid. Dropped by the filter: the top "
                  f"{100 * ratio:g}% per-pixel SSI losses of the final student against the teacher's prediction, "
                  "i.e. what the V2 filter would ignore if the scene were in the unlabeled pool."),
        f"On all {n_target} target test scenes, {100 * overlap:.0f}% of the dropped pixels with ground truth are "
        f"among the teacher's worst {100 * ratio:g}% pixels of the scene (a filter that knew nothing would score "
        f"{100 * ratio:g}%): " + ("the high-loss pixels are often where the pseudo-label is wrong."
                                  if overlap >= 2 * ratio else
                                  "the filter drops where the student and teacher disagree, which here is only "
                                  "slightly more often where the teacher is wrong than elsewhere."))
    if run.photos is not None:
        figure, names = photo_figure(out / "labels" / "photos", models["student"], settings.photos,
                                     settings.input_size)
        path = rp.save_figure(out, "figures/photos.png", figure)
        doc.add("Real photos", rp.Figure(path, f"Pseudo-labels of real photos ({', '.join(names)} from "
                                                f"`{run.photos}`) by the teacher, and the student's prediction."),
                f"Label store `labels/photos`: {run.photo_summary}. Both models learnt depth from a few hundred "
                "rendered scenes only, so on real photos they capture coarse layout at best; the released Depth "
                "Anything models are what to label real images with.")
    else:
        doc.add("Real photos", "No real photos were pseudo-labelled (none found at `../shared/data/photos`, or "
                               "`--no-photos`); `pseudodepth demo --photos DIR` labels the images of DIR.")
    doc.add("Training", rp.Figure(curves, "Training logs (`teacher/log.csv`, `student/log.csv`): total loss, loss "
                                          "on labeled source images, and the student's pseudo-label loss (after "
                                          "filtering) and feature-alignment term."),
            _recipe_table(settings),
            "Nothing is pretrained here, so the recipe departs from Depth Anything in one place: the teacher "
            "starts from random weights and the student starts from the teacher's final weights (Depth Anything "
            "starts both from a pretrained DINOv2 encoder and never fine-tunes the teacher into the student); the "
            "ablation's controls include the teacher continued on labeled source for the student's steps. "
            "Feature alignment (V1: to the frozen encoder the student starts from, here the teacher's)"
            + (f" was active (some patch below the {fa['margin']:g} cosine margin) in "
               f"{100 * np.mean(logs['student']['feature_alignment'] > 0):.0f}% of the logged steps."
               if fa["enabled"] else " is off in this recipe: the encoder it would keep is the teacher's, not a "
                                     "semantic one (the ablation's last Table 9 row measures it)."),
            f"Pseudo-labels (`labels/target_unlabeled`): {run.label_summary}.")
    if run.ablation is not None:
        doc.add("Ablation: baselines, controls, Table 9 rows, confidence and edges, wrong pseudo-labels on several seeds",
                ablation.goals(run.ablation, run.ablation["student_row"]), *ablation.tables(run.ablation),
                f"Command: `{run.ablation['command']}`; also written to `ablation.md`.")
    seconds = [[name, f"{sec:.0f}"] for name, sec in run.seconds.items()]
    doc.add("Run", rp.Table(["stage", "seconds"], seconds + [["total", f"{sum(run.seconds.values()):.0f}"]],
                            f"Wall time on this machine ({os.cpu_count()} CPU cores, torch {torch.__version__}, "
                            f"{torch.get_num_threads()} threads; CPU time so far {cpu_seconds():.0f} s). "
                            "The machine may be shared: `run.json` has the timings of the whole run."))
    return doc.write(out)


# --------------------------------------------------------------------------- command line


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``demo [--out DIR] [--quick] [--ablation] [--resume] [--photos DIR | --no-photos]`` to a CLI's
    sub-parsers."""
    p = subparsers.add_parser("demo", help="the whole teacher -> pseudo-label -> student loop on generated "
                                           "scenes, with a report (about 10 minutes on 2 CPU cores)")
    p.add_argument("--out", default="demo_out", help="output folder (data, models, report.html, metrics.json)")
    p.add_argument("--quick", action="store_true", help="toy sizes: every stage in seconds (a smoke test)")
    p.add_argument("--seed", type=int, default=0, help="one seed for everything random: scenes, initialisation, "
                                                       "data order, augmentation (default 0)")
    p.add_argument("--ablation", action="store_true",
                   help="also train the rows of Depth Anything's Table 9 and write ablation.md (much longer)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: reuse every finished model and label store")
    photos = p.add_mutually_exclusive_group()
    photos.add_argument("--photos", default=None, help="folder of real photos to pseudo-label for the report "
                                                       "(default: ../shared/data/photos if present)")
    photos.add_argument("--no-photos", dest="photos", action="store_false", help="skip the real photos")
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    run_demo(args.out, quick=args.quick, ablation=args.ablation, photos=args.photos, resume=args.resume,
             seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pseudodepth.demo [--out DIR] ...``."""
    parser = argparse.ArgumentParser(prog="pseudodepth demo", description=__doc__.split("\n")[0])
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
