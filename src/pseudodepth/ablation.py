"""``pseudodepth demo --ablation``: the evidence behind the demo, on several seeds.

For every seed the whole chain is rerun with :func:`pseudodepth.demo.with_seed` (new scenes, new
initialisation, new data order) and these models are trained and scored on the test splits:

- **baselines**: the image-blind mean map (:class:`pseudodepth.baselines.BlindMap`) and the teacher;
- **controls**: a *compute-matched teacher* (the teacher recipe run for as many images as teacher
  and student saw together: does the student win only by training longer?), an *oracle* (the
  teacher recipe on as many labeled *target* scenes, at the teacher's compute), the *teacher
  continued* on labeled source for the student's steps, batch and schedule (the student starts from
  the teacher: does it win only by a second, warm-restarted schedule?) and the *student recipe on
  each part of the pool alone*: its clean source-kind images (do the strong perturbations win as
  plain augmentation, without any target image?) and its target images (what do the clean images add?);
- **Table 9 rows** of Depth Anything V1: each adds one lever to the row above (``ablation.rows``);
- **wrong pseudo-labels**: the teacher's labels with regions replaced by wrong depth
  (:func:`wrong_regions`), a student per top-n% filter ratio, and the ratio chosen on a held-out
  labeled target *validation* split (never the test split);
- **pseudo-label quality**: the demo's student plus a confidence filter (its pool labelled again with
  ``label --confidence flip``, pixels below ``ablation.confidence.min`` dropped) or plus the edge-aware
  top-n% filter (``loss.edge_aware``): :func:`quality_rows`.

``out/ablation.json`` holds every score; ``out/ablation.md`` the tables (mean ± std over seeds).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import report as rp
from .baselines import BlindMap
from .data.sources import folder as folder_source
from .models import load_model
from .store import LabelStore
from .synth import DOMAINS, domain_fingerprint, sample_scene, write_domain

# camera-effect severity bins of the target test scenes: four equal bins over the target domain's range
SEVERITY_BINS = tuple(float(x) for x in np.linspace(*DOMAINS["target"].camera_effects, 5))
ABLATION_KEYS = {"seeds", "rows", "compute_matched", "oracle", "teacher_continued", "source_pool", "target_pool",
                 "wrong_labels", "confidence", "edge_aware"}  # configs/demo.yaml `ablation:`
EXTRA_SCENES = 300_000  # offset of the oracle / validation scenes in a seed's range (< SCENES_PER_SEED / 3)


@dataclass(frozen=True)
class Row:
    """One scored model of a seed. ``kind``: blind | teacher | student; ``overrides`` are merged over the
    teacher or student recipe; ``labels``: which pseudo-labels a student trains on (clean: the demo's pool,
    target + clean images | wrong | source_pool: the pool's clean images only | target_pool: its target images
    only | flip: the pool labelled with flip-agreement confidence maps)."""

    name: str
    group: str
    kind: str
    overrides: dict | None = None
    labels: str = "clean"


def plan(settings) -> list[Row]:
    """Every row of the ablation, from ``settings.ablation`` (configs/demo.yaml)."""
    a = settings.ablation
    t, s = settings.teacher["train"], settings.student["train"]
    matched = round((t["steps"] * t["batch_size"] + s["steps"] * s["batch_size"]) / t["batch_size"])
    rows = [Row("image-blind mean map", "baselines", "blind"),
            Row("teacher (labeled source only)", "baselines", "teacher", {})]
    rows += [Row(r["name"], "table9", "student", r["student"]) for r in a.get("rows", [])]
    if a.get("compute_matched", True):
        rows.append(Row(f"compute-matched teacher ({matched} steps)", "controls", "teacher",
                        {"train": {"steps": matched, "out": "teacher_matched"}}))
    if a.get("oracle", True):
        rows.append(Row(f"oracle: teacher recipe on {settings.data['n_source_train']} labeled target scenes",
                        "controls", "teacher",
                        {"data": {"labeled": [{"type": "folder", "root": "data/target_train"}]},
                         "train": {"out": "oracle"}}))
    if a.get("teacher_continued", True):
        rows.append(Row("teacher continued on labeled source (the student's steps, batch and schedule)", "controls",
                        "teacher", {"model": {"init": f"{t['out']}/final"}, "optim": settings.student["optim"],
                                    "train": {"steps": s["steps"], "batch_size": s["batch_size"],
                                              "out": "teacher_continued"}}))
    if a.get("source_pool", True):
        rows.append(Row("student recipe on the pool's clean source-kind images only (no target image)", "controls",
                        "student", {"train": {"out": "student_source_pool"}}, labels="source_pool"))
    if a.get("target_pool", True):
        rows.append(Row("student recipe on the pool's target images only (no clean image)", "controls",
                        "student", {"train": {"out": "student_target_pool"}}, labels="target_pool"))
    wrong = a.get("wrong_labels") or {}
    for ratio in wrong.get("ratios", []):
        train = {"out": f"student_wrong_{ratio:g}", **({"steps": int(wrong["steps"])} if "steps" in wrong else {})}
        rows.append(Row(f"wrong labels, filter ratio {ratio:g}", "wrong_labels", "student",
                        {"loss": {"drop_top_ratio": float(ratio)}, "train": train}, labels="wrong"))
    # appended last, with outs of their own: the rows above keep their index (ablation_<index>) and their folders
    return rows + quality_rows(settings)


def quality_rows(settings) -> list[Row]:
    """The demo's student plus one pseudo-label-quality lever each (``ablation.confidence`` / ``ablation.edge_aware``):
    the flip-agreement confidence filter (a second store of the same pool, ``label --confidence flip``) and the
    edge-aware top-n% filter. A malformed setting fails here, before any work."""
    a, rows = settings.ablation, []
    confidence, edges = a.get("confidence"), a.get("edge_aware", False)
    if confidence is not None:
        minimum = confidence.get("min") if isinstance(confidence, dict) else None
        if not (isinstance(confidence, dict) and set(confidence) == {"min"} and isinstance(minimum, (int, float))
                and not isinstance(minimum, bool) and 0 < minimum <= 1):
            raise ValueError(f"demo.yaml: ablation.confidence must be {{min: X}} with 0 < X <= 1 (or null: no "
                             f"confidence row), got {confidence!r}")
        rows.append(Row(f"+ confidence filter (flip agreement >= {minimum:g})", "pseudo_label_quality", "student",
                        {"loss": {"confidence": {"min": float(minimum)}}, "train": {"out": "student_confidence"}},
                        labels="flip"))
    if not isinstance(edges, bool):
        raise ValueError(f"demo.yaml: ablation.edge_aware must be true or false, got {edges!r}")
    if edges:
        ratio = float(settings.student["loss"]["drop_top_ratio"])
        rows.append(Row(f"+ edge-aware filter (top {100 * ratio:g}% dropped separately at depth edges and elsewhere)",
                        "pseudo_label_quality", "student",
                        {"loss": {"edge_aware": True}, "train": {"out": "student_edges"}}))
    return rows


# --------------------------------------------------------------------------- wrong pseudo-labels


def wrong_regions(disparity: np.ndarray, area: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``disparity`` with rectangles replaced by wrong depth until ``area`` of the pixels is wrong;
    returns ``(corrupted, wrong_mask)``.

    Each rectangle (sides 15-40% of the image's) gets, with equal chance, a patch of the same map
    copied from another place (plausible structure in the wrong place, like a hallucinated object)
    or its own values mirrored (``max + min - d``: near and far swapped, like a misread surface).
    """
    d = np.array(disparity, dtype=np.float32, copy=True)
    height, width = d.shape
    wrong = np.zeros(d.shape, bool)
    low, high = float(np.nanmin(d)), float(np.nanmax(d))
    for _ in range(100):
        if wrong.mean() >= area:
            break
        h = max(1, int(height * rng.uniform(0.15, 0.4)))
        w = max(1, int(width * rng.uniform(0.15, 0.4)))
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        if rng.random() < 0.5:
            sy, sx = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            d[y:y + h, x:x + w] = disparity[sy:sy + h, sx:sx + w]
        else:
            d[y:y + h, x:x + w] = high + low - disparity[y:y + h, x:x + w]
        wrong[y:y + h, x:x + w] = True
    return d, wrong


