"""``pseudodepth train CONFIG.yaml``: teacher and student training with the Depth Anything recipe.

One readable loop (:func:`train`, nanoGPT style); data, model, losses and schedule are built by the
small functions above it and passed in.

- **teacher** (``mode: teacher``): labeled batches only, ``L = ssi + 2 gm`` with no filtering.
- **metric** (``mode: metric``): V2's ``metric_depth`` fine-tuning: depth in metres, a head ending in
  ``sigmoid * max_depth``, the SiLog loss (lambda 0.5) over every valid pixel of the batch within
  ``[min_depth, max_depth]``. Labeled images and, optionally, metric pseudo-labels (``label
  --align-to``) in the same 1 : 2 split as the student; the pseudo-labeled images get the strong
  perturbations and CutMix (their metric targets mix with the same box).
- **student** (``mode: student``): each step one labeled batch and one unlabeled batch (1 : 2);
  without labeled sources (V2's setting) each step is one unlabeled batch of ``train.batch_size``.
  Unlabeled images get strong perturbations and CutMix (p = 0.5) on the tensors in the step; the
  targets are the teacher's pseudo-labels of the clean images; the unlabeled loss drops each
  image's top 10% losses (V2). With ``feature_alignment.enabled`` the student encoder's last-layer
  patch tokens on the unlabeled images it saw (perturbed and CutMixed; the frozen encoder sees the
  same images) are pulled towards the frozen encoder's (``1 - cos``, patches above the 0.85 margin
  ignored). The step loss is the mean over all images
  of the batch: ``(n_l L_labeled + n_u L_unlabeled) / (n_l + n_u) + w_fa L_fa``.

Reproducibility and resume: every random draw is a function of ``(seed, step, rank)`` - the data
order (a weighted, shuffled index list per epoch, sharded over ranks: :mod:`pseudodepth.data.sampling`),
the crops and flips (``DepthDataset`` seeded per epoch), the perturbations and CutMix boxes (a
``torch.Generator`` per step). A checkpoint therefore only needs the weights, the optimiser state and the step; ``--resume``
replays the remaining steps exactly as an uninterrupted run would.

Shard sources: ``data.unlabeled`` may instead be one WebDataset export of a label store
(``{type: shards, index: shards/index.json}``, from ``pseudodepth shards``), streamed by
:class:`pseudodepth.shards.ShardDataset` through a plain ``DataLoader``
(:class:`pseudodepth.data.sampling.ShardBatches`):
each epoch the shard list is permuted and dealt to ranks, then to data-loader workers, so no
sample is read twice in an epoch. An epoch lasts as many steps as the rank with the fewest full
batches has (every rank computes all ranks' counts from the deterministic assignment, no
collective needed); the other ranks leave their last batches unread. The stream is a function of
``(seed, epoch, rank, world, train.workers)``, so resume is exact too, given the same world size
and ``train.workers``: the epoch holding the resumed step is re-read from its start and its
already consumed batches are decoded and dropped (a cost of up to one epoch of reading on this
rank, none of training).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP (NCCL on GPU,
gloo on CPU), each rank reads its own shard, and rank 0 alone saves and logs. The frozen encoder
of feature alignment stays outside DDP.

Outputs in ``train.out``: ``config.yaml``, ``log.csv``, ``checkpoints/step_XXXXXX/`` (a model SPEC
+ ``trainer.pt``, :mod:`pseudodepth.checkpoints`) and ``final/`` (a model SPEC for ``predict`` / ``label`` / ``eval``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pseudodepth import losses
from pseudodepth.config import TrainConfig, load_config, resolve_model, resolve_source
from pseudodepth.checkpoints import checkpoint_dir, latest_checkpoint, load_training_state, save_training_state
from pseudodepth.data import DepthDataset, make_source, normalize_imagenet, split_batch_size, strong_perturbation
from pseudodepth.data.sampling import ShardBatches, StepBatches, WeightedSources
from pseudodepth.infer import autocast
from pseudodepth.licences import trained_licence
from pseudodepth.interrupt import DeferredInterrupt, Interrupted, ignore_in_worker
from pseudodepth.models import ARCHS, DEFAULT_SEED, PRESETS, head_outputs, is_metric, load_encoder_state, load_model, \
    max_depth_of, model_info, save_checkpoint, set_max_depth
from pseudodepth.models import build_model as build_preset
from pseudodepth.shards import ShardDataset, ShardError, make_shard_dataset



# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, world, torch.device(device))


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed that is a function of ``(seed, step, rank, stream)`` only."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch's global generators (the loop itself draws from per-step generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data


def build_data(specs: list[dict], config: TrainConfig, normalize: bool) -> WeightedSources:
    """The datasets of one data section (sources of :func:`pseudodepth.data.make_source` + ``weight``);
    targets in metres in ``mode: metric``, normalised disparity otherwise."""
    datasets, weights = [], []
    target = "metric" if config.mode == "metric" else "relative"
    for spec in specs:
        spec = resolve_source(spec, config.base_dir)
        weights.append(float(spec.pop("weight", 1.0)))
        source = make_source(spec)
        datasets.append(DepthDataset(source, train=True, crop_size=config.train.crop_size, normalize=normalize,
                                     flip_p=config.augment.flip_p, seed=config.train.seed, target=target))
    return WeightedSources(datasets, weights)


def make_batches(data: WeightedSources, batch_size: int, config: TrainConfig, stream: int, start: int,
                 ctx: Dist, name: str) -> DataLoader:
    sampler = StepBatches(data, batch_size, config.train.seed * 1000 + stream, start, config.train.steps,
                          ctx.rank, ctx.world, name)
    workers = config.train.workers
    return DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=ctx.device.type == "cuda",
                      prefetch_factor=2 if workers else None, persistent_workers=False, worker_init_fn=ignore_in_worker)


def build_unlabeled(config: TrainConfig, ctx: Dist) -> WeightedSources | ShardDataset:
    """``data.unlabeled``: label stores behind :class:`WeightedSources`, or the one shard export the
    config allows, as this rank's :class:`ShardDataset` (images in [0, 1]: perturbations come first)."""
    specs = config.data.unlabeled
    if (confidence := config.loss.confidence) is not None:  # low-confidence pixels become invalid in the source
        specs = [{**s, "min_confidence": float(confidence["min"])} for s in specs]
    if specs[0]["type"] != "shards":
        return build_data(specs, config, normalize=False)
    spec = resolve_source(specs[0], config.base_dir)
    spec.pop("weight", None)  # validated to be 1: a stream is read whole each epoch
    return make_shard_dataset(spec, crop_size=config.train.crop_size, normalize=False,
                              flip_p=config.augment.flip_p, seed=config.train.seed, rank=ctx.rank,
                              world_size=ctx.world)


