"""Zero-shot relative-depth evaluation of one or several models on one dataset (`pseudodepth eval`).

The protocol is :mod:`pseudodepth.metrics` (least-squares alignment in disparity or depth space,
clipping to the dataset range, masked metrics, mean over images); the datasets, their ranges and
crops come from :mod:`pseudodepth.data` sources. This module only runs the loop::

    from pseudodepth.evaluate import evaluate, format_table

    results = evaluate({"teacher": "depth_anything_v2_vits.pth", "student": "runs/student"},
                       "nyu_mat:nyu_depth_v2_labeled.mat", out_dir="eval_out")
    print(format_table(results))

Each image is read once and every model runs on it. ``OUT/metrics.json`` holds the aggregate of
every model plus the data spec and settings, ``OUT/per_image.csv`` one row per model x image,
``OUT/table.md`` the table of :func:`format_table`.

A model is a SPEC (preset, official ``.pth``, model folder; see :func:`pseudodepth.models.load_model`),
a loaded Depth Anything model, or any callable ``rgb (H x W x 3 uint8) -> H x W prediction`` (for
methods outside this toolkit or precomputed predictions). With ``space="disparity"`` (Depth
Anything, MiDaS) the prediction is an affine-invariant disparity; with ``space="depth"`` it is
treated as depth and aligned in depth space; ``space="metric"`` is the metric protocol: metric
models' metres are scored as they are (no alignment, clipped to the range). A metric model under
``"disparity"`` is aligned as the disparity ``1 / depth``. Several spaces (``space=["disparity",
"metric"]``) put both protocols side by side: one row per model and space, named ``model (space)``;
relative models have no metric row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml
from tqdm import tqdm

from pseudodepth import imageio, infer, metrics
from pseudodepth.data.sources import SOURCE_TYPES, DepthSource, SourceConfigError, make_source
from pseudodepth.models import is_metric, load_model, model_info

__all__ = [
    "CROP_CHOICES",
    "DataSpecError",
    "evaluate",
    "format_table",
    "name_models",
    "parse_data_spec",
    "read_data_spec",
]

ModelLike = Union[str, os.PathLike, torch.nn.Module, Callable[[np.ndarray], Any]]
DataLike = Union[DepthSource, Mapping[str, Any], str]

# Evaluation crops accepted as an override: "dataset" keeps the source's own crop.
CROP_CHOICES = ("dataset", "none", "eigen_nyu", "garg", "eigen")
# Keys of a data spec that configure the evaluation rather than the source constructor.
EVAL_KEYS = ("crop", "kb_crop")
# The positional path of the compact `type:path` form goes to this constructor argument.
_PATH_KEY = {"kitti": "image_root", "nyu_mat": "path"}
# Short aliases accepted in the compact form.
_ALIASES = {"kitti": {"split": "list_file"}}
_SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")

# (column title with the better direction, format) of every metric in the table.
_COLUMNS = {
    "abs_rel": ("AbsRel ↓", ".4f"),
    "sq_rel": ("SqRel ↓", ".4f"),
    "rmse": ("RMSE ↓", ".3f"),
    "rmse_log": ("RMSElog ↓", ".4f"),
    "log10": ("log10 ↓", ".4f"),
    "delta1": ("δ1 ↑", ".3f"),
    "delta2": ("δ2 ↑", ".3f"),
    "delta3": ("δ3 ↑", ".3f"),
    "silog": ("SILog ↓", ".2f"),
}
_HIGHER_IS_BETTER = {"delta1", "delta2", "delta3"}


class DataSpecError(SourceConfigError):
    """A ``--data`` spec that cannot be parsed; the message shows the accepted forms."""


# --------------------------------------------------------------------------- data spec


def _data_spec_help() -> str:
    return ("use 'TYPE:PATH[,key=value...]' (e.g. folder:data/test, nyu_mat:nyu_depth_v2_labeled.mat, "
            "kitti:/data/kitti,split=eigen_test.txt,crop=eigen, diode:/data/diode/val/indoors), "
            f"a .yaml/.json file holding {{type: ..., ...}}, or a folder; TYPE is one of {sorted(SOURCE_TYPES)}")


def _split_options(text: str) -> list[str]:
    """`a,b=1,c=[1,2]` -> ['a', 'b=1', 'c=[1,2]']: split at commas that start a new `key=`."""
    return re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text)


def _compact_spec(text: str) -> dict[str, Any]:
    kind, _, rest = text.partition(":")
    path, *options = _split_options(rest)
    if not path:
        raise DataSpecError(f"data spec {text!r} has no path after '{kind}:'; {_data_spec_help()}")
    spec: dict[str, Any] = {"type": kind, _PATH_KEY.get(kind, "root"): path}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DataSpecError(f"data spec {text!r}: option {option!r} is not key=value; {_data_spec_help()}")
        key = _ALIASES.get(kind, {}).get(key, key)
        spec[key] = yaml.safe_load(value) if value.strip() else ""
    if kind == "kitti":
        spec.setdefault("depth_root", path)
        split = spec.get("list_file")
        if isinstance(split, str) and not os.path.isabs(split) and not os.path.exists(split):
            if (Path(path) / split).is_file():
                spec["list_file"] = str(Path(path) / split)
    return spec


def read_data_spec(text: str | os.PathLike) -> tuple[dict[str, Any], Path | None]:
    """The source config dict of a ``--data`` spec and the folder relative paths are taken from.

    Accepted forms: ``TYPE:PATH[,key=value...]`` (values parsed as YAML scalars/lists; ``PATH``
    is the source's root, ``path`` for ``nyu_mat``, image and depth root for ``kitti``, whose
    ``split=`` is its ``list_file``), a ``.yaml`` / ``.yml`` / ``.json`` file holding the dict
    (relative paths are relative to that file), or a plain folder (``folder`` type). Besides the
    source's own arguments, ``crop`` and ``kb_crop`` set the evaluation crop.
    """
    text = str(text).strip()
    kind = text.partition(":")[0]
    if kind in SOURCE_TYPES:
        return _compact_spec(text), None
    path = Path(text).expanduser()
    if path.suffix.lower() in _SPEC_FILE_SUFFIXES:
        if not path.is_file():
            raise DataSpecError(f"{path}: data spec file not found; {_data_spec_help()}")
        try:
            spec = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except yaml.YAMLError as err:
            raise DataSpecError(f"{path}: not valid YAML/JSON ({err}); {_data_spec_help()}") from None
        if not isinstance(spec, dict) or "type" not in spec:
            raise DataSpecError(f"{path}: must hold a mapping with a 'type' key; {_data_spec_help()}")
        return spec, path.parent
    if path.is_dir():
        return {"type": "folder", "root": text}, None
    if ":" in text:
        raise DataSpecError(f"data spec {text!r}: unknown source type {kind!r}; {_data_spec_help()}")
    raise DataSpecError(f"data spec {text!r} is neither TYPE:PATH, a spec file nor a folder; {_data_spec_help()}")


def _split_eval_keys(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    source_spec = {k: v for k, v in spec.items() if k not in EVAL_KEYS}
    return source_spec, {k: spec[k] for k in EVAL_KEYS if k in spec}


def parse_data_spec(text: str | os.PathLike) -> DepthSource:
    """Build the :class:`DepthSource` of a ``--data`` spec (forms: :func:`read_data_spec`).

    ``crop`` / ``kb_crop`` keys are applied to the source. Unknown types, unknown keys and
    missing files raise errors naming what is allowed.
    """
    spec, base_dir = read_data_spec(text)
    return _build_source(spec, base_dir)


def _build_source(spec: Mapping[str, Any], base_dir: Path | None = None) -> DepthSource:
    source_spec, overrides = _split_eval_keys(spec)
    source = make_source(source_spec, base_dir)
    return _override(source, crop=overrides.get("crop", "dataset"), kb_crop=overrides.get("kb_crop"))


def _override(source: DepthSource, *, min_depth: float | None = None, max_depth: float | None = None,
              crop: str | None = "dataset", kb_crop: bool | None = None) -> DepthSource:
    """The source with the user's evaluation range / crop in place of the dataset's defaults."""
    if crop not in CROP_CHOICES and crop is not None:
        raise DataSpecError(f"unknown evaluation crop {crop!r}; use one of {', '.join(CROP_CHOICES)}")
    changes: dict[str, Any] = {}
    if min_depth is not None:
        changes["min_depth"] = float(min_depth)
    if max_depth is not None:
        changes["max_depth"] = float(max_depth)
    if crop != "dataset":
        changes["eval_crop"] = None if crop in (None, "none") else crop
    if kb_crop is not None:
        if not isinstance(kb_crop, bool):
            raise DataSpecError(f"kb_crop must be true or false, got {kb_crop!r}")
        changes["kb_crop"] = kb_crop
    return dataclasses.replace(source, **changes) if changes else source


def _resolve_data(data: DataLike) -> tuple[DepthSource, Any]:
    """(source, JSON-able description of the spec) of any accepted ``data`` argument."""
    if isinstance(data, DepthSource):
        return data, data.name
    if isinstance(data, Mapping):
        return _build_source(data), dict(data)
    if isinstance(data, (str, os.PathLike)):
        spec, base_dir = read_data_spec(data)
        return _build_source(spec, base_dir), {"text": str(data), **spec}
    raise TypeError(f"data must be a DepthSource, a source dict or a --data spec string, got {type(data).__name__}")


# --------------------------------------------------------------------------- models


def _default_name(spec: str | os.PathLike) -> str:
    path = Path(str(spec).rstrip("/\\"))
    return path.stem if path.suffix in (".pth", ".pt", ".bin") else path.name or str(spec)


def name_models(specs: Sequence[str], names: Sequence[str] | None = None) -> dict[str, str]:
    """``{name: spec}`` for the CLI's ``--model`` / ``--name`` lists.

    Without names each model is called after its file or folder (``depth_anything_v2_vits``,
    ``da-v2-small``); repeated names get ``-2``, ``-3`` suffixes.
    """
    if not specs:
        raise ValueError("give at least one --model")
    if names:
        if len(names) != len(specs):
            raise ValueError(f"got {len(names)} --name for {len(specs)} --model; give one name per model or none")
        if len(set(names)) != len(names):
            raise ValueError(f"--name values must be distinct, got {list(names)}")
        return dict(zip(names, specs))
    named: dict[str, str] = {}
    for spec in specs:
        base = name = _default_name(spec)
        count = 1
        while name in named:
            count += 1
            name = f"{base}-{count}"
        named[name] = str(spec)
    return named


def _describe(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    try:
        return model_info(model).source
    except (AttributeError, TypeError):
        return getattr(model, "__name__", type(model).__name__)


SPACES = ("disparity", "depth", "metric")


def _predictor(model: ModelLike, device: str | torch.device, input_size: int | None, precision: str,
               tta: str | None, version: str | None = None,
               max_depth: float | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], bool | None]:
    """(a function rgb -> raw prediction at the image's resolution, whether it is metric: None if unknown);
    ``version`` applies to official ``.pth`` SPECs."""
    if isinstance(model, (str, os.PathLike)):
        model = infer.fast_layout(load_model(model, version=version, device=device, max_depth=max_depth), precision)
    if isinstance(model, torch.nn.Module):
        model.eval()
        return (lambda rgb: infer.predict(model, rgb, input_size, precision, tta)), is_metric(model)
    if callable(model):
        return model, None
    raise TypeError(f"a model must be a SPEC, a loaded model or a callable rgb -> prediction, "
                    f"got {type(model).__name__}")


# --------------------------------------------------------------------------- evaluation


def _load_sample(source: DepthSource, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb, depth, valid = source.load(index)
    if source.kb_crop:
        try:
            rgb, depth, valid = (np.ascontiguousarray(metrics.kb_crop(a)) for a in (rgb, depth, valid))
        except ValueError as err:
            raise ValueError(f"{source.samples[index].name}: {err}; disable it with kb_crop=false") from None
    return rgb, depth, valid


def _prediction(predict: Callable[[np.ndarray], Any], rgb: np.ndarray, name: str, image: str) -> np.ndarray:
    pred = predict(rgb)
    if hasattr(pred, "detach"):
        pred = pred.detach().float().cpu().numpy()
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 3 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.shape != rgb.shape[:2]:
        raise ValueError(f"model {name!r} returned a {pred.shape} prediction for {image}, whose image is "
                         f"{rgb.shape[0]} x {rgb.shape[1]}; predictions must be at the image's resolution")
    return pred


def evaluate(
    models: Mapping[str, ModelLike],
    data: DataLike,
    *,
    space: str | Sequence[str] = "disparity",
    input_size: int | None = None,
    precision: str = "fp32",
    tta: str | None = None,
    limit: int | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    min_depth: float | None = None,
    max_depth: float | None = None,
    crop: str | None = "dataset",
    kb_crop: bool | None = None,
    version: str | None = None,
    model_max_depth: float | None = None,
) -> dict[str, dict[str, float]]:
    """Zero-shot metrics of every model on ``data``: ``{name: aggregate metrics}``.

    Per image: the model's raw prediction at the image's resolution, least-squares alignment to
    the ground truth in ``space`` over the valid pixels inside the crop and range, clipping to the
    range, metrics (:func:`pseudodepth.metrics.evaluate_image`). The dataset score is the mean over
    images (:func:`pseudodepth.metrics.aggregate`): abs_rel, sq_rel, rmse, rmse_log, log10,
    delta1-3, silog, plus ``n_images`` (averaged) and ``n_skipped`` (no valid pixel).

    ``data`` is a :class:`DepthSource`, a source dict or a ``--data`` spec
    (:func:`read_data_spec`). ``min_depth`` / ``max_depth`` / ``crop`` (one of
    :data:`CROP_CHOICES`; ``"dataset"`` keeps the source's) / ``kb_crop`` override the
    dataset's defaults. ``limit`` evaluates the first N images only. With ``out_dir``, writes
    ``metrics.json``, ``per_image.csv`` and ``table.md`` there.
    """
    if not models:
        raise ValueError("give at least one model to evaluate")
    spaces = [space] if isinstance(space, str) else list(dict.fromkeys(space))
    if not spaces or any(s not in SPACES for s in spaces):
        raise ValueError(f"space must be one or several of {', '.join(SPACES)}, got {space!r}")
    infer.check_settings(precision, tta)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    source, data_spec = _resolve_data(data)
    source = _override(source, min_depth=min_depth, max_depth=max_depth, crop=crop, kb_crop=kb_crop)
    if source.kind != "labeled":
        raise ValueError(f"{source.name} holds pseudo-labels, not ground-truth depth; evaluate on labeled data")
    predictors = {name: _predictor(model, device, input_size, precision, tta, version, model_max_depth)
                  for name, model in models.items()}
    runs = _protocols(predictors, spaces)  # (row name, model name, space, prediction is metric depth)

    count = len(source) if limit is None else min(limit, len(source))
    rows: dict[str, list[dict[str, Any]]] = {run[0]: [] for run in runs}
    for index in tqdm(range(count), desc="eval", unit="img", disable=not progress, dynamic_ncols=True):
        rgb, depth, valid = _load_sample(source, index)
        image = source.samples[index].name
        predictions = {name: _prediction(predict, rgb, name, image) for name, (predict, _) in predictors.items()}
        for row_name, name, run_space, metric_output in runs:
            pred = predictions[name]
            if metric_output and run_space == "disparity":  # a metric model under the relative protocol
                with np.errstate(divide="ignore"):
                    pred = np.where(pred > 0, 1.0 / pred, np.nan)
            scores = metrics.evaluate_image(pred, depth, valid, source.min_depth, source.max_depth,
                                            crop=source.eval_crop, space=run_space)
            rows[row_name].append({"model": row_name, "index": index, "image": image, **scores})

    results = {name: metrics.aggregate(model_rows) for name, model_rows in rows.items()}
    if out_dir is not None:
        settings = {"space": spaces if len(spaces) > 1 else spaces[0], "input_size": input_size, "precision": precision, "tta": tta, "limit": limit,
                    "models": {name: _describe(model) for name, model in models.items()}}
        data_info = {"spec": data_spec, "name": source.name, "n_samples": len(source), "min_depth": source.min_depth,
                     "max_depth": source.max_depth, "crop": source.eval_crop, "kb_crop": source.kb_crop}
        write_outputs(out_dir, results, [row for model_rows in rows.values() for row in model_rows],
                      data_info, settings)
    return results


def _protocols(predictors: Mapping[str, tuple[Callable, bool | None]], spaces: Sequence[str]) -> list[tuple]:
    """``(row name, model name, space, metric output)`` of every evaluation to run.

    A relative model has no metric protocol: asked for it alone, that is an error; beside other
    protocols its metric row is left out."""
    runs = []
    for name, (_, metric) in predictors.items():
        for space in spaces:
            if space == "metric" and metric is False:
                if len(spaces) == 1:
                    raise ValueError(f"model {name!r} predicts relative disparity, which has no metric scale; "
                                     "evaluate it with --space disparity, or add it beside: --space disparity "
                                     "--space metric")
                continue
            runs.append((f"{name} ({space})" if len(spaces) > 1 else name, name, space, bool(metric)))
    return runs


# --------------------------------------------------------------------------- outputs


def _json_safe(value: Any) -> Any:
    """Plain JSON values: paths as strings, inf/NaN as the strings "inf" / "nan"."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return _json_safe(value.item())
    return value


def _csv_value(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def write_outputs(out_dir: str | os.PathLike, results: Mapping[str, Mapping[str, float]],
                  rows: Sequence[Mapping[str, Any]], data: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Write ``metrics.json`` (``{"models": {name: metrics}, "data": ..., "settings": ...}``),
    ``per_image.csv`` (one row per model x image; skipped images have empty metric cells) and
    ``table.md``; each file is replaced atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"models": results, "data": data, "settings": settings}
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"
    imageio.atomic_write_bytes(out / "metrics.json", text.encode())
    fields = ["model", "index", "image", *metrics.METRIC_NAMES, "n_valid"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows([_csv_value(row[field]) for field in fields] for row in rows)
    imageio.atomic_write_bytes(out / "per_image.csv", buffer.getvalue().encode())
    imageio.atomic_write_bytes(out / "table.md", (format_table(results) + "\n").encode())


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table: one row per model, one column per metric (↓ lower / ↑ higher is better).

    With several models the best value of each column is in bold.
    """
    if not results:
        raise ValueError("no results to format")
    present = [m for m in metrics.METRIC_NAMES if all(m in scores for scores in results.values())]
    best: dict[str, float] = {}
    if len(results) > 1:
        for metric in present:
            values = [scores[metric] for scores in results.values()]
            best[metric] = max(values) if metric in _HIGHER_IS_BETTER else min(values)
    header = ["model", *(_COLUMNS[m][0] for m in present), "images"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, scores in results.items():
        cells = [name.replace("|", "\\|")]
        for metric in present:
            cell = format(scores[metric], _COLUMNS[metric][1])
            cells.append(f"**{cell}**" if metric in best and scores[metric] == best[metric] else cell)
        images = str(scores.get("n_images", ""))
        if scores.get("n_skipped"):
            images += f" ({scores['n_skipped']} skipped)"
        cells.append(images)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