def corrupt_store(source: Path, out: Path, area: float, seed: int, stream: int = 0) -> Path:
    """A copy of the label store ``source`` at ``out`` whose every label went through :func:`wrong_regions`
    (random regions drawn from ``seed`` and ``stream``: one stream per store of a seed)."""
    clean, corrupted = LabelStore(source), LabelStore(out)
    meta = clean.meta()
    fingerprint = f"{meta['teacher']}-wrong{area:g}-{seed}-{stream}"
    if corrupted.meta().get("teacher") == fingerprint and corrupted.rows():
        return out
    corrupted.open_for(fingerprint, {**{k: v for k, v in meta.items() if k != "teacher"},
                                     "wrong_regions": {"area": area, "seed": seed}}, overwrite=True)
    rng = np.random.default_rng([seed, 7, stream])
    rows = []
    for row in clean.rows("ok"):
        disparity, _ = wrong_regions(clean.read_disparity(row), area, rng)
        low, high, invalid = corrupted.write_label(row["label"], disparity)
        # the clean store's confidence maps are not copied: the corrupted rows name none
        rows.append({**row, "min": low, "max": high, "invalid": invalid, "confidence": "", "teacher": fingerprint})
    corrupted.append(rows)
    corrupted.consolidate()
    return out


# --------------------------------------------------------------------------- running