# ----------------------------------------------------------------------------- model


def patch_tokens(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The encoder's last feature map (the deepest layer the DPT head reads), patch tokens only: B x N x C."""
    return backbone(pixel_values=pixel_values).feature_maps[-1][:, 1:]


@dataclass
class Forward:
    """One training forward pass: the head's output before and after its final activation (B x H x W,
    float32) and, when asked, the encoder's last-layer patch tokens of images ``[align_from:]``."""

    pre_activation: torch.Tensor
    depth: torch.Tensor
    tokens: torch.Tensor | None


class DepthAndFeatures(nn.Module):
    """What DDP wraps: one pass of the network that returns depth and, from the same encoder pass,
    the patch tokens that feature alignment compares (no second, clean encoder pass).

    The head runs in float32 (``models.head_outputs``) whatever the autocast precision.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, align_from: int | None = None) -> Forward:
        model = self.model
        maps = model.backbone(pixel_values=images).feature_maps
        patch = model.config.patch_size
        ph, pw = images.shape[-2] // patch, images.shape[-1] // patch
        pre, depth = head_outputs(model.head, model.neck(maps, ph, pw), ph, pw)
        tokens = maps[-1][align_from:, 1:] if align_from is not None else None
        return Forward(pre, depth, tokens)


def build_model(config: TrainConfig) -> nn.Module:
    """``model.init`` (architecture + decoder), its encoder replaced by ``model.encoder_from``'s if set.

    A preset ``init`` is a fresh, deterministically initialised network (``models.build_model``);
    a model file or folder keeps its trained decoder.
    """
    init = resolve_model(config.model.init, config.base_dir)
    if config.model.init_seed is not None and init in PRESETS:
        model = build_preset(*PRESETS[init], seed=config.model.init_seed, source=init)
    else:
        model = load_model(init, version=config.model.version)
    if model.config.pseudodepth["version"].startswith("da3"):
        raise ValueError(f"model.init = {init}: a Depth Anything 3 model predicts depth, not disparity; use it as "
                         "a teacher (`pseudodepth label`) and train a Depth Anything student from its labels")
    if config.mode == "metric":
        model = metric_model(model, config)
    if config.model.encoder_from:
        load_encoder(model.backbone, config.model.encoder_from, "model.encoder_from", config)
    model.config.pseudodepth["licence"] = trained_licence(  # a student inherits its teachers' licences
        [init, resolve_model(config.model.encoder_from, config.base_dir)],
        [resolve_source(s, config.base_dir) for s in config.data.unlabeled])
    freeze_unused(model)
    return model.train()


def metric_model(init: nn.Module, config: TrainConfig) -> nn.Module:
    """``mode: metric``'s network: a metric ``init`` as it is (``model.max_depth`` overrides its range), or
    a relative ``init``'s encoder under a fresh metric decoder (the official ``--pretrained-from`` loads
    only the ``pretrained.*`` encoder weights of a relative checkpoint)."""
    if is_metric(init):
        if config.model.max_depth is not None:
            set_max_depth(init, config.model.max_depth)
        return init
    info = model_info(init)
    if info.size not in ARCHS:
        raise ValueError(f"model.init {config.model.init}: a relative model of a non-standard size cannot be turned "
                         "into a metric one; start from a preset or an official checkpoint")
    seed = config.model.init_seed if config.model.init_seed is not None else DEFAULT_SEED
    model = build_preset(info.version, info.size, seed=seed, source=info.source, max_depth=config.model.max_depth)
    model.backbone.load_state_dict(init.backbone.state_dict())
    return model


def load_encoder(backbone: nn.Module, spec: str, key: str, config: TrainConfig) -> None:
    """Copy a pretrained encoder into ``backbone``: any model SPEC, a DINOv2 ``.pth`` or a HF Dinov2 folder."""
    spec = resolve_model(spec, config.base_dir)
    try:
        backbone.load_state_dict(load_encoder_state(spec))
    except RuntimeError as err:
        raise ValueError(f"{key} {spec}: its encoder does not fit model.init {config.model.init} "
                         f"(use the same size): {str(err).splitlines()[0]}") from None


def freeze_unused(model: nn.Module) -> None:
    """Turn off gradients of the weights the forward pass never uses, so DDP needs no unused-parameter search.

    DINOv2's mask token serves masked-image modelling only; the deepest DPT fusion block has no skip
    input, so its first residual unit is never called (as in the official head's ``refinenet4``).
    """
    model.backbone.embeddings.mask_token.requires_grad_(False)
    model.neck.fusion_stage.layers[0].residual_layer1.requires_grad_(False)


def frozen_encoder(config: TrainConfig, model: nn.Module) -> nn.Module:
    """Feature alignment's fixed reference: ``feature_alignment.frozen``'s encoder or a copy of the initial one."""
    encoder = copy.deepcopy(model.backbone)
    if config.feature_alignment.frozen:
        load_encoder(encoder, config.feature_alignment.frozen, "feature_alignment.frozen", config)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


def frozen_tokens(frozen: nn.Module, images: torch.Tensor, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """The frozen encoder's patch tokens of ``images`` (no grad), in ``feature_alignment.precision``
    (``null``: ``train.precision``); float32 B x N x C."""
    precision = config.feature_alignment.precision or config.train.precision
    with torch.no_grad(), torch.autocast(device.type, enabled=False), autocast(device, precision):
        return patch_tokens(frozen, images).float()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: encoder (``encoder_lr``) and decoder = neck + head (``encoder_lr * decoder_lr_mult``).

    ``optim.fused``: the fused implementation (one kernel over all tensors, CPU and CUDA), the same
    update as the default per-tensor loop up to float rounding (4e-7 relative after 20 steps of V2-S)
    in a third of its time on this CPU (``tests/test_train.py``; README, "Training speed")."""
    o = config.optim
    encoder = [p for p in model.backbone.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in model.backbone.parameters()}
    decoder = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": encoder, "lr": o.encoder_lr, "base_lr": o.encoder_lr, "name": "encoder"},
              {"params": decoder, "lr": o.encoder_lr * o.decoder_lr_mult,
               "base_lr": o.encoder_lr * o.decoder_lr_mult, "name": "decoder"}]
    return torch.optim.AdamW(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=o.fused or None)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base lr at ``step``: linear warmup ``(step + 1) / warmup`` for ``step < warmup``,
    then over ``t = (step - warmup) / (steps - warmup)``: poly ``(1 - t) ** power``, linear ``1 - t``,
    or constant ``1``."""
    warmup, total = config.optim.warmup_steps, config.train.steps
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if config.optim.schedule == "poly":
        return (1 - t) ** config.optim.power
    if config.optim.schedule == "linear":
        return 1 - t
    return 1.0


# ----------------------------------------------------------------------------- logging


class CsvLog:
    """``log.csv``: one row per logged step; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        rows = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


