"""Every way to get a depth model: presets, official ``.pth``, Hugging Face folders, our checkpoints.

The network is always ``transformers``' ``DepthAnythingForDepthEstimation`` (DINOv2 ViT-14 encoder +
DPT head) with SDPA attention on the backbone. :func:`load_model` is the one way in,
:func:`save_checkpoint` the one way out. A pseudodepth checkpoint *is* a Hugging Face folder
(``config.json`` + ``model.safetensors``) plus ``pseudodepth.json`` with training metadata, so
``transformers`` can load it too.

Official Depth Anything V1 and V2 checkpoints have identical tensor shapes; only the decoder's
input layers differ (V2: evenly spaced, V1: the last four). The *size* is read from the shapes. The
*version* is the ``version=`` argument (``--version v1|v2``) when given; otherwise a ``.pth`` is V1
only under an official V1 name (``depth_anything_vit{s,b,l}14.pth``) and V2 under every other name,
with one line on stderr saying so when the name is not an official one (:func:`resolve_version`).

Loading never returns a partly random model: every tensor of the file must map onto the network and
every tensor of the network must come from the file, else :class:`ModelSpecError` names what is
missing or unexpected. 
Metric models (V2's ``metric_depth``: the same network whose head ends in ``sigmoid * max_depth``
instead of a ReLU, output in metres) are ``transformers``' ``depth_estimation_type="metric"`` with
``max_depth``; its head is exactly the official one (``conv3 -> Sigmoid -> * max_depth``). Official
metric ``.pth`` files are recognised by their name (:func:`official_metric_max_depth`: hypersim 20 m,
vkitti 80 m); ``max_depth=`` overrides.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from . import da3
from .convert import official_to_hf, strip_prefix


@dataclass(frozen=True)
class Arch:
    """One encoder size: DINOv2 width/depth/heads and the DPT head's widths (DESIGN.md section 2)."""

    embed: int
    depth: int
    heads: int
    features: int
    out_channels: tuple[int, int, int, int]
    v2_layers: tuple[int, int, int, int]  # 0-based block indices feeding the DPT head
    swiglu: bool = False

    def v1_layers(self) -> tuple[int, int, int, int]:
        return tuple(range(self.depth - 4, self.depth))  # type: ignore[return-value]


ARCHS: dict[str, Arch] = {
    "small": Arch(384, 12, 6, 64, (48, 96, 192, 384), (2, 5, 8, 11)),
    "base": Arch(768, 12, 12, 128, (96, 192, 384, 768), (2, 5, 8, 11)),
    "large": Arch(1024, 24, 16, 256, (256, 512, 1024, 1024), (4, 11, 17, 23)),
    "giant": Arch(1536, 40, 24, 384, (1536, 1536, 1536, 1536), (9, 19, 29, 39), swiglu=True),
    # Test/demo sizes: the same architecture, scaled down.
    "tiny": Arch(64, 4, 2, 32, (16, 32, 64, 64), (0, 1, 2, 3)),
    "mini": Arch(192, 6, 3, 48, (32, 64, 128, 192), (1, 2, 4, 5)),
}

PRESETS = {
    **{f"da-v2-{size}": ("v2", size) for size in ("small", "base", "large", "giant", "tiny", "mini")},
    **{f"da-v1-{size}": ("v1", size) for size in ("small", "base", "large", "tiny")},
}

DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: stored on ``model.config.pseudodepth`` and in every checkpoint."""

    version: str  # "v1" | "v2" | "da3mono" | "da3metric": output kind, preprocessing and final upsampling
    size: str
    source: str  # the SPEC it came from


ModelSpecError = da3.DA3Error  # one error type for every model SPEC problem (DA3 loading raises it too)


def make_config(version: str, size: str, max_depth: float | None = None) -> DepthAnythingConfig:
    """The ``transformers`` config of an official architecture (``out_indices`` are 1-based there).

    With ``max_depth`` the model is metric: its head ends in ``sigmoid * max_depth`` (metres)."""
    if size not in ARCHS:
        raise ModelSpecError(f"unknown model size {size!r}; expected one of {sorted(ARCHS)}")
    arch = ARCHS[size]
    layers = arch.v2_layers if version == "v2" else arch.v1_layers()
    backbone = Dinov2Config(
        image_size=518,
        patch_size=14,
        hidden_size=arch.embed,
        num_hidden_layers=arch.depth,
        num_attention_heads=arch.heads,
        mlp_ratio=4,
        use_swiglu_ffn=arch.swiglu,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        out_indices=[i + 1 for i in layers],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    backbone._attn_implementation = "sdpa"
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=arch.embed,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(arch.out_channels),
        fusion_hidden_size=arch.features,
        head_hidden_size=32,
        depth_estimation_type="relative" if max_depth is None else "metric",
        max_depth=1.0 if max_depth is None else float(max_depth),
    )


def is_metric(model) -> bool:
    """True for metric models (output in metres), False for relative ones (affine-invariant disparity)."""
    return getattr(getattr(model, "module", model).config, "depth_estimation_type", "relative") == "metric"


def prediction_space(model) -> str:
    """What the model outputs: ``"depth"`` (metres, metric models) or ``"disparity"`` (relative models)."""
    return "depth" if is_metric(model) else "disparity"


def max_depth_of(model) -> float | None:
    """The metric model's ``max_depth`` (metres), None for a relative model."""
    return float(getattr(model, "module", model).config.max_depth) if is_metric(model) else None


def set_max_depth(model, max_depth: float) -> None:
    """Change a metric model's output range (the head computes ``sigmoid * max_depth``)."""
    if not is_metric(model):
        raise ModelSpecError("max_depth applies to metric models only; this model predicts relative disparity")
    if not max_depth > 0:
        raise ModelSpecError(f"max_depth must be > 0 metres, got {max_depth}")
    model = getattr(model, "module", model)
    model.config.max_depth = float(max_depth)
    model.head.max_depth = float(max_depth)


def _official_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's own position-embedding interpolation, as the official Depth Anything code runs it.

    ``transformers`` resizes to an exact ``size=``; DINOv2 uses ``scale_factor=(h0 + 0.1) / M``,
    which samples slightly different positions on non-square inputs. Matching it is what makes our
    outputs equal the official ``infer_image`` to < 1e-3 relative error on real photos.
    """
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return self.position_embeddings
    pos = self.position_embeddings.float()
    side = int(math.sqrt(num_positions))
    h0 = height // self.patch_size + 0.1
    w0 = width // self.patch_size + 0.1
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(h0 / side, w0 / side), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
    return torch.cat((pos[:, :1], grid), dim=1).to(self.position_embeddings.dtype)


def head_outputs(head: torch.nn.Module, hidden_states: list[torch.Tensor], patch_height: int,
                 patch_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPT head in float32 with autocast off: ``(pre_activation, depth)``, both B x H x W.

    ``pre_activation`` is the last convolution's output before the final activation (ReLU for
    relative models, sigmoid x ``max_depth`` for metric ones). Under bf16 autocast the head would
    otherwise round the output to bf16: at the presets' initial output level (~1) a whole map then
    holds a dozen distinct values and the gradient that reaches the last convolution is mostly
    rounding noise. The encoder and neck keep the caller's precision; only the head (a small part
    of the compute) is promoted.
    """
    device_type = hidden_states[head.head_in_index].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        x = head.conv1(hidden_states[head.head_in_index].float())
        x = F.interpolate(x, (int(patch_height * head.patch_size), int(patch_width * head.patch_size)),
                          mode="bilinear", align_corners=True)
        x = head.conv3(head.activation1(head.conv2(x)))
        depth = head.activation2(x) * head.max_depth
    return x.squeeze(1), depth.squeeze(1)