def extra_splits(root: Path, settings) -> dict[str, Path]:
    """Scenes the main demo does not need: labeled *target* scenes ``target_train`` (the oracle's data, as
    many as the labeled source scenes) and ``target_val`` (choosing the filter ratio). Reused when present."""
    d, a = settings.data, settings.ablation
    wanted = {"target_train": ("target", d["n_source_train"], True),
              "target_val": ("target", int((a.get("wrong_labels") or {}).get("n_val", 100)), True)}
    folders = {}
    for offset, (name, (domain, count, with_depth)) in enumerate(wanted.items()):
        folder = root / name
        marker = folder / "scenes.json"
        spec = json.dumps({"count": count, "seed0": d["seed"] + EXTRA_SCENES * (offset + 1), "size": list(d["size"]),
                           "domain": domain_fingerprint(domain)})
        if not (marker.is_file() and marker.read_text() == spec):
            write_domain(folder, domain, count, d["seed"] + EXTRA_SCENES * (offset + 1), tuple(d["size"]),
                         with_depth=with_depth, workers=d.get("workers", 1))
            marker.write_text(spec)
        folders[name] = folder
    return folders


def run_seed(out: Path, settings, progress: bool, reuse: dict | None = None, resume: bool = False,
             only: set[str] | None = None) -> dict[str, dict]:
    """Train and score every row of :func:`plan` for ``settings.seed`` under ``out``; ``reuse`` maps
    ``"teacher"`` / ``"student"`` to models already trained with exactly these settings (the main run).
    ``only``: train (and score) just the rows of these names (the others are left alone)."""
    from .demo import POOL_SPLITS, evaluate_models, generate_data, pseudo_label, train_recipe, zero_output_share

    reuse = reuse or {}
    folders = generate_data(out, settings.data)
    extra_splits(out / "data", settings)
    teacher = reuse.get("teacher") or train_recipe(settings.teacher, out, name="teacher recipe", resume=resume)
    rows = [row for row in plan(settings) if only is None or row.name in only]
    pool = [split for split in POOL_SPLITS if split in folders]  # the demo's unlabeled pool: target + clean images
    stores = {"clean": [out / "labels" / split for split in pool],
              "source_pool": [out / "labels" / split for split in pool if split != "target_unlabeled"],
              "target_pool": [out / "labels" / "target_unlabeled"]}
    if "teacher" not in reuse:
        for split, store in zip(pool, stores["clean"]):
            pseudo_label(teacher, folders[split], store, settings, progress)
    if any(row.labels == "flip" for row in rows):  # the same pool and teacher, with flip-agreement confidence maps
        stores["flip"] = [out / "labels" / f"{split}_flip" for split in pool]
        for split, store in zip(pool, stores["flip"]):
            pseudo_label(teacher, folders[split], store, settings, progress, confidence="flip")
    wrong = settings.ablation.get("wrong_labels") or {}
    if wrong.get("ratios") and any(row.labels == "wrong" for row in rows):
        stores["wrong"] = [corrupt_store(store, store.with_name(f"{store.name}_wrong"), float(wrong.get("area", 0.25)),
                                         settings.seed, stream=k) for k, store in enumerate(stores["clean"])]
    severity = scene_severities(out / "data" / "target_test")  # once per seed, not once per row
    results: dict[str, dict] = {}
    for index, row in enumerate(plan(settings)):
        if only is not None and row.name not in only:
            continue
        model = load_model(train_row(row, index, out, settings, teacher, stores, reuse, resume).final) \
            if row.kind != "blind" else BlindMap.from_source(folder_source(folders["source_train"]))
        splits = ("target_val",) if row.group == "wrong_labels" else ()
        per_image = out / "ablation_eval" / f"row{index}"
        scores = evaluate_models({row.name: model}, out / "data", settings, per_image, progress,
                                 extra_splits=splits)[row.name]
        by_severity = severity_means(per_image / "target_test" / "per_image.csv", severity)
        if by_severity is not None:
            scores["target_abs_rel_by_severity"] = by_severity
        if row.kind != "blind":
            scores["zero_output_target"] = zero_output_share(model, out / "data" / "target_test",
                                                             settings.input_size)
        results[row.name] = {"group": row.group, **scores}
    return results