TEACHER_COLUMNS = ["step", "loss", "labeled_loss", "labeled_ssi", "labeled_gm", "output_anchor", "zero_share",
                   "lr_encoder", "lr_decoder", "images_per_s"]
STUDENT_COLUMNS = TEACHER_COLUMNS[:5] + ["unlabeled_loss", "unlabeled_ssi", "unlabeled_gm", "dropped_share",
                                         "cutmix_area", "feature_alignment", "unlabeled_zero_share",
                                         ] + TEACHER_COLUMNS[5:]
METRIC_COLUMNS = ["step", "loss", "labeled_silog", "unlabeled_silog", "cutmix_area", "lr_encoder", "lr_decoder",
                  "images_per_s"]
DEAD_SHARE = 0.99  # unlabeled_zero_share above this: the output's final ReLU is off almost everywhere


def dead_output_warning(stats: dict[str, float]) -> str | None:
    """A warning when the student outputs exactly 0 on nearly every pseudo-labeled pixel: its final ReLU
    is off there and those images give no gradient until it recovers (if it does)."""
    share = stats.get("unlabeled_zero_share", stats.get("zero_share", 0.0))
    if share <= DEAD_SHARE:
        return None
    return (f"step {int(stats['step'])}: the model outputs 0 on {100 * share:.1f}% of the training pixels "
            "(its final ReLU is off there, so they give no gradient). loss.output_anchor (default 1.0) lifts "
            "such outputs back; raise it if it was turned off or low, or lower optim.encoder_lr.")