def _fp32_head_forward(self, hidden_states: list[torch.Tensor], patch_height, patch_width) -> torch.Tensor:
    return head_outputs(self, hidden_states, patch_height, patch_width)[1]


def _finish(model: DepthAnythingForDepthEstimation, info: ModelInfo) -> DepthAnythingForDepthEstimation:
    emb = model.backbone.embeddings
    emb.interpolate_pos_encoding = types.MethodType(_official_pos_encoding, emb)
    if not isinstance(model.head, da3.DA3Head):  # the DA3 head has its own (fp32) forward
        model.head.forward = types.MethodType(_fp32_head_forward, model.head)
    model.config.pseudodepth = asdict(info)
    return model.eval()


def build_model(version: str, size: str, seed: int = DEFAULT_SEED, source: str | None = None,
                max_depth: float | None = None):
    """A randomly initialised model; the same ``seed`` gives bit-identical weights every time.

    The encoder keeps ``transformers``' DINOv2 initialisation (truncated normal, as DINOv2). The DPT
    decoder (neck + head) gets PyTorch's default convolution initialisation, as the official head
    has: ``transformers``' ``normal(0, 0.02)`` with zero biases makes the output ~1e-6, and the
    final ReLU can die at the first optimiser step. The last convolution's bias starts at 1 so that
    the final ReLU is alive on every pixel for every seed (with a default bias some seeds start dead).
    With ``max_depth`` the model is metric (sigmoid head, default bias: the output starts mid-range).
    """
    config = make_config(version, size, max_depth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
        for module in [*model.neck.modules(), *model.head.modules()]:
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.reset_parameters()
        if max_depth is None:
            torch.nn.init.ones_(model.head.conv3.bias)
    return _finish(model, ModelInfo(version, size, source or f"da-{version}-{size}"))


# ---------------------------------------------------------------- official .pth


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    """The size name of an official state dict, from its tensor shapes."""
    try:
        embed = state["pretrained.cls_token"].shape[-1]
        features = state["depth_head.scratch.output_conv1.weight"].shape[1]
    except KeyError as err:
        raise ModelSpecError(
            f"missing tensor {err.args[0]!r}: expected an official Depth Anything state dict "
            "(tensors named pretrained.* and depth_head.*)"
        ) from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k)))
    for name, arch in ARCHS.items():
        if (arch.embed, arch.depth, arch.features) == (embed, depth, features):
            return name
    raise ModelSpecError(
        f"unknown architecture: embed dim {embed}, {depth} blocks, DPT features {features}; "
        f"expected one of {[(n, a.embed, a.depth, a.features) for n, a in ARCHS.items()]}"
    )


VERSIONS = ("v1", "v2")
V1_NAME = re.compile(r"depth_anything_vit[sbl]14\.pth")  # the official V1 release names, exactly
V2_NAME = re.compile(r"depth_anything_v2_(metric_(hypersim|vkitti)_)?vit[sblg]\.pth")  # the official V2 release names (relative and metric), exactly


def version_from_name(path: str | Path) -> str | None:
    """'v1' / 'v2' for the official release names, None when the name does not decide."""
    name = Path(path).name
    if V1_NAME.fullmatch(name):
        return "v1"
    if V2_NAME.fullmatch(name):
        return "v2"
    return None


def resolve_version(path: str | Path, version: str | None = None) -> str:
    """The version of an official-layout ``.pth``: ``version`` if given, else from the official name,
    else 'v2' with one line on stderr saying it was assumed (V1 files keep their official name)."""
    if version is not None:
        if version not in VERSIONS:
            raise ModelSpecError(f"--version must be one of {VERSIONS}, got {version!r}")
        return version
    named = version_from_name(path)
    if named is not None:
        return named
    print(f"pseudodepth: {Path(path).name}: not an official Depth Anything file name; loading it as V2 "
          "(pass --version v1 if it is a Depth Anything V1 checkpoint)", file=sys.stderr)
    return "v2"