def row_recipe(row: Row, index: int, settings, stores: dict[str, list[Path]]) -> tuple[dict, dict]:
    """``(recipe, overrides)`` that train ``row``, the ``index``-th row of the plan: the teacher or student
    recipe and the row's overrides; a student also gets its label stores ``stores[row.labels]`` and, without
    an ``out`` of its own, trains into ``ablation_<index>``."""
    from .config import deep_merge

    if row.kind == "teacher":
        return settings.teacher, row.overrides or {}
    overrides = deep_merge(row.overrides or {}, {
        "data": {"unlabeled": [{"type": "label_store", "root": str(store)} for store in stores[row.labels]]}})
    overrides.setdefault("train", {}).setdefault("out", f"ablation_{index}")
    return settings.student, overrides


def check_plan(settings) -> list[Row]:
    """:func:`plan`, with every row's training configuration validated (paths unchecked: nothing is trained or
    labelled yet), so a bad ``ablation`` setting fails before the demo's first stage."""
    from .config import config_from_dict, deep_merge

    unknown = sorted(set(settings.ablation) - ABLATION_KEYS)
    if unknown:
        raise ValueError(f"demo.yaml: ablation: unknown key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(ABLATION_KEYS))}")
    rows = plan(settings)
    stores = {row.labels: [Path("labels") / row.labels] for row in rows}
    for index, row in enumerate(rows):
        if row.kind != "blind":
            recipe, overrides = row_recipe(row, index, settings, stores)
            config_from_dict(deep_merge(recipe, overrides), file=f"demo.yaml ablation row {row.name!r}",
                             check_paths=False)
    return rows


def train_row(row: Row, index: int, out: Path, settings, teacher, stores: dict[str, list[Path]], reuse: dict,
              resume: bool):
    """The trained model of ``row`` (the ``index``-th row of the plan, trained by :func:`row_recipe`). A row
    that starts from the seed's teacher (every student, the continued teacher) is retrained when the teacher
    was: its configuration names the teacher's folder, not its weights."""
    from .config import deep_merge
    from .demo import train_recipe

    if row.kind == "teacher" and not row.overrides:
        return teacher
    if row.kind == "student" and row.overrides == {} and row.labels == "clean" and "student" in reuse:
        return reuse["student"]
    recipe, overrides = row_recipe(row, index, settings, stores)
    from_teacher = deep_merge(recipe, overrides)["model"]["init"] == f"{settings.teacher['train']['out']}/final"
    return train_recipe(recipe, out, overrides, name=row.name, resume=resume and not (from_teacher and teacher.fresh))


def scene_severities(split: Path) -> np.ndarray | None:
    """The camera-effect severity of every scene of a generated split (``synth.CameraEffects``; None for a
    clean domain), redrawn from the split's seeds in ``synth.json`` (scenes are deterministic by seed)."""
    manifest = json.loads((split.parent / "synth.json").read_text())["splits"].get(split.name)
    domain = DOMAINS.get((manifest or {}).get("domain", ""))
    if domain is None or domain.camera_effects[1] <= 0:
        return None
    return np.array([sample_scene(domain, np.random.default_rng(manifest["seed0"] + i)).camera_effects.severity
                     for i in range(manifest["count"])])