def average_over_ranks(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each logged value over the ranks (identity on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / dist.get_world_size()).tolist()))


# ----------------------------------------------------------------------------- one step's loss


def teacher_loss(net: nn.Module, labeled: dict, config: TrainConfig, ctx: Dist) -> tuple[torch.Tensor, dict]:
    """Labeled images only: ``ssi_weight * L_ssi + gm_weight * L_gm`` (no filtering), plus the output anchor."""
    images, target, valid = (labeled[k].to(ctx.device, non_blocking=True) for k in ("image", "target", "valid"))
    with autocast(ctx.device, config.train.precision):
        out = net(images)
    loss, stats = labeled_term(out.depth, target, valid, config)
    loss, anchor = add_anchor(loss, out.pre_activation, config)
    return loss, {"loss": float(loss.detach()), **{f"labeled_{k}": v for k, v in stats.items()},
                  "output_anchor": anchor, "zero_share": float((out.depth.detach() == 0).float().mean())}


def labeled_term(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, config: TrainConfig):
    w = config.loss
    loss, stats = losses.labeled_loss(pred, target, valid, gm_weight=w.gm_weight / w.ssi_weight)
    return w.ssi_weight * loss, {"loss": w.ssi_weight * stats["loss"], "ssi": stats["ssi"], "gm": stats["gm"]}