OFFICIAL_METRIC_DEPTHS = {"hypersim": 20.0, "vkitti": 80.0}  # metric_depth's training ranges (metres)


def official_metric_max_depth(name: str | Path) -> float | None:
    """The max depth of an official V2 metric checkpoint from its file name
    (``depth_anything_v2_metric_hypersim_vits.pth`` -> 20, ``..._metric_vkitti_...`` -> 80), else None."""
    match = re.search(r"metric_(hypersim|vkitti)", Path(name).name, re.IGNORECASE)
    return OFFICIAL_METRIC_DEPTHS[match.group(1).lower()] if match else None


def check_keys(path: str | Path, missing: list[str], unexpected: list[str], what: str) -> None:
    """Refuse a checkpoint whose tensors do not all map onto the network (never a partly random model)."""
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} network tensor(s) missing from the file ({', '.join(missing[:4])}"
                     + (", ..." if len(missing) > 4 else "") + ")")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) in the file ({', '.join(unexpected[:4])}"
                     + (", ..." if len(unexpected) > 4 else "") + ")")
    raise ModelSpecError(f"{path}: does not match {what}: {'; '.join(parts)}; refusing to load a partly random model")


def load_official(path: str | Path, version: str | None = None,
                  max_depth: float | None = None) -> DepthAnythingForDepthEstimation:
    """Load an official Depth Anything V1/V2 ``.pth`` (never unpickles code: ``weights_only=True``).

    Metric checkpoints are recognised by name (:func:`official_metric_max_depth`); ``max_depth``
    overrides their range, or makes any other ``.pth`` load as a metric model (a renamed file)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or corrupt zip
        raise ModelSpecError(f"{path}: cannot read as a PyTorch state dict ({err.__class__.__name__}: {err})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelSpecError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    if da3.is_da3_state(state):  # a legacy Depth Anything 3 .pth (DA3 names, not pretrained.* / depth_head.*)
        return da3.load_da3_state(state, path, da3.kind_of_name(path.name))
    state = strip_prefix(state)
    size = infer_arch(state)
    try:
        mapped = official_to_hf(state)
    except KeyError as err:
        raise ModelSpecError(f"{path}: {err.args[0]}; refusing to load a partly random model") from None
    max_depth = max_depth if max_depth is not None else official_metric_max_depth(path)
    model = build_model(resolve_version(path, version), size, source=str(path), max_depth=max_depth)
    try:
        missing, unexpected = model.load_state_dict(mapped, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ModelSpecError(f"{path}: tensor shapes do not match the official {size} architecture ({err})") from None
    check_keys(path, missing, unexpected, f"the official {size} architecture")
    return model


# ---------------------------------------------------------------- folders (HF and ours)


def version_from_config(config: DepthAnythingConfig) -> str:
    """'v1' when the head reads the encoder's last four blocks, else 'v2'."""
    meta = getattr(config, "pseudodepth", None)
    if isinstance(meta, dict) and meta.get("version") in ("v1", "v2"):
        return meta["version"]
    n = config.backbone_config.num_hidden_layers
    return "v1" if list(config.backbone_config.out_indices) == list(range(n - 3, n + 1)) else "v2"


def read_folder_config(path: Path) -> dict:
    """The raw ``config.json`` of a model folder (a one-line error when absent or not JSON)."""
    if not (path / "config.json").is_file():
        raise ModelSpecError(f"{path}: no config.json; expected a Hugging Face model folder or a pseudodepth checkpoint")
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"{path}/config.json: not readable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ModelSpecError(f"{path}/config.json: expected a JSON object")
    return raw