def severity_means(per_image_csv: Path, severity: np.ndarray | None) -> list[float | None] | None:
    """Mean AbsRel per bin of :data:`SEVERITY_BINS` (None: an empty bin) of the images scored in
    ``per_image_csv``, image ``i`` having camera severity ``severity[i]`` (:func:`scene_severities`)."""
    if severity is None or not per_image_csv.is_file():
        return None
    scores = {int(r["index"]): float(r["abs_rel"]) for r in csv.DictReader(per_image_csv.open()) if r["abs_rel"]}
    means = []
    for low, high in zip(SEVERITY_BINS, SEVERITY_BINS[1:]):
        inside = [scores.get(i) for i, s in enumerate(severity)
                  if low <= s < high or (high == SEVERITY_BINS[-1] and s == high)]
        inside = [v for v in inside if v is not None and np.isfinite(v)]  # a skipped image (no valid pixel) has none
        means.append(float(np.mean(inside)) if inside else None)
    return means


def run_ablation(out: Path, settings, progress: bool, reuse: dict | None = None, resume: bool = False) -> dict:
    """Every seed of ``ablation.seeds``: seed ``settings.seed`` in ``out`` (reusing the main run's models),
    the others under ``out/ablation/seed<N>``. Writes ``out/ablation.json`` and ``out/ablation.md``."""
    from .demo import with_seed

    seeds = [int(s) for s in settings.ablation.get("seeds", [settings.seed])]
    per_seed = {}
    for seed in seeds:
        main = seed == settings.seed
        base = out if main else out / "ablation" / f"seed{seed}"
        per_seed[str(seed)] = run_seed(base, with_seed(settings, seed), progress, reuse if main else None, resume)
        summary = {"seeds": seeds, "per_seed": per_seed, "setup": setup_text(settings), "student_row": student_row(settings),
                   "command": "pseudodepth demo --ablation" + (" --quick" if settings.quick else "")}
        (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(summary))
    return summary


# --------------------------------------------------------------------------- tables


def _values(summary: dict, name: str, split: str, metric: str) -> list[float]:
    return [rows[name][split][metric] for rows in summary["per_seed"].values() if name in rows]


