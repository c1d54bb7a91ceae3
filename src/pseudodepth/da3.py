"""Depth Anything 3 mono teachers (DA3MONO-LARGE, DA3METRIC-LARGE) on ``DepthAnythingForDepthEstimation``.

The DA3 mono models (ByteDance-Seed/Depth-Anything-3, configs ``da3mono-large.yaml`` and
``da3metric-large.yaml``) are Depth Anything V2 Large with small differences, each handled here:

- plain DINOv2 ViT-L/14 (no camera token, RoPE, QK-norm or registers), out layers [4, 11, 17, 23],
  DPT features 256, out channels [256, 512, 1024, 1024]: ``make_config("v2", "large")``;
- the final LayerNorm has eps 1e-5 (the blocks' norms keep DINOv2's 1e-6);
- no ``mask_token`` and no ``refinenet4.resConfUnit1`` (unused in the forward pass of either
  network; transformers' slots for them are filled with zeros);
- output activation ``exp``: ``predicted_depth = exp(conv3(relu(conv2(up(conv1(x))))))`` is
  **depth**, with no final ReLU;
- a sky head sharing ``output_conv1`` (and its upsampling): ``sky = relu(sky_conv3(relu(sky_conv2(.))))``,
  a pixel is sky where ``sky >= 0.3`` (official ``compute_sky_mask``). :class:`DA3Head` keeps the last
  sky map on ``model.head.sky``.

Hub layout: ``config.json`` with ``{"model_name": "da3mono-large"}`` + ``model.safetensors`` with
``model.backbone.pretrained.*`` (DINOv2) and ``model.head.*`` (DPT); legacy ``.pth`` names are renamed
as the official ``convert_general_state_dict`` does (``module.`` -> ``model.``, ``.net.`` ->
``.backbone.``, ``output_conv2_additional.sky_mask`` -> ``sky_output_conv2``).

Preprocessing (official ``InputProcessor``, ``upper_bound_resize`` at 504): longest side to 504
(cv2 INTER_CUBIC when enlarging, INTER_AREA when shrinking), then each side rounded to the nearest
multiple of 14 by a second resize, ImageNet mean/std (:func:`pseudodepth.preprocess.prepare_da3`).

The project's convention downstream (:mod:`pseudodepth.infer`): disparity = 1 / depth, sky pixels
invalid (NaN). DA3METRIC: metres = focal_px x output / 300 (:func:`metric_depth`), ``focal_px`` the
focal length in pixels of the network-input image (the official ``apply_metric_scaling``: the mean of
fx and fy of the intrinsics of the processed image). A user knows the focal length of the image as
given (:class:`FocalSettings`: ``--focal-px`` or a per-image ``--intrinsics`` CSV); the network input
is that image resized by ``net_w / w`` and ``net_h / h``, so ``focal_net = (fx net_w / w + fy net_h / h) / 2``
(:func:`network_focal`). Without a focal length DA3METRIC's output has no metric scale, and ``predict``
and ``label`` refuse it (:func:`check_focal`).
The any-view models (DA3-Small/Base/Large/Giant, Nested: camera tokens, RoPE, QK-norm, DualDPT)
are refused.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DepthAnythingForDepthEstimation
from transformers.models.depth_anything.modeling_depth_anything import DepthAnythingDepthEstimationHead

from .convert import official_to_hf

MONO_MODELS = {"da3mono-large": "da3mono", "da3metric-large": "da3metric"}
ANY_VIEW = re.compile(r"da3-(small|base|large|giant)(-1\.1)?|da3nested-giant-large(-1\.1)?", re.I)
SKY_THRESHOLD = 0.3  # official compute_sky_mask: non-sky where sky < 0.3
METRIC_FOCAL_SCALE = 300.0  # official apply_metric_scaling
FINAL_NORM_EPS = 1e-5
INPUT_SIZE = 504
# transformers tensors the DA3 checkpoints have no counterpart for (unused in both forward passes)
UNUSED = ("backbone.embeddings.mask_token",
          "neck.fusion_stage.layers.0.residual_layer1.convolution1.weight",
          "neck.fusion_stage.layers.0.residual_layer1.convolution1.bias",
          "neck.fusion_stage.layers.0.residual_layer1.convolution2.weight",
          "neck.fusion_stage.layers.0.residual_layer1.convolution2.bias")
_ANY_VIEW_KEYS = ("camera_token", "cam_enc.", "cam_dec.", "output_conv2_aux", "gs_head.", "q_norm.", "k_norm.")


class DA3Error(ValueError):
    """A model SPEC that cannot be loaded: not a preset, an official .pth or a model folder, a DA3
    any-view model, tensors that do not all map, ... (``pseudodepth.models.ModelSpecError``)."""


class DA3Head(DepthAnythingDepthEstimationHead):
    """DPT output head of the DA3 mono models: ``exp`` depth and a sky map from the shared ``conv1``."""

    def __init__(self, config):
        super().__init__(config)
        features, hidden = config.fusion_hidden_size, config.head_hidden_size
        del self.activation2  # no final ReLU: exp instead
        self.sky_conv2 = nn.Conv2d(features // 2, hidden, kernel_size=3, stride=1, padding=1)
        self.sky_conv3 = nn.Conv2d(hidden, 1, kernel_size=1, stride=1, padding=0)
        self.sky: torch.Tensor | None = None  # (B, H, W) sky score of the last forward pass

    def forward(self, hidden_states: list[torch.Tensor], patch_height, patch_width) -> torch.Tensor:
        hidden = hidden_states[self.head_in_index]
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # fp32 head, as the official code
            x = self.conv1(hidden.float())
            x = F.interpolate(x, (int(patch_height * self.patch_size), int(patch_width * self.patch_size)),
                              mode="bilinear", align_corners=True)
            depth = torch.exp(self.conv3(self.activation1(self.conv2(x))))
            self.sky = torch.relu(self.sky_conv3(torch.relu(self.sky_conv2(x)))).squeeze(1)
        return depth.squeeze(1)


def build_da3(size: str = "large", seed: int = 0) -> DepthAnythingForDepthEstimation:
    """A randomly initialised DA3 mono network of ``size`` (``large`` is the released one; the smaller
    sizes of :data:`pseudodepth.models.ARCHS` are the same architecture scaled down, for tests)."""
    from .models import make_config

    config = make_config("v2", size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
        model.head = DA3Head(config)
    model.backbone.layernorm.eps = FINAL_NORM_EPS
    return model


def _official_name(key: str) -> str:
    """One DA3 hub / legacy name -> its Depth Anything V2 official name (unchanged if outside the model)."""
    key = key.replace("module.", "model.", 1) if key.startswith("module.") else key
    key = key.replace(".net.", ".backbone.").replace("model.all_heads.head", "model.head")
    key = key.replace("output_conv2_additional.sky_mask", "sky_output_conv2")
    if key.startswith("model.backbone.pretrained."):
        return "pretrained." + key[len("model.backbone.pretrained."):]
    if key.startswith("model.head."):
        return "depth_head." + key[len("model.head."):]
    return key


def hub_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DA3 hub / legacy names -> the Depth Anything V2 official names (``pretrained.*``, ``depth_head.*``)."""
    return {_official_name(k): v for k, v in state.items()}