def load_folder(path: str | Path, version: str | None = None) -> DepthAnythingForDepthEstimation:
    """Load a Hugging Face model folder or a pseudodepth checkpoint (safetensors only, offline).

    Every tensor of ``model.safetensors`` must map onto the network and every network tensor must be
    in the file (checked here, not left to a ``transformers`` warning). ``version`` overrides the
    version read from the config (it decides the final upsampling).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    raw = read_folder_config(path)
    if (model_name := da3.read_da3_config(path)) is not None:
        return da3.load_da3_folder(path, model_name)
    if not (path / "model.safetensors").is_file():
        raise ModelSpecError(f"{path}: no model.safetensors; only safetensors weights are loaded (no pickles)")
    if raw.get("model_type") != "depth_anything":
        raise ModelSpecError(
            f"{path}/config.json: not a Depth Anything config (model_type {raw.get('model_type')!r}, "
            f"model_name {raw.get('model_name')!r}); expected a transformers DepthAnythingForDepthEstimation folder"
        )
    try:
        config = DepthAnythingConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise ModelSpecError(f"{path}/config.json: not a Depth Anything config ({err})") from None
    config.backbone_config._attn_implementation = "sdpa"
    try:
        state = load_file(path / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise ModelSpecError(f"{path}/model.safetensors: cannot read ({err})") from None
    model = DepthAnythingForDepthEstimation(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ModelSpecError(f"{path}: tensor shapes do not match its config.json ({err})") from None
    check_keys(path, missing, unexpected, "the network its config.json describes")
    size = next(
        (n for n, a in ARCHS.items() if (a.embed, a.depth) == (config.backbone_config.hidden_size, config.backbone_config.num_hidden_layers)),
        "custom",
    )
    return _finish(model, ModelInfo(version or version_from_config(config), size, str(path)))


def save_checkpoint(model: DepthAnythingForDepthEstimation, out_dir: str | Path, meta: dict | None = None,
                    input_size: int | None = None) -> Path:
    """Write a model SPEC folder that is also a complete Hugging Face model folder: ``config.json`` +
    ``model.safetensors`` + ``preprocessor_config.json`` + ``README.md`` (model card, :mod:`pseudodepth.hub`)
    + ``pseudodepth.json`` (our metadata, written last: its presence means the folder is complete).

    ``input_size`` (default ``meta["input_size"]`` or 518) is the processor's size for ``transformers.pipeline``."""
    from .hub import write_hub_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(out_dir, safe_serialization=True)
    info = {**dict(getattr(model.config, "pseudodepth", {}) or {}), **(meta or {})}
    if input_size is not None:
        info["input_size"] = int(input_size)
    write_hub_files(out_dir, info)
    (out_dir / "pseudodepth.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return out_dir


# ---------------------------------------------------------------- the one entry point


def load_model(spec: str | Path, version: str | None = None, device: str | torch.device = "cpu",
               max_depth: float | None = None):
    """Load any model SPEC (preset name, official ``.pth``, HF folder, pseudodepth checkpoint), in eval mode.

    ``max_depth`` (metres) sets a metric model's range (``--max-depth``); a preset becomes a randomly
    initialised metric model, an official ``.pth`` loads as metric; a relative folder is refused."""
    spec_s = str(spec)
    if spec_s in PRESETS:
        v, size = PRESETS[spec_s]
        model = build_model(v, size, source=spec_s, max_depth=max_depth)
    else:
        path = Path(spec_s).expanduser()
        if version is not None and version not in VERSIONS:
            raise ModelSpecError(f"--version must be one of {VERSIONS}, got {version!r}")
        if path.is_dir():
            model = load_folder(path, version)
            if max_depth is not None:
                set_max_depth(model, max_depth)
        elif path.is_file() and path.suffix in (".pth", ".pt", ".bin"):
            model = load_official(path, version, max_depth)
        elif path.is_file():
            raise ModelSpecError(f"{path}: unsupported model file; expected an official .pth or a model folder")
        else:
            raise ModelSpecError(
                f"{spec_s!r} is neither a file, a folder nor a preset; presets: {', '.join(sorted(PRESETS))}"
            )
    return model.to(device)


def spec_is_metric(spec: str | Path) -> bool:
    """Whether a SPEC loads as a metric model, without loading it: an official metric file name or a folder
    whose ``config.json`` says ``depth_estimation_type: metric`` (presets are relative)."""
    path = Path(str(spec)).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        try:
            return json.loads((path / "config.json").read_text()).get("depth_estimation_type") == "metric"
        except (OSError, ValueError):
            return False
    return path.is_file() and official_metric_max_depth(path) is not None


def load_encoder_state(spec: str | Path) -> dict[str, torch.Tensor]:
    """The DINOv2 encoder weights of a SPEC, named as ``model.backbone``'s state dict.

    Accepts every model SPEC (its encoder is taken) and the pretrained encoders a student starts
    from: an official DINOv2 ``.pth`` (``dinov2_vits14_pretrain.pth``: ``cls_token``, ``blocks.*``, ...)
    or a Hugging Face ``Dinov2Model`` folder (``facebook/dinov2-small`` downloaded by you).
    """
    path = Path(str(spec)).expanduser()
    if path.is_file() and path.suffix == ".safetensors":  # an encoder state dict (save_encoder's format)
        from safetensors.torch import load_file

        state = load_file(path)
        if not any(k.startswith("embeddings.") for k in state):
            raise ModelSpecError(f"{path}: not an encoder state dict (expected tensors named embeddings.*, "
                                 "encoder.layer.*); save one with pseudodepth.models.save_encoder")
        return state
    if path.is_file() and path.suffix in (".pth", ".pt"):
        state = strip_prefix(torch.load(path, map_location="cpu", weights_only=True))
        if "blocks.0.attn.qkv.weight" in state and "pretrained.cls_token" not in state:
            if any(k.startswith("register_tokens") for k in state):
                raise ModelSpecError(f"{path}: DINOv2 with registers is not the Depth Anything encoder; "
                                     "use the plain dinov2_vit*14_pretrain.pth")
            mapped = official_to_hf({f"pretrained.{k}": v for k, v in state.items() if not k.startswith("head.")})
            return {k[len("backbone."):]: v for k, v in mapped.items()}
    if path.is_dir() and (path / "config.json").is_file():
        if json.loads((path / "config.json").read_text()).get("model_type") == "dinov2":
            from safetensors.torch import load_file

            if not (path / "model.safetensors").is_file():
                raise ModelSpecError(f"{path}: no model.safetensors; only safetensors weights are loaded")
            return {k.removeprefix("dinov2."): v for k, v in load_file(path / "model.safetensors").items()
                    if not k.startswith("pooler")}
    return {k: v for k, v in load_model(spec, version="v2").backbone.state_dict().items()}


def save_encoder(model, path: str | Path) -> Path:
    """Write ``model``'s DINOv2 encoder (``model.backbone``'s state dict) as one safetensors file, the form a
    pretrained encoder is shipped in; ``model.encoder_from`` / ``feature_alignment.frozen`` read it back."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = getattr(model, "module", model).backbone
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(path),
              metadata={"pseudodepth": json.dumps(getattr(model.config, "pseudodepth", {}) or {})})
    return path


def model_info(model) -> ModelInfo:
    meta = getattr(model, "module", model).config.pseudodepth
    return ModelInfo(**{k: meta[k] for k in ModelInfo.__dataclass_fields__})


def fingerprint(model, settings: dict | None = None) -> str:
    """sha256 over every weight (names, shapes, dtypes, bytes), the model's version (it changes the
    output: V1/V2 upsample differently) and the inference settings, 16 hex chars."""
    h = hashlib.sha256()
    model = getattr(model, "module", model)
    meta = getattr(model.config, "pseudodepth", None) or {}
    h.update(json.dumps({"version": meta.get("version")}, sort_keys=True).encode())
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    if is_metric(model):  # the head's max_depth is no tensor
        h.update(f"metric max_depth {max_depth_of(model)!r}".encode())
    h.update(json.dumps(settings or {}, sort_keys=True).encode())
    return h.hexdigest()[:16]