def mean_std(values: list[float], fmt: str = ".4f") -> str:
    """``mean ± std`` (sample std over seeds; just the value for one seed)."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def _teacher_name(summary: dict) -> str:
    first = next(iter(summary["per_seed"].values()))
    return next(name for name, row in first.items() if row["group"] == "baselines" and name.startswith("teacher"))


def tables(summary: dict) -> list[rp.Table]:
    """Mean ± std over seeds per row group; per-seed ratios to the teacher; the filter choice on validation."""
    first = next(iter(summary["per_seed"].values()))
    teacher = _teacher_name(summary)
    seeds = list(summary["per_seed"])
    out = []
    header = ["target_test AbsRel ↓", "target_test δ1 ↑", "source_test AbsRel ↓",
              f"target AbsRel / teacher (seeds {', '.join(seeds)})", "zero output (target)"]
    titles = {"baselines": "baselines", "table9": "Table 9 rows (each adds one lever)",
              "pseudo_label_quality": "confidence and edges (each adds one lever to the demo's student)",
              "controls": "controls", "wrong_labels": "wrong pseudo-labels"}
    for group, title in titles.items():
        names = [n for n, r in first.items() if r["group"] == group]
        if not names:
            continue
        rows = []
        for name in names:
            ratio = [a / b for a, b in zip(_values(summary, name, "target_test", "abs_rel"),
                                           _values(summary, teacher, "target_test", "abs_rel"))]
            zero = [rows_[name].get("zero_output_target") for rows_ in summary["per_seed"].values()]
            rows.append([name, mean_std(_values(summary, name, "target_test", "abs_rel")),
                         mean_std(_values(summary, name, "target_test", "delta1"), ".3f"),
                         mean_std(_values(summary, name, "source_test", "abs_rel")),
                         " / ".join(f"{r:.3f}" for r in ratio),
                         "-" if zero[0] is None else " / ".join(f"{100 * z:.0f}%" for z in zero)])
        out.append(rp.Table([title, *header], rows))
    severity = [n for n, r in first.items() if r.get("target_abs_rel_by_severity") and r["group"] != "wrong_labels"]
    if severity:
        bins = list(zip(SEVERITY_BINS, SEVERITY_BINS[1:]))
        rows = []
        for name in severity:
            per_bin = [[r[name]["target_abs_rel_by_severity"][k] for r in summary["per_seed"].values()
                        if name in r and r[name]["target_abs_rel_by_severity"][k] is not None] for k in range(len(bins))]
            rows.append([name, *[mean_std(v) if v else "-" for v in per_bin]])
        out.append(rp.Table(["target_test AbsRel by camera severity", *[f"{a:g}-{b:g}" for a, b in bins]], rows,
                            "Severity of the target camera effects (synth.CameraEffects; 0 = a clean image), "
                            "redrawn from the scenes' seeds; mean ± std over seeds of the per-bin mean AbsRel."))
    wrong = [n for n, r in first.items() if r["group"] == "wrong_labels"]
    if wrong:
        rows = []
        for seed, per in summary["per_seed"].items():
            chosen = min(wrong, key=lambda n: per[n]["target_val"]["abs_rel"])
            rows.append([seed, *[f"{per[n]['target_val']['abs_rel']:.4f}" for n in wrong], chosen,
                         f"{per[chosen]['target_test']['abs_rel']:.4f}"])
        out.append(rp.Table(["seed", *[f"val AbsRel: {n.split('ratio ')[-1]}" for n in wrong],
                             "chosen on target_val", "its target_test AbsRel"], rows,
                            "The filter ratio is chosen on the labeled target validation split, never on the test split."))
    return out


def goals(summary: dict, student: str) -> rp.Table:
    """Per seed: teacher / blind and student / teacher on target_test, student / teacher on source_test."""
    teacher = _teacher_name(summary)
    rows = []
    for seed, per in summary["per_seed"].items():
        t, s, b = per[teacher], per[student], per["image-blind mean map"]
        matched = next((r for n, r in per.items() if n.startswith("compute-matched")), None)
        rows.append([seed, f"{t['target_test']['abs_rel'] / b['target_test']['abs_rel']:.3f}",
                     f"{s['target_test']['abs_rel'] / t['target_test']['abs_rel']:.3f}",
                     "-" if matched is None else f"{s['target_test']['abs_rel'] / matched['target_test']['abs_rel']:.3f}",
                     f"{s['source_test']['abs_rel'] / t['source_test']['abs_rel']:.3f}"])
    return rp.Table(["seed", "teacher / blind (target)", "student / teacher (target)",
                     "student / compute-matched teacher (target)", "student / teacher (source)"], rows,
                    f"AbsRel ratios; the student is {student!r}.")


def setup_text(settings) -> str:
    d, t, s = settings.data, settings.teacher, settings.student
    low, high = DOMAINS["target"].camera_effects
    return (f"Per seed: {d['n_source_train']} labeled source scenes, an unlabeled pool of {d['n_target_unlabeled']} "
            f"target images (camera severity {low:g}-{high:g}) + {d.get('n_source_unlabeled', 0)} clean source-kind "
            f"images, {d['n_source_test']} + {d['n_target_test']} test scenes ({d['size'][0]} x {d['size'][1]}); "
            f"model `{t['model']['init']}`; teacher {t['train']['steps']} steps x {t['train']['batch_size']}; each "
            f"student {s['train']['steps']} steps x {s['train']['batch_size']} (labeled : unlabeled = "
            f"{s['train']['labeled_ratio'][0]} : {s['train']['labeled_ratio'][1]}); input size {settings.input_size}. "
            + (f"The wrong-label students train {wrong['steps']} steps each, with "
               f"{100 * float(wrong.get('area', 0.25)):g}% of every pseudo-label replaced by wrong depth; compare "
               "them with each other. " if (wrong := settings.ablation.get("wrong_labels") or {}).get("steps") else "")
            + "Scored with least-squares scale and shift in disparity per image, metrics in depth.")


def student_row(settings) -> str:
    """The name of the Table 9 row that is the demo's own student (``student: {}`` in ``ablation.rows``)."""
    return next((r["name"] for r in settings.ablation.get("rows", []) if r["student"] == {}),
                settings.ablation.get("rows", [{"name": "-"}])[-1]["name"])


def markdown(summary: dict) -> str:
    """``ablation.md``: the command, the set-up and every table (generated, never typed by hand)."""
    lines = ["# Ablation: the method's evidence on several seeds", "",
             f"Command: `{summary['command']}` (written by `pseudodepth.ablation.run_ablation`).", "",
             summary["setup"], ""]
    for table in [goals(summary, summary["student_row"]), *tables(summary)]:
        lines += [table.markdown(), ""]
    return "\n".join(lines)
