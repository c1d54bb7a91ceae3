"""What makes a checkpoint a complete Hugging Face model folder: the image processor's settings and a model card.

:func:`pseudodepth.models.save_checkpoint` writes ``config.json`` + ``model.safetensors`` and calls
:func:`write_hub_files` for the rest, so every checkpoint the project writes works with the
ecosystem's own client, offline::

    from transformers import pipeline
    depth = pipeline("depth-estimation", model="runs/student/final")(image)["predicted_depth"]

- ``preprocessor_config.json``: ``DPTImageProcessor`` (the processor ``transformers`` uses for Depth
  Anything) set as close to the official ``infer_image`` as it allows: aspect ratio kept, sides a
  multiple of 14, bicubic resampling, ``/255``, ImageNet mean/std, ``size`` = the checkpoint's input
  size. What it cannot reproduce: it resizes with Pillow (the official code uses OpenCV
  ``INTER_CUBIC``), it picks the scale *closest to 1* of the two sides (equal to the official
  "lower bound" whenever the image is larger than the input size on both sides), the pipeline
  upsamples the output bicubically, not bilinearly, and ``transformers`` interpolates DINOv2's
  position embeddings with ``size=`` instead of the official ``scale_factor``. The resulting
  difference is measured by ``bench/hf_pipeline.py``.
- ``README.md``: a model card (front matter for the Hub; teacher, data, recipe, metrics, licence),
  filled from the checkpoint's ``pseudodepth.json`` metadata and its training ``config.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, PATCH

PREPROCESSOR_CONFIG = "preprocessor_config.json"
MODEL_CARD = "README.md"
META = "pseudodepth.json"
DEFAULT_INPUT_SIZE = 518
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers stores ``resample``
LICENCE_KEYS = ("licence", "license", "licenses", "licences")


def preprocessor_config(input_size: int = DEFAULT_INPUT_SIZE) -> dict[str, Any]:
    """``DPTImageProcessor`` settings nearest to the official preprocessing at ``input_size``."""
    if input_size < PATCH or input_size % PATCH:
        raise ValueError(f"input size must be a positive multiple of {PATCH}, got {input_size}")
    return {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": input_size, "width": input_size},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": PATCH,
        "resample": PIL_BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN.tolist(),
        "image_std": IMAGENET_STD.tolist(),
        "do_pad": False,
        "size_divisor": None,
    }


def licence_of(meta: dict) -> str | None:
    """The licence a ``pseudodepth.json`` states (``licence``/``license``/``licenses`` key), as text, or None."""
    for key in LICENCE_KEYS:
        value = meta.get(key)
        if value:
            if isinstance(value, (list, tuple)):
                return ", ".join(str(v) for v in value)
            if isinstance(value, dict):  # e.g. {"id": "cc-by-nc-4.0", "reason": "..."}
                return str(value.get("id") or value.get("name") or json.dumps(value, sort_keys=True))
            return str(value)
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def teachers(config: dict) -> list[str]:
    """The teacher SPEC of every label store a training config's ``data.unlabeled`` names (from its ``store.json``)."""
    found = []
    for spec in (config.get("data") or {}).get("unlabeled") or []:
        root = spec.get("root") if isinstance(spec, dict) else None
        if root and (model := _read_json(Path(root) / "store.json").get("model")):
            found.append(str(model))
    return list(dict.fromkeys(found))


def resolve_licence(meta: dict, config: dict) -> str:
    """The checkpoint's own licence field, else its teacher's (a pseudodepth checkpoint folder), else 'unknown'."""
    if (own := licence_of(meta)) is not None:
        return own
    for teacher in teachers(config):
        if (found := licence_of(_read_json(Path(teacher) / META))) is not None:
            return f"{found} (inherited from the teacher {teacher})"
    return "unknown"


def _source_line(spec: dict) -> str:
    where = spec.get("root") or spec.get("path") or spec.get("index") or ""
    weight = f", weight {spec['weight']:g}" if isinstance(spec.get("weight"), (int, float)) else ""
    return f"- `{spec.get('type', '?')}`: `{where}`{weight}"


def _metrics_lines(metrics: dict) -> list[str]:
    """``{model: {eval set: {metric: value}}}`` (adapt's ``metrics.json``) or ``{eval set: {metric: value}}``."""
    if not metrics:
        return ["Not evaluated yet (`pseudodepth eval --model THIS_FOLDER --data ...`)."]
    nested = all(isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()) for v in metrics.values())
    table = metrics if nested else {"this model": metrics}
    lines = ["| model | eval set | AbsRel ↓ | δ1 ↑ |", "|---|---|---:|---:|"]
    for model, sets in table.items():
        for name, values in sets.items():
            lines.append(f"| {model} | `{name}` | {values.get('abs_rel', float('nan')):.4f} | "
                         f"{values.get('delta1', float('nan')):.3f} |")
    lines += ["", "Zero-shot relative depth: least-squares scale and shift in disparity space per image, then "
                  "metrics in depth (`pseudodepth eval`)."]
    return lines


