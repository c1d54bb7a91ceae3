"""``pseudodepth adapt``: a teacher and folders of your images in; a student adapted to them, its metrics and a report out.

The main job in one command, over the same API as the single commands (``RUN`` is ``--out``)::

    1 label    label.label_folder   RUN/labels/<folder name>/   one label store per --images folder
    2 student  train.train          RUN/student/                the recipe (configs/adapt.yaml) as a config
    3 eval     evaluate.evaluate    RUN/eval/<set>/             teacher and student on every --eval set
    4 report   report.Report        RUN/metrics.json, RUN/report.html (+ .md), RUN/figures/

``RUN/recipe.yaml`` records everything resolved (the recipe, the training config, the command), and
``RUN/run.json`` what each stage did. Every stage resumes: the same command after an interruption
(Ctrl-C or ``kill -9``) keeps every committed label, continues training from its newest checkpoint,
and skips what is finished (a finished student, evaluated sets). A different recipe for a run that
already trained is refused rather than silently mixed.

The student (``--student``): a preset, or a full checkpoint (official ``.pth``, Hugging Face folder,
pseudodepth checkpoint) it starts from, or a DINOv2 encoder (official ``dinov2_vit*14_pretrain.pth``
or a Hugging Face ``Dinov2Model`` folder) with a fresh decoder, as in the papers. Without it: the
teacher's architecture with the teacher's encoder and a fresh decoder. Without ``--labeled`` the
student learns from pseudo-labels only (Depth Anything V2's setting).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import report as rp
from .colorize import colorize
from .config import ConfigError, config_from_dict, deep_merge, resolve_source
from .evaluate import EVAL_KEYS, parse_data_spec, read_data_spec
from .hub import licence_of, update_model_card
from .interrupt import Interrupted
from .label import LabelSettings
from .losses import filter_dropped
from .models import ARCHS, PRESETS, load_encoder_state, load_model, model_info
from .report import run as run_report
from .report.run import pseudo_label_rows, scene_figure, scene_views
from .stages import Stages, cpu_seconds, evaluate_sets, label_images, train_run
from .store import LabelStore
from .checkpoints import latest_checkpoint

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_RECIPE = CONFIG_DIR / "adapt.yaml"
TRAINING_SECTIONS = ("loss", "augment", "feature_alignment", "optim", "train")
RECIPE_KEYS = {*TRAINING_SECTIONS, "input_size", "label", "figures", "sizes", "run"}
LABEL_KEYS = {"batch_size", "workers", "precision"}
FIGURE_KEYS = {"images", "eval_examples"}
DISPLAY_HEIGHT = 240  # figure panels of your images are computed at full resolution, shown at this height
MODELS = ("teacher", "student")


# --------------------------------------------------------------------------- recipe


def load_recipe(path: str | os.PathLike | None = None) -> dict:
    """``configs/adapt.yaml`` with the file at ``path`` (a recipe, or an earlier run's ``recipe.yaml``) merged on top.

    Unknown top-level, ``label`` and ``figures`` keys fail here, naming the file; the training sections are
    checked by :func:`pseudodepth.config.config_from_dict` before any work starts."""
    recipe = _read_yaml(DEFAULT_RECIPE)
    if path is None:
        return recipe
    path = Path(path)
    override = _read_yaml(path)
    unknown = sorted(set(override) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a recipe holds {', '.join(sorted(RECIPE_KEYS))}")
    for key, allowed in (("label", LABEL_KEYS), ("figures", FIGURE_KEYS)):
        bad = sorted(set(override.get(key) or {}) - allowed)
        if bad:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(bad)} in {key!r}; allowed: {', '.join(sorted(allowed))}")
    override.pop("run", None)  # an earlier run's record: informational
    return deep_merge(recipe, override)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of recipe sections, got {type(data).__name__}")
    return data


def _size_of_encoder(state: dict[str, torch.Tensor]) -> str | None:
    embed = state["embeddings.cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    return next((name for name, a in ARCHS.items() if (a.embed, a.depth) == (embed, depth)), None)


def is_encoder_only(spec: str) -> bool:
    """True for a DINOv2 encoder without a depth head: an official ``dinov2_*.pth`` or a HF ``Dinov2Model`` folder."""
    path = Path(spec).expanduser()
    if path.is_dir():
        config = path / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "dinov2"
    if path.is_file() and path.suffix in (".pth", ".pt"):
        from .convert import strip_prefix

        keys = strip_prefix(torch.load(path, map_location="cpu", weights_only=True, mmap=True)).keys()
        return "blocks.0.attn.qkv.weight" in keys and "pretrained.cls_token" not in keys
    return False


def student_section(student: str | None, teacher_spec: str, teacher) -> tuple[dict, str]:
    """The training config's ``model`` section for ``--student`` and the student's size name."""
    if student is None:
        info = model_info(teacher)
        preset = f"da-{info.version}-{info.size}"
        if preset not in PRESETS:
            raise ValueError(f"the teacher {teacher_spec} has no preset architecture ({info.size}); choose the student "
                             "with --student (a preset, a checkpoint or a DINOv2 encoder)")
        return {"init": preset, "encoder_from": _absolute(teacher_spec)}, info.size
    if student in PRESETS:
        return {"init": student}, PRESETS[student][1]
    if not Path(student).expanduser().exists():
        raise FileNotFoundError(f"--student {student}: neither a preset ({', '.join(sorted(PRESETS))}) nor a file or folder")
    if is_encoder_only(student):
        size = _size_of_encoder(load_encoder_state(student))
        if size is None or f"da-v2-{size}" not in PRESETS:
            raise ValueError(f"--student {student}: a DINOv2 encoder of no Depth Anything size")
        return {"init": f"da-v2-{size}", "encoder_from": _absolute(student)}, size
    return {"init": _absolute(student)}, model_info(load_model(student)).size


def _absolute(spec: str) -> str:
    return spec if spec in PRESETS else str(Path(spec).expanduser().resolve())


def labeled_source(text: str) -> dict:
    """A ``--labeled`` DATA spec (the ``eval --data`` syntax) as a training source dict with absolute paths."""
    spec, base_dir = read_data_spec(text)
    spec = {k: v for k, v in spec.items() if k not in EVAL_KEYS}
    return resolve_source(spec, base_dir or Path.cwd())


def unique_names(paths: list[str]) -> list[str]:
    """Folder/file names, made unique with ``-2``, ``-3`` suffixes."""
    names: list[str] = []
    for p in paths:
        base = Path(str(p).rstrip("/\\")).name or "data"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def eval_names(specs: list[str]) -> list[str]:
    roots = []
    for text in specs:
        spec, _ = read_data_spec(text)
        roots.append(str(spec.get("root") or spec.get("path") or spec.get("image_root") or spec["type"]))
    return unique_names(roots)


@dataclass
class AdaptPlan:
    """Everything resolved before any work starts (what ``recipe.yaml`` records)."""

    out: Path
    teacher: str
    images: dict[str, Path]  # label store name -> image folder
    evals: dict[str, str]  # eval set name -> DATA spec
    recipe: dict
    train_config: dict  # training config data (paths absolute)
    command: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> int:
        return int(self.recipe["input_size"])


def plan_run(teacher_spec: str, teacher, images: list[str], out: str | os.PathLike, *, student: str | None = None,
             labeled: list[str] | None = None, evals: list[str] | None = None, steps: int | None = None,
             input_size: int | None = None, recipe_path: str | os.PathLike | None = None,
             command: list[str] | None = None, device: str = "cpu") -> AdaptPlan:
    """Check every input and build the training config; raises (naming the problem) before any work."""
    out = Path(out).resolve()
    if not images:
        raise ValueError("give at least one --images FOLDER")
    folders = [Path(p).expanduser().resolve() for p in images]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"--images {folder}: not a folder; give a folder of images (sub-folders are walked)")
    recipe = load_recipe(recipe_path)
    if input_size is not None:
        recipe["input_size"] = input_size
    if recipe["input_size"] % 14 or recipe["input_size"] < 14:
        raise ValueError(f"--input-size must be a positive multiple of 14, got {recipe['input_size']}")
    model_section, size = student_section(student, teacher_spec, teacher)
    stores = dict(zip(unique_names([str(f) for f in folders]), folders))
    data = {"labeled": [labeled_source(t) for t in labeled or []],
            "unlabeled": [{"type": "label_store", "root": str(out / "labels" / name)} for name in stores]}
    config = deep_merge({k: recipe[k] for k in TRAINING_SECTIONS if k in recipe},
                        (recipe.get("sizes") or {}).get(size, {}))
    config = deep_merge(config, {"mode": "student", "model": model_section, "data": data,
                                 "train": {"out": str(out / "student"), "crop_size": int(recipe["input_size"]),
                                           "device": device}})
    if steps is not None:
        config["train"]["steps"] = steps
    # Validate now (the label stores do not exist yet): a bad recipe fails before labelling.
    config_from_dict(config, base_dir=out, file=recipe_path or DEFAULT_RECIPE, check_paths=False)
    for source in data["labeled"]:
        for key in ("root", "path", "image_root", "depth_root", "list_file"):
            if isinstance(source.get(key), str) and not Path(source[key]).exists():
                raise FileNotFoundError(f"--labeled: {source[key]} does not exist")
    for text in evals or []:
        parse_data_spec(text)  # a missing or malformed eval set fails now
    names = eval_names(evals or [])
    recipe = {k: v for k, v in recipe.items() if k != "sizes"}
    return AdaptPlan(out, teacher_spec, stores, dict(zip(names, evals or [])), recipe, config, command or [])


# --------------------------------------------------------------------------- stages


def check_student_folder(plan: AdaptPlan, check_paths: bool = False):
    """The student's training config; refuses a ``RUN/student`` trained with another one (before any work)."""
    config = config_from_dict(plan.train_config, base_dir=plan.out, file=plan.out / "recipe.yaml",
                              check_paths=check_paths)
    saved = config.out_dir / "config.yaml"
    if saved.is_file() and saved.read_text() != yaml.safe_dump(config.to_dict(), sort_keys=False):
        raise ValueError(f"{config.out_dir} holds a student trained with another recipe ({saved} differs from this "
                         f"command's); choose another --out, or delete {config.out_dir} to train again")
    return config


def train_student(plan: AdaptPlan) -> tuple[Path, str]:
    """Train (or resume, or reuse) the student; returns (final folder, what happened)."""
    trained = train_run(check_student_folder(plan, check_paths=True), resume=True)
    return trained.final, trained.what


# --------------------------------------------------------------------------- report


def gallery_figure(plan: AdaptPlan, student: torch.nn.Module, count: int, ratio: float) -> tuple[np.ndarray, int]:
    """Your images: the teacher's pseudo-label, the student's prediction, the pixels the V2 filter drops."""
    rows, titles = [], []
    per_store = max(1, -(-count // len(plan.images)))
    for name in plan.images:
        for source, small, pseudo, pred in pseudo_label_rows(plan.out / "labels" / name, student, per_store,
                                                             plan.input_size, DISPLAY_HEIGHT):
            dropped = filter_dropped(pred, pseudo, ratio) if ratio > 0 else np.zeros(pred.shape, bool)
            rows.append([small, colorize(pseudo), colorize(pred), rp.overlay_mask(small, dropped)])
            titles.append(f"{name}/{source}"[-28:])
    rows, titles = rows[:count], titles[:count]
    columns = ["image", "teacher pseudo-label", "student", f"dropped by the filter ({100 * ratio:g}%)"]
    return rp.image_grid(rows, columns, titles, panel_height=150), len(rows)


def eval_figure(spec: str, models: dict[str, torch.nn.Module], count: int, input_size: int) -> np.ndarray:
    """Eval images: ground truth, both models, and their per-pixel AbsRel after least-squares alignment."""
    source = parse_data_spec(spec)
    indices = list(range(min(count, len(source))))
    return scene_figure(scene_views(models, source, indices, input_size),
                        [source.samples[i].name[-24:] for i in indices],
                        [("teacher error", "teacher_error"), ("student error", "student_error")])


def metrics_table(metrics: dict) -> rp.Table:
    return run_report.metrics_table(metrics, "eval set", "Least-squares scale and shift in disparity space per "
                                                         "image, then metrics in depth; mean over images.")


def recipe_table(plan: AdaptPlan) -> rp.Table:
    c = plan.train_config
    t, fa, o = c["train"], c["feature_alignment"], c["optim"]
    rows = [["teacher", f"`{plan.teacher}`"],
            ["student starts from", f"`{c['model']['init']}`" + (f", encoder of `{c['model']['encoder_from']}`"
                                                               if c["model"].get("encoder_from") else "")],
            ["pseudo-labeled images", ", ".join(f"`{f}`" for f in plan.images.values())],
            ["labeled sources", ", ".join(f"`{s['type']}`" for s in c["data"]["labeled"]) or "none (V2: pseudo-labels only)"],
            ["steps x batch", f"{t['steps']} x {t['batch_size']}" + (
                f" (labeled : unlabeled = {t['labeled_ratio'][0]} : {t['labeled_ratio'][1]})" if c["data"]["labeled"] else "")],
            ["input / crop size", f"{plan.input_size} / {t['crop_size']}, {t['precision']}"],
            ["loss", f"SSI + {c['loss']['gm_weight']:g} x gradient matching; pseudo-labels drop their top "
                     f"{100 * c['loss']['drop_top_ratio']:g}% losses"],
            ["perturbations", ("colour jitter, grayscale, blur" if c["augment"]["strong"] else "none")
             + f"; CutMix p = {c['augment']['cutmix_p']:g}"],
            ["feature alignment", f"margin {fa['margin']:g}, weight {fa['weight']:g}" if fa["enabled"] else "off"],
            ["optimiser", f"AdamW, encoder lr {o['encoder_lr']:g} (decoder x {o['decoder_lr_mult']:g}), {o['schedule']}"]]
    return rp.Table(["", ""], rows)


def write_report(plan: AdaptPlan, models: dict[str, torch.nn.Module], metrics: dict, summary: dict) -> tuple[Path, Path]:
    out, recipe = plan.out, plan.recipe
    ratio = float(plan.train_config["loss"]["drop_top_ratio"])
    figures = recipe.get("figures") or {}
    gallery, shown = gallery_figure(plan, models["student"], int(figures.get("images", 6)), ratio)
    doc = rp.Report(f"pseudodepth adapt: {Path(plan.teacher).name} -> student", intro=[
        f"The teacher `{plan.teacher}` pseudo-labelled your images; a student was trained on them with Depth "
        "Anything's recipe. " + _verdict(metrics),
        f"Written by `{' '.join(['pseudodepth', *plan.command]) if plan.command else 'pseudodepth adapt'}`; "
        "`metrics.json` holds the numbers, `recipe.yaml` everything needed to repeat the run. The student is "
        "`student/final`, a Hugging Face model folder: `transformers.pipeline(\"depth-estimation\", "
        "model=\"student/final\")` loads it; `pseudodepth app " + str(out) + "` compares both models on any image.",
    ])
    if metrics["teacher"]:
        doc.add("Results", metrics_table(metrics),
                "Relative depth, evaluated as Depth Anything does: each prediction gets the least-squares scale and "
                "shift against the ground truth (in disparity) before AbsRel (lower is better) and δ1 (higher is better).")
    else:
        doc.add("Results", "No `--eval` set was given, so there are no metrics: look at the pictures below, or "
                           "re-run the same command with `--eval DATA` (the finished stages are reused).")
    path = rp.save_figure(out, "figures/gallery.png", gallery)
    doc.add("Your images", rp.Figure(path, f"{shown} of your images: the teacher's pseudo-label (what the student "
                                           "learnt from), the student's prediction, and the pixels the V2 filter drops "
                                           f"(the top {100 * ratio:g}% per-pixel losses of the student against the "
                                           "pseudo-label). Disparity in Spectral_r (near = warm), min-max per panel."),
            *[f"Label store `labels/{name}`: {summary['label'].get(name, '')}" for name in plan.images])
    for name, spec in plan.evals.items():
        figure = eval_figure(spec, models, int(figures.get("eval_examples", 2)), plan.input_size)
        path = rp.save_figure(out, f"figures/eval_{name}.png", figure)
        doc.add(f"Eval set {name}", rp.Figure(path, f"`{spec}`: per-pixel AbsRel after alignment from 0 (black) to 1 "
                                                    "or more (yellow), grey where the ground truth is invalid."))
    log = rp.read_log(plan.out / "student" / "log.csv")
    curves = rp.plot_curves({"student": log}, [("total loss", ["loss"]), ("pseudo-labeled images", ["unlabeled_loss"]),
                                               ("labeled images", ["labeled_loss"]),
                                               ("filter: dropped share", ["dropped_share"]),
                                               ("feature alignment (1 - cos)", ["feature_alignment"])],
                            out / "figures" / "curves.png", smooth=5)
    doc.add("Training", rp.Figure(str(curves.relative_to(out)), "The student's `log.csv`."), recipe_table(plan),
            f"Student: {summary['student']}.")
    seconds = [[name, f"{sec:.0f}"] for name, sec in summary["seconds"].items()]
    doc.add("Run", rp.Table(["stage", "seconds"], seconds, f"This run's wall time per stage ({os.cpu_count()} CPU "
                                                           f"cores, torch {torch.__version__}); finished stages of an "
                                                           "earlier run are skipped and take ~0 s."))
    return doc.write(out)


def _verdict(metrics: dict) -> str:
    lines = []
    for name in metrics["teacher"]:
        t, s = metrics["teacher"][name]["abs_rel"], metrics["student"][name]["abs_rel"]
        lines.append(f"on `{name}` AbsRel {t:.4f} -> {s:.4f} ({100 * (s / t - 1):+.1f}%, "
                     + ("**student ahead**" if s < t else "**student not ahead**") + ")")
    return ("Teacher -> student " + "; ".join(lines) + ".") if lines else ""


# --------------------------------------------------------------------------- the job


def adapt(teacher: str, images: list[str], out: str | os.PathLike, *, student: str | None = None,
          labeled: list[str] | None = None, evals: list[str] | None = None, steps: int | None = None,
          input_size: int | None = None, recipe: str | os.PathLike | None = None, device: str = "cpu",
          progress: bool = True, command: list[str] | None = None) -> dict:
    """Run (or continue) the whole job into ``out``; returns ``metrics.json``'s content
    ``{"teacher": {set: {"abs_rel": ..., "delta1": ...}}, "student": {...}}`` (empty without ``evals``)."""
    stages = Stages(4, progress)
    teacher_model = load_model(teacher, device=device)
    plan = plan_run(teacher, teacher_model, images, out, student=student, labeled=labeled, evals=evals, steps=steps,
                    input_size=input_size, recipe_path=recipe, command=command, device=device)
    check_student_folder(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "recipe.yaml").write_text(yaml.safe_dump(
        {**plan.recipe, "run": {"teacher": plan.teacher, "images": {k: str(v) for k, v in plan.images.items()},
                                "eval": plan.evals, "command": ["pseudodepth", *plan.command],
                                "training_config": plan.train_config}}, sort_keys=False))
    stages.say(f"pseudodepth adapt -> {plan.out}")
    summary: dict[str, Any] = {"label": {}, "seconds": stages.seconds}
    current = "label"
    try:
        label = plan.recipe["label"]
        with stages("label", f"pseudo-labelling {', '.join(map(str, plan.images.values()))} with {teacher}"):
            settings = LabelSettings(input_size=plan.input_size, precision=label["precision"])
            for name, folder in plan.images.items():
                report = label_images(teacher, folder, plan.out / "labels" / name, settings,
                                      batch_size=label["batch_size"], workers=label["workers"], device=device,
                                      model=teacher_model, progress=progress)
                summary["label"][name] = report.summary()
                stages.say(f"  {name}: {report.summary()}")
        current = "student"
        steps_total = plan.train_config["train"]["steps"]
        with stages("student", f"training {steps_total} steps on the pseudo-labels"):
            final, summary["student"] = train_student(plan)
            stages.say(f"  {summary['student']}: {final}")
        current = "eval"
        models = {"teacher": teacher_model, "student": load_model(final, device=device)}
        with stages("eval", f"teacher and student on {len(plan.evals)} eval set(s)"):
            metrics, skipped = evaluate_sets(models, plan.evals, plan.input_size, plan.out / "eval", progress,
                                             reuse=True)
            (plan.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            summary["eval_skipped"] = skipped
        current = "report"
        with stages("report", "figures, report.md, report.html and the model card"):
            card = {"metrics": metrics, "input_size": plan.input_size}
            if (lic := licence_of(getattr(teacher_model.config, "pseudodepth", {}) or {})) is not None:
                card["licence"] = f"{lic} (inherited from the teacher {teacher})"
            update_model_card(final, **card)
            write_report(plan, models, metrics, summary)
    except KeyboardInterrupt as err:
        raise Interrupted(_saved_so_far(plan, current, err)) from None
    (plan.out / "run.json").write_text(json.dumps({**summary, "total_seconds": time.perf_counter() - stages.start,
                                                   "cpu_seconds": cpu_seconds()}, indent=2) + "\n")
    stages.say(f"done: {_verdict(metrics) or 'no --eval set, no metrics'} report: {plan.out / 'report.html'}; "
               f"student: {final} (a Hugging Face folder); look at both: pseudodepth app {plan.out}")
    return metrics


def _saved_so_far(plan: AdaptPlan, stage: str, err: KeyboardInterrupt) -> str:
    stores = [LabelStore(plan.out / "labels" / name) for name in plan.images]
    labelled = sum(len(s.rows()) for s in stores if s.root.is_dir())
    parts = [f"{labelled} labelled images kept in {plan.out / 'labels'}"]
    if isinstance(err, Interrupted):
        parts.append(f"training {err.saved}")
    elif (checkpoint := latest_checkpoint(plan.out / "student")) is not None:
        parts.append(f"training checkpoint {checkpoint}")
    return f"stopped in stage {stage}; " + "; ".join(parts)


# --------------------------------------------------------------------------- command line


def add_adapt_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("adapt", help="the main job: label your images with a teacher, train a student on "
                                            "them, evaluate both, write a report (resumable)")
    p.add_argument("--teacher", required=True, help="model SPEC of the teacher (official .pth, HF folder, checkpoint, preset)")
    p.add_argument("--images", required=True, action="append", help="folder of your images; repeat for several")
    p.add_argument("--out", required=True, help="run folder (labels, student, eval, metrics.json, report.html)")
    p.add_argument("--student", default=None, help="the student's starting point: a preset, a full checkpoint, or a "
                                                   "DINOv2 encoder (.pth or HF folder) with a fresh decoder; default: "
                                                   "the teacher's architecture and encoder, fresh decoder")
    p.add_argument("--labeled", action="append", default=None,
                   help="labeled training data, TYPE:PATH[,key=value] as eval --data; repeat for several "
                        "(default none: pseudo-labels only, Depth Anything V2's setting)")
    p.add_argument("--eval", action="append", default=None, help="eval set with ground truth (eval --data syntax); repeat")
    p.add_argument("--steps", type=int, default=None, help="training steps (overrides the recipe)")
    p.add_argument("--input-size", type=int, default=None, help="network input and crop size (multiple of 14; recipe: 518)")
    p.add_argument("--config", default=None, help="recipe YAML (keys of configs/adapt.yaml; an earlier RUN/recipe.yaml works)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    adapt(args.teacher, args.images, args.out, student=args.student, labeled=args.labeled, evals=args.eval,
          steps=args.steps, input_size=args.input_size, recipe=args.config, device=args.device,
          command=getattr(args, "argv", None))
    return 0
