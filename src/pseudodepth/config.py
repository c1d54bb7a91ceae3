"""Training configuration: one YAML file, validated completely before any work starts.

A config is data, not code (like Marigold's YAML per run). :func:`load_config` reads the file into
:class:`TrainConfig` (nested dataclasses, one per YAML section) and rejects, with a message naming
the file, the section and the key:

- an unknown key (the message lists the allowed keys of that section),
- a value of the wrong type or out of range,
- a data folder or model path that does not exist (relative paths resolve against the config
  file's folder).

Sections and their defaults (the Depth Anything V2 recipe)::

    mode: teacher | student | metric
    model: {init: da-v2-small, encoder_from: null, max_depth: null}
    data: {labeled: [{type: folder, root: ..., weight: 1.0}], unlabeled: [{type: label_store, root: ...}]}
    loss: {ssi_weight: 1.0, gm_weight: 2.0, drop_top_ratio: 0.1, edge_aware: false, output_anchor: 1.0,
           silog_lambda: 0.5, min_depth: 0.001}
    augment: {strong: true, cutmix_p: 0.5, flip_p: 0.5, brightness: 0.5, ...}
    feature_alignment: {enabled: false, frozen: null, margin: 0.85, weight: 1.0, precision: null}
    optim: {encoder_lr: 5.0e-6, decoder_lr_mult: 10, weight_decay: 0.01, betas: [0.9, 0.999],
            schedule: poly, warmup_steps: 0, power: 0.9, grad_clip: 1.0, fused: false}
    train: {steps: 20000, batch_size: 12, labeled_ratio: [1, 2], crop_size: 518, precision: fp32,
            seed: 0, workers: 4, log_every: 10, save_every: 1000, out: runs/train, device: auto,
            compile: false}

``mode: metric`` fine-tunes metric depth like V2's ``metric_depth/train.py``: the SiLog loss
(``silog_lambda``) on depth in metres over ``min_depth <= depth <= model.max_depth``, a head ending
in ``sigmoid * max_depth``; ``model.init`` is a relative SPEC (its encoder is kept, the decoder starts
fresh, as the official ``--pretrained-from``) or a metric one (kept whole; ``max_depth`` then defaults
to its own). ``data.labeled`` holds depth in metres; ``data.unlabeled`` may hold metric label stores
(``label --align-to`` or a metric teacher), which get the strong perturbations and CutMix.

Data entries are the source specs of :func:`pseudodepth.data.make_source` plus an optional
``weight`` (how many times the source is drawn per epoch relative to its size: 2.0 = every sample
twice, 0.5 = a random half).

``data.unlabeled`` holds label stores (``{type: label_store, root: labels}``) or one WebDataset
shard export of a label store (``{type: shards, index: shards/index.json}``, written by
``pseudodepth shards``; optional ``shuffle_shards``, ``flip_p``), streamed by
:class:`pseudodepth.shards.ShardDataset`. A stream is read whole, once per epoch, so a shard entry
is the only unlabeled source of its run and takes no ``weight`` other than 1: mixing streams by
weight would need sampling inside tar files. To train on several stores, export them together.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pseudodepth.data.augment import StrongPerturbation
from pseudodepth.data.sources import SOURCE_TYPES
from pseudodepth.models import PRESETS, spec_is_metric

PATCH_SIZE = 14
_SOURCE_PATH_KEYS = ("root", "image_root", "depth_root", "list_file", "path", "index")
UNLABELED_TYPES = ("label_store", "shards")  # shards: a `pseudodepth shards` export (pseudodepth.shards)
SHARD_KEYS = ("type", "index", "weight", "shuffle_shards", "flip_p")


class ConfigError(ValueError):
    """A training config that cannot run; the message names the file, the section and the key."""


# ----------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """``init``: model SPEC or preset of the network trained (its decoder, and encoder unless
    ``encoder_from`` is set); ``encoder_from``: SPEC whose pretrained encoder initialises it;
    ``version``: v1 | v2 for an official ``.pth`` ``init`` whose file name does not say (default V2)."""

    init: str = "da-v2-small"
    encoder_from: str | None = None
    version: str | None = None
    init_seed: int | None = None  # a preset's random initialisation (None: the preset's fixed seed 0)
    max_depth: float | None = None  # mode metric: the head's range in metres (20 indoor, 80 outdoor)


@dataclass
class DataConfig:
    """Labeled ground-truth sources and unlabeled (pseudo-labeled) label stores or one shard export.

    A student may have no labeled source (Depth Anything V2's setting: pseudo-labels only); then
    every image of a batch is pseudo-labeled and ``train.labeled_ratio`` is not used."""

    labeled: list[dict] = field(default_factory=list)
    unlabeled: list[dict] = field(default_factory=list)


@dataclass
class LossConfig:
    """``L = ssi_weight * L_ssi + gm_weight * L_gm``; pseudo-labels drop the top ``drop_top_ratio`` losses.

    ``output_anchor`` weighs ``losses.output_anchor_loss`` on the head's pre-activation output: it keeps
    the final ReLU alive (SSI and GM are shift-invariant, so nothing else holds the output above 0)
    and is 0 at every optimum the other terms can reach with a non-negative output (0 turns it off).
    """

    ssi_weight: float = 1.0
    gm_weight: float = 2.0
    drop_top_ratio: float = 0.1
    edge_aware: bool = False
    output_anchor: float = 1.0
    # {min: X}: pseudo-labeled pixels whose stored confidence (`label --confidence flip|scales`) is below X are
    # dropped before the top-n% filter (label stores, and shard exports of them)
    confidence: dict | None = None
    silog_lambda: float = 0.5  # mode metric: SiLog variance focus (official 0.5)
    min_depth: float = 0.001  # mode metric: pixels nearer than this are not trained on (official 1e-3)


@dataclass
class AugmentConfig:
    """Strong perturbations of unlabeled images (``StrongPerturbation`` fields), CutMix and flips."""

    strong: bool = True
    cutmix_p: float = 0.5
    flip_p: float = 0.5
    # the perturbation defaults are StrongPerturbation's (UniMatch / Depth Anything V1)
    brightness: float = StrongPerturbation.brightness
    contrast: float = StrongPerturbation.contrast
    saturation: float = StrongPerturbation.saturation
    hue: float = StrongPerturbation.hue
    jitter_p: float = StrongPerturbation.jitter_p
    grayscale_p: float = StrongPerturbation.grayscale_p
    blur_p: float = StrongPerturbation.blur_p
    blur_sigma: list[float] = field(default_factory=lambda: list(StrongPerturbation.blur_sigma))

    def perturbation(self) -> StrongPerturbation:
        names = {f.name for f in dataclasses.fields(StrongPerturbation)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        return StrongPerturbation(**{**values, "blur_sigma": tuple(self.blur_sigma)})


@dataclass
class FeatureAlignmentConfig:
    """V1 feature alignment with a frozen encoder (``frozen``: SPEC; default the initial encoder).

    ``precision``: the autocast precision of the frozen encoder's no-grad forward; ``null`` (default)
    follows ``train.precision``. ``bf16`` with ``train.precision: fp32`` keeps the student in fp32 and
    runs only the fixed reference in bf16: about 1.7x faster on a CPU with bf16 instructions
    (avx512_bf16, AMX) and on GPUs (emulated, so slower, on other CPUs); the alignment loss moves by
    at most 4e-4 relative and its gradient by about 1% (``bench/frozen_precision.py``; README,
    "Training speed"). Left out of ``to_dict()`` when null (config.yaml of older runs unchanged).
    """

    enabled: bool = False
    frozen: str | None = None
    margin: float = 0.85
    weight: float = 1.0
    precision: Literal["fp32", "bf16"] | None = None


@dataclass
class OptimConfig:
    """AdamW, encoder lr and decoder lr = ``encoder_lr * decoder_lr_mult``, warmup then decay."""

    encoder_lr: float = 5e-6
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["poly", "linear", "constant"] = "poly"
    warmup_steps: int = 0
    power: float = 0.9
    grad_clip: float = 1.0
    # the fused AdamW kernel: the same update up to float rounding (4e-7 relative after 20 steps), a third of
    # the per-tensor loop's time (about 1% of a V2-S step on a CPU); off by default so that runs reproduce
    # the published tables bit for bit; left out of to_dict() when off
    fused: bool = False


@dataclass
class TrainSection:
    """The loop: steps, per-rank batch, crops, precision, seeding, logging and output folder."""

    steps: int = 20000
    batch_size: int = 12
    labeled_ratio: list[int] = field(default_factory=lambda: [1, 2])
    crop_size: int = 518
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    workers: int = 4
    log_every: int = 10
    save_every: int = 1000
    out: str = "runs/train"
    device: str = "auto"
    compile: bool = False  # torch.compile the network (and the frozen encoder); left out of to_dict() when off
    debug_dump_weights: bool = False  # tests: every rank writes rank{r}_weights.pt and rank{r}_samples.txt


@dataclass
class TrainConfig:
    """A whole training run. ``base_dir`` is the config file's folder (relative paths resolve there)."""

    mode: Literal["teacher", "student", "metric"]
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    feature_alignment: FeatureAlignmentConfig = field(default_factory=FeatureAlignmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def to_dict(self) -> dict:
        """The config as plain YAML-able data, paths absolute (saved as ``out/config.yaml``)."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not f.metadata.get("internal")}
        data["data"] = {kind: [resolve_source(s, self.base_dir) for s in specs]
                        for kind, specs in data["data"].items()}
        data["model"] = {k: (resolve_model(v, self.base_dir) if k in ("init", "encoder_from") else v)
                         for k, v in data["model"].items()}
        frozen = data["feature_alignment"]["frozen"]
        data["feature_alignment"]["frozen"] = resolve_model(frozen, self.base_dir)
        if not data["optim"]["fused"]:  # as compile below: older runs' config.yaml unchanged
            data["optim"].pop("fused")
        if data["feature_alignment"]["precision"] is None:  # as compile below: older runs' config.yaml unchanged
            data["feature_alignment"].pop("precision")
        data["train"]["out"] = str(self.out_dir)
        if not data["train"].get("compile"):  # off: runs saved before the key existed keep the same config.yaml
            data["train"].pop("compile", None)
        return data

    @property
    def out_dir(self) -> Path:
        return resolve_path(self.train.out, self.base_dir)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: nested mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------- paths


def resolve_path(path: str | os.PathLike, base_dir: Path) -> Path:
    """``path`` with ``~`` expanded, relative to ``base_dir`` unless absolute, ``..`` resolved."""
    path = Path(path).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def resolve_model(spec: str | None, base_dir: Path) -> str | None:
    """A model SPEC with relative file/folder paths made absolute; presets unchanged."""
    if spec is None or spec in PRESETS:
        return spec
    return str(resolve_path(spec, base_dir))


def resolve_source(spec: dict, base_dir: Path) -> dict:
    """A data-source spec with its path keys made absolute."""
    return {k: (str(resolve_path(v, base_dir)) if k in _SOURCE_PATH_KEYS and isinstance(v, str) else v)
            for k, v in spec.items()}


# ----------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _section(cls: type, data: Any, where: str, file: Path) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: section {where!r} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{file}: unknown key {key!r} in section {where!r}; "
                              f"allowed keys: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _section(tp, value, name, file)
            continue
        if not _matches(value, tp):
            key = name if where == "top level" else f"{where}.{name}"
            raise ConfigError(f"{file}: {key} must be {_type_name(tp)}, got {value!r}")
        if tp is float or tp == float | None:
            value = None if value is None else float(value)
        if typing.get_origin(tp) is list and typing.get_args(tp)[0] is float:
            value = [float(v) for v in value]
        values[name] = value
    try:
        return cls(**values)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{file}: section {where!r}: {err}") from None


def _require(ok: bool, file: Path, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{file}: {key} {message}")


def _check_model(spec: str | None, key: str, config: TrainConfig, file: Path) -> None:
    if spec is None or spec in PRESETS:
        return
    path = resolve_path(spec, config.base_dir)
    _require(path.exists(), file, key,
             f"= {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing file or folder "
             f"(looked for {path})")


def _check_shard_entry(spec: dict, where: str, n_unlabeled: int, file: Path) -> None:
    """A shard export streams every sample once per epoch: the run's only unlabeled source, weight 1."""
    unknown = sorted(set(spec) - set(SHARD_KEYS))
    _require(not unknown, file, where, f"has unknown key(s) {unknown}; a shard source takes {', '.join(SHARD_KEYS)}")
    _require(isinstance(spec.get("index"), str), file, f"{where}.index",
             "is required: the index.json written by `pseudodepth shards STORE --out DIR` (or DIR)")
    _require(n_unlabeled == 1, file, where,
             "is a shard stream, which must be the only data.unlabeled entry (streams are read whole, not "
             "mixed by weight); export all label stores into one shard set, or list label stores only")
    _require(spec.get("weight", 1.0) == 1, file, f"{where}.weight",
             "must be 1 (or absent) for a shard stream: every sample is read once per epoch")
    _require(isinstance(spec.get("shuffle_shards", True), bool), file, f"{where}.shuffle_shards",
             f"must be true or false, got {spec.get('shuffle_shards')!r}")
    flip_p = spec.get("flip_p", 0.0)
    _require(_matches(flip_p, float) and 0 <= flip_p <= 1, file, f"{where}.flip_p",
             f"is a probability in [0, 1], got {flip_p!r}")


def _check_sources(specs: list[dict], key: str, config: TrainConfig, file: Path, check_paths: bool) -> None:
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        _require(isinstance(spec, dict), file, where, f"must be a mapping with a 'type' key, got {spec!r}")
        kind = spec.get("type")
        if key == "data.unlabeled":
            _require(kind in UNLABELED_TYPES, file, f"{where}.type",
                     f"= {kind!r}: must be 'label_store' (pseudo-labels written by `pseudodepth label`) or "
                     "'shards' (their export by `pseudodepth shards`)")
        elif kind in UNLABELED_TYPES:
            raise ConfigError(f"{file}: {where}.type {kind!r} holds pseudo-labels; list it under data.unlabeled")
        else:
            _require(kind in SOURCE_TYPES, file, f"{where}.type",
                     f"= {kind!r} is not a source type; use one of {', '.join(sorted(SOURCE_TYPES))}")
        weight = spec.get("weight", 1.0)
        _require(_matches(weight, float) and weight > 0, file, f"{where}.weight", f"must be a number > 0, got {weight!r}")
        if kind == "shards":
            _check_shard_entry(spec, where, len(specs), file)
        for path_key in _SOURCE_PATH_KEYS if check_paths else ():
            if isinstance(spec.get(path_key), str):
                path = resolve_path(spec[path_key], config.base_dir)
                if not path.exists():
                    raise ConfigError(f"{file}: {where}.{path_key}: {path} does not exist; fix the path "
                                      f"(relative paths start at {config.base_dir})")


def validate(config: TrainConfig, file: Path, check_paths: bool = True) -> TrainConfig:
    """Ranges and cross-section rules (and, with ``check_paths``, that data and model paths exist);
    raises :class:`ConfigError` naming the key."""
    t, o, loss, aug, fa = config.train, config.optim, config.loss, config.augment, config.feature_alignment
    positive = {"train.steps": t.steps, "train.batch_size": t.batch_size, "train.log_every": t.log_every,
                "train.save_every": t.save_every, "train.crop_size": t.crop_size, "optim.encoder_lr": o.encoder_lr,
                "optim.decoder_lr_mult": o.decoder_lr_mult, "loss.ssi_weight": loss.ssi_weight}
    for key, value in positive.items():
        _require(value > 0, file, key, f"must be > 0, got {value}")
    non_negative = {"train.workers": t.workers, "train.seed": t.seed, "optim.weight_decay": o.weight_decay,
                    "optim.warmup_steps": o.warmup_steps, "optim.power": o.power, "optim.grad_clip": o.grad_clip,
                    "loss.gm_weight": loss.gm_weight, "loss.output_anchor": loss.output_anchor,
                    "feature_alignment.weight": fa.weight}
    for key, value in non_negative.items():
        _require(value >= 0, file, key, f"must be >= 0, got {value}")
    probabilities = {"augment.cutmix_p": aug.cutmix_p, "augment.flip_p": aug.flip_p, "augment.jitter_p": aug.jitter_p,
                     "augment.grayscale_p": aug.grayscale_p, "augment.blur_p": aug.blur_p}
    for key, value in probabilities.items():
        _require(0 <= value <= 1, file, key, f"is a probability in [0, 1], got {value}")
    _require(0 <= loss.drop_top_ratio < 1, file, "loss.drop_top_ratio", f"must be in [0, 1), got {loss.drop_top_ratio}")
    if loss.confidence is not None:
        minimum = loss.confidence.get("min") if isinstance(loss.confidence, dict) else None
        _require(isinstance(loss.confidence, dict) and set(loss.confidence) == {"min"}
                 and isinstance(minimum, (int, float)) and 0 <= minimum <= 1, file, "loss.confidence",
                 f"must be {{min: X}} with 0 <= X <= 1, got {loss.confidence!r}")
        _require(all(isinstance(s, dict) and s.get("type") in ("label_store", "shards") for s in config.data.unlabeled),
                 file, "loss.confidence", "needs label-store or shard sources in data.unlabeled (their confidence maps)")
    _require(-1 <= fa.margin <= 1, file, "feature_alignment.margin", f"is a cosine in [-1, 1], got {fa.margin}")
    _require(t.crop_size % PATCH_SIZE == 0, file, "train.crop_size",
             f"must be a multiple of {PATCH_SIZE} (the ViT patch size), got {t.crop_size}")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), file, "optim.betas",
             f"must be two numbers in [0, 1), got {o.betas}")
    _require(len(t.labeled_ratio) == 2 and min(t.labeled_ratio) > 0, file, "train.labeled_ratio",
             f"must be two positive integers (labeled, unlabeled), got {t.labeled_ratio}")
    _require(len(aug.blur_sigma) == 2 and 0 < aug.blur_sigma[0] <= aug.blur_sigma[1], file, "augment.blur_sigma",
             f"must be [low, high] with 0 < low <= high, got {aug.blur_sigma}")
    _require(t.device == "auto" or t.device.split(":")[0] in ("cpu", "cuda"), file, "train.device",
             f"must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    _require(config.model.version in (None, "v1", "v2"), file, "model.version",
             f"must be v1, v2 or absent, got {config.model.version!r}")
    if config.mode == "metric":
        _require(bool(config.data.labeled or config.data.unlabeled), file, "data",
                 "needs a labeled source (depth in metres) or a metric label store in mode: metric")
        _require(0 <= loss.silog_lambda <= 1, file, "loss.silog_lambda", f"must be in [0, 1], got {loss.silog_lambda}")
        _require(loss.min_depth >= 0, file, "loss.min_depth", f"must be >= 0, got {loss.min_depth}")
        max_depth = config.model.max_depth
        _require(max_depth is None or max_depth > loss.min_depth, file, "model.max_depth",
                 f"must be > loss.min_depth ({loss.min_depth}) metres, got {max_depth}")
        _require(not fa.enabled, file, "feature_alignment.enabled", "is not part of the metric recipe (mode: metric)")
        _require(not any(s.get("type") == "shards" for s in config.data.unlabeled if isinstance(s, dict)), file,
                 "data.unlabeled", "in mode: metric takes metric label stores ({type: label_store, root: ...}), "
                 "not shard exports")
        if config.data.labeled and config.data.unlabeled:
            _require(t.batch_size >= 2, file, "train.batch_size",
                     f"must be >= 2 with labeled and unlabeled data, got {t.batch_size}")
        if check_paths and max_depth is None:
            init = resolve_model(config.model.init, config.base_dir)
            _require(spec_is_metric(init), file, "model.max_depth",
                     f"is required in mode: metric when model.init ({config.model.init}) is a relative model: "
                     "20 for indoor scenes, 80 for driving (the official Hypersim / Virtual KITTI ranges)")
    else:  # a student may have no labeled source: V2's setting, pseudo-labels only
        _require(bool(config.data.labeled) or config.mode == "student", file, "data.labeled",
                 "needs at least one labeled source")
        _require(config.model.max_depth is None, file, "model.max_depth", "applies to mode: metric only")
    if config.mode == "student":
        _require(bool(config.data.unlabeled), file, "data.unlabeled",
                 "needs a label store or shard export in student mode (run `pseudodepth label` first)")
        if config.data.labeled:  # without labeled sources every image of a batch is pseudo-labeled (V2)
            _require(t.batch_size >= 2, file, "train.batch_size",
                     f"must be >= 2 in student mode (labeled + unlabeled images), got {t.batch_size}")
            parts = sum(t.labeled_ratio) if len(t.labeled_ratio) == 2 else 1
            _require(t.batch_size % parts == 0, file, "train.batch_size",
                     f"= {t.batch_size} cannot be split {t.labeled_ratio[0]} : {t.labeled_ratio[1]} (labeled : "
                     f"unlabeled); use a multiple of {parts}")
    elif config.mode == "teacher":
        _require(not config.data.unlabeled, file, "data.unlabeled",
                 "must be empty in teacher mode (the teacher trains on labeled data only); use mode: student")
        _require(not fa.enabled, file, "feature_alignment.enabled",
                 "applies to unlabeled images, so only in mode: student")
    _check_sources(config.data.labeled, "data.labeled", config, file, check_paths)
    _check_sources(config.data.unlabeled, "data.unlabeled", config, file, check_paths)
    if check_paths:
        _check_model(config.model.init, "model.init", config, file)
        _check_model(config.model.encoder_from, "model.encoder_from", config, file)
        _check_model(fa.frozen, "feature_alignment.frozen", config, file)
    return config


def config_from_dict(data: Any, base_dir: str | os.PathLike = ".", file: str | os.PathLike = "<config>",
                     check_paths: bool = True) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from YAML data (``file`` is only used in messages)."""
    file = Path(file)
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping with the sections mode, model, data, ...; got {data!r}")
    _require("mode" in data, file, "mode", "is required: teacher, student or metric")
    config = _section(TrainConfig, data, "top level", file)
    config.base_dir = Path(base_dir).resolve()
    return validate(config, file, check_paths)


def load_config(path: str | os.PathLike, overrides: dict[str, dict] | None = None,
                check_paths: bool = True) -> TrainConfig:
    """Read and validate a training YAML; ``overrides`` like ``{"train": {"steps": 10}}`` apply on top.

    ``check_paths=False`` skips the existence checks of data and model paths (to inspect a config
    written for another machine)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if isinstance(data, dict):
        for section, values in (overrides or {}).items():
            data[section] = {**(data.get(section) or {}), **values}
    return config_from_dict(data, path.parent, path, check_paths)