def model_card(meta: dict, config: dict, input_size: int = DEFAULT_INPUT_SIZE) -> str:
    """The ``README.md`` of a checkpoint folder from its metadata and (optional) training config."""
    licence = resolve_licence(meta, config)
    hub_licence = licence.split(" ")[0].lower() if licence != "unknown" else None
    front = {"library_name": "transformers", "pipeline_tag": "depth-estimation",
             "tags": ["depth-estimation", "depth-anything", "pseudodepth", "relative-depth"]}
    if hub_licence:
        front["license"] = hub_licence
    mode = meta.get("mode", "model")
    name = f"Depth Anything {str(meta.get('version', '')).upper()} {meta.get('size', '')} {mode}".replace("  ", " ")
    data = config.get("data") or {}
    train = config.get("train") or {}
    loss, aug = config.get("loss") or {}, config.get("augment") or {}
    fa, optim, model = config.get("feature_alignment") or {}, config.get("optim") or {}, config.get("model") or {}
    teacher_specs = teachers(config)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", "",
             "Monocular relative depth (affine-invariant disparity: larger = nearer), the architecture of "
             "`transformers`' `DepthAnythingForDepthEstimation` (DINOv2 ViT-14 encoder + DPT head), written by "
             "pseudodepth "
             + (f"after {meta['step']} training steps." if "step" in meta else "."), "",
             "```python", "from transformers import pipeline", "",
             'depth = pipeline("depth-estimation", model="PATH/TO/THIS/FOLDER")',
             'out = depth("image.jpg")  # out["predicted_depth"]: disparity; out["depth"]: an 8-bit image', "```", "",
             "or `pseudodepth predict image.jpg --model PATH/TO/THIS/FOLDER --raw` (the official Depth Anything "
             "preprocessing, OpenCV bicubic resize; the pipeline's Pillow resize gives slightly different numbers).",
             "", "## Teacher and data", ""]
    if teacher_specs:
        lines += [f"- pseudo-labels by the teacher `{t}`" for t in teacher_specs]
    elif mode == "student":
        lines.append("- teacher: not recorded")
    if data.get("labeled"):
        lines += ["", "Labeled sources:", *[_source_line(s) for s in data["labeled"]]]
    if data.get("unlabeled"):
        lines += ["", "Pseudo-labeled sources:", *[_source_line(s) for s in data["unlabeled"]]]
    if not config:
        lines.append("- no training config recorded with this checkpoint")
    lines += ["", "## Recipe", ""]
    if config:
        lines += [f"- mode `{config.get('mode', mode)}`; initialised from `{model.get('init')}`"
                  + (f", encoder from `{model['encoder_from']}`" if model.get("encoder_from") else ""),
                  f"- {train.get('steps')} steps x batch {train.get('batch_size')}"
                  + (f" (labeled : unlabeled = {train['labeled_ratio'][0]} : {train['labeled_ratio'][1]})"
                     if mode == "student" and data.get("labeled") and train.get("labeled_ratio") else "")
                  + f", crops {train.get('crop_size')}, precision {train.get('precision')}, seed {train.get('seed')}",
                  f"- loss: {loss.get('ssi_weight', 1):g} x SSI + {loss.get('gm_weight', 2):g} x gradient matching"
                  + (f"; pseudo-labels drop each image's top {100 * loss.get('drop_top_ratio', 0):g}% losses"
                     if mode == "student" else ""),
                  f"- AdamW, encoder lr {optim.get('encoder_lr')} (decoder x {optim.get('decoder_lr_mult')}), "
                  f"{optim.get('schedule')} schedule"]
        if mode == "student":
            lines += [f"- strong perturbations {'on' if aug.get('strong') else 'off'}, CutMix p = {aug.get('cutmix_p')}",
                      f"- feature alignment {'on (margin ' + str(fa.get('margin')) + ', weight ' + str(fa.get('weight')) + ')' if fa.get('enabled') else 'off'}"]
        if meta.get("config"):
            lines.append(f"- full config: `{meta['config']}`")
    else:
        lines.append("Not recorded.")
    lines += ["", "## Metrics", "", *_metrics_lines(meta.get("metrics") or {}), "", "## Licence", "",
              f"{licence}." + (" Pseudo-labels and students made with a non-commercial teacher inherit its terms."
                               if licence == "unknown" or "nc" in licence.lower() else ""),
              "", "## Preprocessing", "",
              f"`preprocessor_config.json`: `DPTImageProcessor`, input size {input_size} (aspect kept, sides a multiple "
              "of 14, bicubic, ImageNet mean/std).", ""]
    return "\n".join(lines)


def write_hub_files(folder: str | Path, meta: dict, input_size: int | None = None) -> None:
    """Write ``preprocessor_config.json`` and ``README.md`` into a checkpoint folder (``meta``: its pseudodepth.json)."""
    folder = Path(folder)
    size = int(input_size or meta.get("input_size") or DEFAULT_INPUT_SIZE)
    (folder / PREPROCESSOR_CONFIG).write_text(json.dumps(preprocessor_config(size), indent=2, sort_keys=True) + "\n")
    config = _read_yaml(Path(meta["config"])) if meta.get("config") else {}
    (folder / MODEL_CARD).write_text(model_card(meta, config, size), encoding="utf-8")


def update_model_card(folder: str | Path, **fields: Any) -> dict:
    """Add ``fields`` (e.g. ``metrics=...``) to a checkpoint's ``pseudodepth.json`` and rewrite its card."""
    folder = Path(folder)
    meta = {**_read_json(folder / META), **fields}
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    write_hub_files(folder, meta)
    return meta