def add_anchor(loss: torch.Tensor, pre_activation: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, float]:
    """``loss + loss.output_anchor * losses.output_anchor_loss(pre_activation)`` (see there: it keeps the
    final ReLU alive without moving the optimum of the shift- and scale-invariant losses)."""
    anchor = losses.output_anchor_loss(pre_activation)
    if config.loss.output_anchor > 0:
        loss = loss + config.loss.output_anchor * anchor
    return loss, float(anchor.detach())


def student_loss(net: nn.Module, frozen: nn.Module | None, labeled: dict, unlabeled: dict, step: int,
                 config: TrainConfig, ctx: Dist) -> tuple[torch.Tensor, dict]:
    """One labeled + one unlabeled batch: perturb and CutMix the unlabeled images, filter their losses,
    align the encoder's features of the images the student saw with the frozen encoder's."""
    w, aug = config.loss, config.augment
    generator = torch.Generator().manual_seed(step_seed(config.train.seed, step, ctx.rank, stream=1))
    # [0, 1] RGB: the unlabeled dataset skips normalisation so that the perturbations apply first.
    clean = unlabeled["image"].to(ctx.device, non_blocking=True)
    strong = strong_perturbation(clean, generator, aug.perturbation()) if aug.strong else clean
    n_u, _, height, width = clean.shape
    # CutMix pairs sample i with sample i - 1: with one unlabeled image that is itself, so no CutMix then.
    mask = losses.cutmix_masks(n_u, height, width, generator, device=ctx.device, p=aug.cutmix_p if n_u > 1 else 0.0)
    mixed = losses.apply_cutmix(strong, strong.roll(1, 0), mask)  # image b of sample i: sample i - 1
    n_l = 0 if labeled is None else labeled["image"].shape[0]  # None: pseudo-labels only (V2)

    unlabeled_input = normalize_imagenet(mixed)
    images = unlabeled_input
    if labeled is not None:
        images = torch.cat([labeled["image"].to(ctx.device, non_blocking=True), unlabeled_input])
    align = config.feature_alignment.enabled
    with autocast(ctx.device, config.train.precision):
        out = net(images, align_from=n_l if align else None)
    if align:  # the frozen encoder sees exactly the images the student saw
        reference = frozen_tokens(frozen, unlabeled_input, config, ctx.device)
    pred = out.depth

    loss_l, stats_l = torch.zeros((), device=ctx.device), {}
    if labeled is not None:
        target, valid = labeled["target"].to(ctx.device), labeled["valid"].to(ctx.device)
        loss_l, stats_l = labeled_term(pred[:n_l], target, valid, config)
    pseudo, pseudo_valid = unlabeled["target"].to(ctx.device), unlabeled["valid"].to(ctx.device)
    terms = partial(losses.pseudo_label_terms, gm_weight=w.gm_weight / w.ssi_weight, edge_aware=w.edge_aware)
    loss_u, stats_u = losses.cutmix_loss(pred[n_l:], pseudo, pseudo.roll(1, 0), pseudo_valid,
                                         pseudo_valid.roll(1, 0), mask,
                                         drop_ratio=w.drop_top_ratio, loss_fn=terms)
    loss_u = w.ssi_weight * loss_u
    loss = (n_l * loss_l + n_u * loss_u) / (n_l + n_u)
    loss, anchor = add_anchor(loss, out.pre_activation, config)
    fa = torch.zeros((), device=ctx.device)
    if align:
        fa = losses.feature_alignment_loss(out.tokens.float(), reference.float(), config.feature_alignment.margin)
        loss = loss + config.feature_alignment.weight * fa
    return loss, {
        "loss": float(loss.detach()),
        **{f"labeled_{k}": v for k, v in stats_l.items()},
        "unlabeled_loss": w.ssi_weight * stats_u["loss"], "unlabeled_ssi": stats_u["ssi"],
        "unlabeled_gm": stats_u["gm"], "dropped_share": stats_u["dropped_share"],
        "cutmix_area": stats_u["cutmix_area"], "feature_alignment": float(fa.detach()),
        "output_anchor": anchor, "zero_share": float((pred.detach() == 0).float().mean()),
        "unlabeled_zero_share": float((pred[n_l:].detach() == 0).float().mean()),
    }