_SKY = {"depth_head.scratch.sky_output_conv2.0.": "head.sky_conv2.",
        "depth_head.scratch.sky_output_conv2.2.": "head.sky_conv3."}


def da3_to_hf(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a DA3 mono state dict onto :func:`build_da3`'s names: (mapped tensors, file names not mapped)."""
    mapped, unexpected = {}, []
    for name, value in state.items():
        key = _official_name(name)
        prefix = next((p for p in _SKY if key.startswith(p)), None)
        if prefix:
            mapped[_SKY[prefix] + key[len(prefix):]] = value
            continue
        try:
            if not key.startswith(("pretrained.", "depth_head.")):
                raise KeyError(key)
            mapped.update(official_to_hf({key: value}))
        except KeyError:
            unexpected.append(name)
    return mapped, unexpected


def is_any_view(names, model_name: str | None = None) -> bool:
    """True for the any-view DA3 models (camera tokens, RoPE/QK-norm, DualDPT), by name or by tensors."""
    if model_name and ANY_VIEW.fullmatch(model_name):
        return True
    return any(marker in name for name in names for marker in _ANY_VIEW_KEYS)


def refuse_any_view(path) -> None:
    raise DA3Error(f"{path}: a Depth Anything 3 any-view model (camera tokens, RoPE, DualDPT head); pseudodepth "
                   "loads only the mono DA3 models: DA3MONO-LARGE or DA3METRIC-LARGE")


def infer_da3_size(state: dict[str, torch.Tensor]) -> str:
    from .models import infer_arch

    official = hub_to_official(state)
    probe = {k: v for k, v in official.items() if k in ("pretrained.cls_token", "depth_head.scratch.output_conv1.weight")
             or k.startswith("pretrained.blocks.")}
    return infer_arch(probe)


def load_da3_state(state: dict[str, torch.Tensor], path, kind: str) -> DepthAnythingForDepthEstimation:
    """Build the network for a DA3 mono state dict and load every tensor (refusing partial matches)."""
    from .models import ModelInfo, _finish, check_keys

    if is_any_view(state):
        refuse_any_view(path)
    size = infer_da3_size(state)
    model = build_da3(size)
    mapped, unexpected = da3_to_hf(state)
    for name in UNUSED:
        mapped.setdefault(name, torch.zeros_like(model.state_dict()[name]))
    try:
        missing, extra = model.load_state_dict(mapped, strict=False)
    except RuntimeError as err:
        raise DA3Error(f"{path}: tensor shapes do not match the DA3 {size} architecture ({err})") from None
    check_keys(path, list(missing), unexpected + list(extra), f"the DA3 mono {size} architecture")
    return _finish(model, ModelInfo(kind, size, str(path)))


def read_da3_config(path: Path) -> str | None:
    """The ``model_name`` of a DA3 hub folder's ``config.json`` (None when it is not a DA3 folder)."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = raw.get("model_name") if isinstance(raw, dict) else None
    return name.lower() if isinstance(name, str) and name.lower().startswith("da3") else None


def load_da3_folder(path: Path, model_name: str) -> DepthAnythingForDepthEstimation:
    """A DA3 hub folder (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    if ANY_VIEW.fullmatch(model_name):
        refuse_any_view(path)
    if model_name not in MONO_MODELS:
        raise DA3Error(f"{path}/config.json: unknown DA3 model_name {model_name!r}; expected one of "
                       f"{sorted(MONO_MODELS)}")
    if not (path / "model.safetensors").is_file():
        raise DA3Error(f"{path}: no model.safetensors; only safetensors weights are loaded (no pickles)")
    return load_da3_state(load_file(path / "model.safetensors"), path, MONO_MODELS[model_name])


def is_da3_state(state: dict) -> bool:
    """A legacy DA3 ``.pth`` state dict (DA3 hub names rather than the Depth Anything V1/V2 ones)."""
    return any(k.startswith(("model.backbone.", "module.backbone.", "model.net.", "module.net.", "model.head.",
                             "model.all_heads."))
               for k in state)


def kind_of_name(name: str) -> str:
    """'da3metric' for DA3METRIC file names, else 'da3mono'."""
    return "da3metric" if "metric" in name.lower() else "da3mono"


def to_disparity(depth: torch.Tensor, sky: torch.Tensor | None) -> torch.Tensor:
    """The project's convention: disparity = 1 / depth, NaN (invalid) where the sky head says sky."""
    disparity = 1.0 / depth.float()
    if sky is not None:
        disparity = torch.where(sky.float() >= SKY_THRESHOLD, torch.full_like(disparity, float("nan")), disparity)
    return disparity


def metric_depth(output: torch.Tensor, focal_px: float) -> torch.Tensor:
    """DA3METRIC output -> metres: ``focal_px * output / 300`` (focal of the network-input image, pixels)."""
    return output * (float(focal_px) / METRIC_FOCAL_SCALE)


# ----------------------------------------------------------------------------- DA3METRIC's focal length


class FocalError(ValueError):
    """An image whose focal length is not known (the row's or the command's one-line reason)."""


@dataclass(frozen=True)
class FocalSettings:
    """The focal length that gives DA3METRIC its metres: one for every image, or per image from a CSV.

    ``focal_px``: fx = fy in pixels of the images as given (after EXIF orientation), ``--focal-px``.
    ``intrinsics``: a CSV file of ``image,fx[,fy]`` lines (``--intrinsics``), ``image`` the path relative
    to the image folder (``label``) or the file's name / path as given (``predict``); a first line that is
    not numbers is a header. Part of the teacher fingerprint.
    """

    focal_px: float | None = None
    intrinsics: str | None = None

    def check(self) -> None:
        if (self.focal_px is None) == (self.intrinsics is None):
            raise ValueError("give the focal length once: --focal-px F or --intrinsics FILE, not both")
        if self.focal_px is not None and not (self.focal_px > 0 and self.focal_px < float("inf")):
            raise ValueError(f"--focal-px must be a positive number of pixels, got {self.focal_px}")
        if self.intrinsics is not None:
            _read_intrinsics(str(Path(self.intrinsics).resolve()))

    def as_dict(self) -> dict:
        if self.focal_px is not None:
            return {"focal_px": float(self.focal_px)}
        path = Path(self.intrinsics).resolve()
        return {"intrinsics": str(path), "intrinsics_sha256": _sha256(path)}

    def for_image(self, *names: str) -> tuple[float, float]:
        """(fx, fy) in pixels of the image known under any of ``names``; :class:`FocalError` if none is listed."""
        if self.focal_px is not None:
            return float(self.focal_px), float(self.focal_px)
        table = _read_intrinsics(str(Path(self.intrinsics).resolve()))
        for name in names:
            if name in table:
                return table[name]
        raise FocalError(f"no focal length for this image in {self.intrinsics} (looked up as "
                         f"{', '.join(repr(n) for n in dict.fromkeys(names))})")

    def describe(self) -> str:
        return f"--focal-px {self.focal_px:g}" if self.focal_px is not None else f"--intrinsics {self.intrinsics}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _read_intrinsics(path: str) -> dict[str, tuple[float, float]]:
    """``image,fx[,fy]`` lines -> {image: (fx, fy)}; one-line errors naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: --intrinsics must be a CSV file of image,fx[,fy] lines")
    table = {}
    with open(path, newline="") as f:
        for number, line in enumerate(csv.reader(f), start=1):
            if not line or not "".join(line).strip():
                continue
            try:
                values = [float(x) for x in line[1:]]
            except ValueError:
                if number == 1:
                    continue  # header
                raise ValueError(f"{path}:{number}: expected image,fx[,fy] with numbers, got {','.join(line)!r}") from None
            if len(values) not in (1, 2) or not all(0 < v < float("inf") for v in values):
                raise ValueError(f"{path}:{number}: expected image,fx[,fy] with positive focal lengths in pixels, "
                                 f"got {','.join(line)!r}")
            table[line[0].strip()] = (values[0], values[-1])
    if not table:
        raise ValueError(f"{path}: no image,fx[,fy] lines")
    return table


def network_focal(fx: float, fy: float, image_size: tuple[int, int], network_size: tuple[int, int]) -> float:
    """Focal length in pixels of the network input: ``(fx net_w / w + fy net_h / h) / 2``.

    ``image_size`` and ``network_size`` are (height, width); the mean of fx and fy is the official
    ``apply_metric_scaling``'s focal."""
    (h, w), (nh, nw) = image_size, network_size
    return 0.5 * (fx * nw / w + fy * nh / h)


def metres_from_disparity(disparity: torch.Tensor, focal_net: float) -> torch.Tensor:
    """DA3METRIC in the project's convention (disparity = 1 / output, NaN on sky) -> metres, NaN on sky."""
    return metric_depth(1.0 / disparity.float(), focal_net)


def check_focal(version: str, spec, focal: FocalSettings | None, aligned: bool = False) -> None:
    """Refuse, in one line, a DA3METRIC teacher without a metric scale and a focal length without DA3METRIC."""
    if version == "da3metric" and focal is None and not aligned:
        raise ValueError(f"{spec}: DA3METRIC gives metres only with the focal length of the images (metres = focal "
                         "* output / 300): pass --focal-px F or --intrinsics FILE (pixels of the images as given), "
                         "or --align-to SPARSE; for relative depth use DA3MONO-LARGE")
    if focal is not None and version != "da3metric":
        raise ValueError(f"{focal.describe()} applies only to a DA3METRIC teacher (metres = focal * output / 300); "
                         f"{spec} is a {version} model")
    if focal is not None and aligned:
        raise ValueError(f"{focal.describe()} and --align-to both set the metric scale; use one of them")
    if focal is not None:
        focal.check()