def metric_loss(net: nn.Module, labeled: dict | None, unlabeled: dict | None, step: int, max_depth: float,
                config: TrainConfig, ctx: Dist) -> tuple[torch.Tensor, dict]:
    """``mode: metric``: SiLog over the valid pixels (``min_depth <= depth <= max_depth``) of the whole batch.

    Pseudo-labeled images (metric label stores) get the strong perturbations and CutMix; the mixed
    image's target is the two metric labels mixed with the same box."""
    w, aug = config.loss, config.augment
    images, targets, valids, stats = [], [], [], {}
    if labeled is not None:
        images.append(labeled["image"].to(ctx.device, non_blocking=True))
        targets.append(labeled["target"].to(ctx.device))
        valids.append(labeled["valid"].to(ctx.device))
    if unlabeled is not None:
        generator = torch.Generator().manual_seed(step_seed(config.train.seed, step, ctx.rank, stream=1))
        clean = unlabeled["image"].to(ctx.device, non_blocking=True)
        strong = strong_perturbation(clean, generator, aug.perturbation()) if aug.strong else clean
        n_u, _, height, width = clean.shape
        mask = losses.cutmix_masks(n_u, height, width, generator, device=ctx.device, p=aug.cutmix_p)
        images.append(normalize_imagenet(losses.apply_cutmix(strong, strong.roll(1, 0), mask)))
        target, valid = unlabeled["target"].to(ctx.device), unlabeled["valid"].to(ctx.device)
        target, valid = losses.metric_cutmix_target(target, target.roll(1, 0), valid, valid.roll(1, 0), mask)
        targets.append(target)
        valids.append(valid)
        stats["cutmix_area"] = float(mask.float().mean())
    with autocast(ctx.device, config.train.precision):
        pred = net(torch.cat(images)).depth  # the head runs in float32 (models.head_outputs)
    pred, target, valid = pred.float(), torch.cat(targets), torch.cat(valids)
    valid = valid & (target >= w.min_depth) & (target <= max_depth)
    loss = losses.silog_loss(pred, target, valid, w.silog_lambda)
    with torch.no_grad():
        n_l = labeled["image"].shape[0] if labeled is not None else 0
        for name, part in (("labeled", slice(0, n_l)), ("unlabeled", slice(n_l, None))):
            if valid[part].numel():
                stats[f"{name}_silog"] = float(losses.silog_loss(pred[part], target[part], valid[part], w.silog_lambda))
    return loss, {"loss": float(loss.detach()), **stats}


# ----------------------------------------------------------------------------- the loop


def prepare_out(config: TrainConfig, resume: bool, ctx: Dist) -> tuple[Path, Path | None]:
    """Create ``out/``; refuse to overwrite a run unless resuming. Returns (out, checkpoint to resume)."""
    out = config.out_dir
    checkpoint = latest_checkpoint(out) if resume else None
    if not resume and (latest_checkpoint(out) is not None or (out / "final").exists()):
        raise FileExistsError(f"{out}: already holds a training run (checkpoints/ or final/); pass --resume to "
                              "continue it or choose another train.out / --out")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return out, checkpoint


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train a teacher or a student as ``config`` says; returns ``out/final`` (a model SPEC)."""
    ctx = setup_distributed(config.train.device)
    try:
        return _train(config, resume, ctx)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: bool, ctx: Dist) -> Path:
    t = config.train
    student, metric = config.mode == "student", config.mode == "metric"
    seed_everything(step_seed(t.seed, 0, ctx.rank))
    # Data first: a bad dataset fails before any model is loaded.
    labeled_data = build_data(config.data.labeled, config, normalize=True) if config.data.labeled else None
    unlabeled_data = build_unlabeled(config, ctx) if config.data.unlabeled else None
    out, checkpoint = prepare_out(config, resume, ctx)

    model = build_model(config).to(ctx.device)
    frozen = frozen_encoder(config, model).to(ctx.device) if config.feature_alignment.enabled else None
    optimizer = make_optimizer(model, config)
    start = load_training_state(checkpoint, model, optimizer) if checkpoint else 0
    net: nn.Module = DepthAndFeatures(model)
    if ctx.world > 1:
        net = DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if t.compile:  # the compiled modules share the weights: checkpoints still save `model`
        net = torch.compile(net)
        frozen = torch.compile(frozen) if frozen is not None else None

    if labeled_data is not None and unlabeled_data is not None:
        n_l, n_u = split_batch_size(t.batch_size, tuple(t.labeled_ratio))
        if isinstance(unlabeled_data, ShardDataset):
            unlabeled_batches = ShardBatches(unlabeled_data, n_u, config, start, ctx)
        else:
            unlabeled_batches = make_batches(unlabeled_data, n_u, config, 1, start, ctx, "data.unlabeled")
        streams = zip(make_batches(labeled_data, n_l, config, 0, start, ctx, "data.labeled"), unlabeled_batches)
    elif labeled_data is not None:
        streams = ((batch, None) for batch in make_batches(labeled_data, t.batch_size, config, 0, start, ctx,
                                                           "data.labeled"))
    else:  # pseudo-labels only: a V2 student, or mode metric on metric pseudo-labels
        if isinstance(unlabeled_data, ShardDataset):
            only = ShardBatches(unlabeled_data, t.batch_size, config, start, ctx)
        else:
            only = make_batches(unlabeled_data, t.batch_size, config, 1, start, ctx, "data.unlabeled")
        streams = ((None, batch) for batch in only)
    columns = METRIC_COLUMNS if metric else STUDENT_COLUMNS if student else TEACHER_COLUMNS
    log = CsvLog(out / "log.csv", columns, start if checkpoint else None) if ctx.main else None
    bar = tqdm(total=t.steps, initial=start, desc=f"train {config.mode}", unit="step", disable=not ctx.main,
               dynamic_ncols=True)
    seen: list[str] = []
    stop = DeferredInterrupt(enabled=ctx.world == 1)  # Ctrl-C: finish the step, save, then stop
    with stop:
        done = _loop(streams, start, net, frozen, model, optimizer, config, ctx, log, bar, stop, seen)
    bar.close()
    if stop.requested and done < t.steps:  # Ctrl-C
        saved = checkpoint_dir(out, done)
        if done > start and ctx.main and not saved.is_dir():
            save_training_state(out, done, model, optimizer, config)
        elif not saved.is_dir():
            saved = latest_checkpoint(out)
        raise Interrupted(f"saved the checkpoint {saved} after step {done} of {t.steps}" if saved else
                          f"stopped at step {done} of {t.steps}, before the first checkpoint")

    final = out / "final"
    if ctx.main:
        save_checkpoint(model, final, {"step": t.steps, "mode": config.mode, "config": str(out / "config.yaml")})
    if t.debug_dump_weights:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / f"rank{ctx.rank}_weights.pt")
        (out / f"rank{ctx.rank}_samples.txt").write_text("\n".join(seen) + "\n")
    if dist.is_initialized():
        dist.barrier()
    return final


def _loop(streams, start: int, net: nn.Module, frozen: nn.Module | None, model: nn.Module,
          optimizer: torch.optim.Optimizer, config: TrainConfig, ctx: Dist, log: CsvLog | None, bar,
          stop: DeferredInterrupt, seen: list[str]) -> int:
    """Steps ``start`` ... ``train.steps - 1``; returns the number of steps done (fewer after a Ctrl-C)."""
    t, student, metric = config.train, config.mode == "student", config.mode == "metric"
    out = config.out_dir
    warned = False
    tic, images_since = time.perf_counter(), 0
    done = start
    batches = enumerate(streams, start=start)
    while True:
        try:
            step, (labeled, unlabeled) = next(batches)
        except StopIteration:
            return done
        except RuntimeError:
            if stop.requested:  # Ctrl-C in a terminal also stops the DataLoader workers: "exited unexpectedly"
                return done
            raise
        torch.manual_seed(step_seed(t.seed, step, ctx.rank, stream=2))  # any randomness inside the model
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, config)
        if metric:
            loss, stats = metric_loss(net, labeled, unlabeled, step, max_depth_of(model), config, ctx)
        elif student:
            loss, stats = student_loss(net, frozen, labeled, unlabeled, step, config, ctx)
        else:
            loss, stats = teacher_loss(net, labeled, config, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        if t.debug_dump_weights:
            seen += (labeled["path"] if labeled is not None else []) + (unlabeled["path"] if unlabeled is not None else [])

        done = step + 1
        images_since += t.batch_size * ctx.world
        if done % t.log_every == 0 or done == t.steps:
            stats = average_over_ranks(stats, ctx.device)
            elapsed = time.perf_counter() - tic
            stats.update(step=done, lr_encoder=optimizer.param_groups[0]["lr"],
                         lr_decoder=optimizer.param_groups[1]["lr"], images_per_s=images_since / max(elapsed, 1e-9))
            tic, images_since = time.perf_counter(), 0
            if log is not None:
                log.write(stats)
                if (warning := dead_output_warning(stats)) and not warned:
                    tqdm.write(f"warning: {warning}", file=sys.stderr)
                    warned = True
            bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{stats['images_per_s']:.1f}")
        bar.update(1)
        if done % t.save_every == 0 and done < t.steps and ctx.main:
            save_training_state(out, done, model, optimizer, config)
        if stop.requested and done < t.steps:
            return done


# ----------------------------------------------------------------------------- command line


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("config", help="training YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output folder")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--out", default=None, help="override train.out (output folder)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network (train.compile: true): a one-off compilation at the start")
    p.set_defaults(func=run_from_args)
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train CONFIG.yaml [--resume] [--steps N] [--out DIR]`` to a CLI's sub-parsers."""
    return _add_arguments(subparsers.add_parser(
        "train", help="teacher or student training from a YAML config (torchrun for DDP)"))


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments (``config``, ``resume``, ``steps``, ``out``)."""
    overrides: dict = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.out is not None:
        overrides["out"] = str(Path(args.out).resolve())
    if args.compile:
        overrides["compile"] = True
    config = load_config(args.config, {"train": overrides} if overrides else None)
    final = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pseudodepth.train CONFIG.yaml`` (also what ``torchrun -m pseudodepth.train`` runs)."""
    parser = _add_arguments(argparse.ArgumentParser(prog="python -m pseudodepth.train",
                                                    description=__doc__.split("\n")[0]))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ShardError) as err:  # ConfigError is a ValueError
        print(f"pseudodepth train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        from pseudodepth.interrupt import interrupt_line

        print(f"pseudodepth train: {interrupt_line(args, argv, err, prog='python -m pseudodepth.train')}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
