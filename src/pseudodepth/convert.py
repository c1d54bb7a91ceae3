"""Key mapping between official Depth Anything ``.pth`` state dicts and ``transformers``' model.

Official names (``depth_anything_v2/dpt.py`` + DINOv2)        ``DepthAnythingForDepthEstimation`` names
--------------------------------------------------------     -------------------------------------------
pretrained.cls_token / mask_token / pos_embed                 backbone.embeddings.cls_token / mask_token / position_embeddings
pretrained.patch_embed.proj.*                                 backbone.embeddings.patch_embeddings.projection.*
pretrained.blocks.{i}.norm1/norm2.*                           backbone.encoder.layer.{i}.norm1/norm2.*
pretrained.blocks.{i}.attn.qkv.*  (fused, 3C x C)             ...attention.attention.{query,key,value}.*
pretrained.blocks.{i}.attn.proj.*                             ...attention.output.dense.*
pretrained.blocks.{i}.ls1.gamma / ls2.gamma                   ...layer_scale1.lambda1 / layer_scale2.lambda1
pretrained.blocks.{i}.mlp.fc1/fc2.*  (giant: w12/w3)          ...mlp.fc1/fc2.*  (giant: weights_in/weights_out)
pretrained.norm.*                                             backbone.layernorm.*
depth_head.projects.{k}.*                                     neck.reassemble_stage.layers.{k}.projection.*
depth_head.resize_layers.{0,1,3}.*                            neck.reassemble_stage.layers.{0,1,3}.resize.*
depth_head.scratch.layer{k+1}_rn.weight                       neck.convs.{k}.weight
depth_head.scratch.refinenet{4-k}.out_conv.*                  neck.fusion_stage.layers.{k}.projection.*
depth_head.scratch.refinenet{4-k}.resConfUnit{1,2}.conv{1,2}  neck.fusion_stage.layers.{k}.residual_layer{1,2}.convolution{1,2}
depth_head.scratch.output_conv1.*                             head.conv1.*
depth_head.scratch.output_conv2.{0,2}.*                       head.conv2.* / head.conv3.*

Both directions are plain functions on state dicts; :func:`official_to_hf` followed by
:func:`hf_to_official` is the identity (tested).
"""

from __future__ import annotations

import re

import torch

_BLOCK_RENAMES = [  # (official suffix, HF suffix) inside one transformer block
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("mlp.w12.", "mlp.weights_in."),
    ("mlp.w3.", "mlp.weights_out."),
]
_FLAT_RENAMES = [  # exact official name prefix -> HF name prefix
    ("pretrained.cls_token", "backbone.embeddings.cls_token"),
    ("pretrained.mask_token", "backbone.embeddings.mask_token"),
    ("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
    ("pretrained.patch_embed.proj.", "backbone.embeddings.patch_embeddings.projection."),
    ("pretrained.norm.", "backbone.layernorm."),
    ("depth_head.scratch.output_conv1.", "head.conv1."),
    ("depth_head.scratch.output_conv2.0.", "head.conv2."),
    ("depth_head.scratch.output_conv2.2.", "head.conv3."),
]
_FUSION_RENAMES = [
    ("out_conv.", "projection."),
    ("resConfUnit1.conv1.", "residual_layer1.convolution1."),
    ("resConfUnit1.conv2.", "residual_layer1.convolution2."),
    ("resConfUnit2.conv1.", "residual_layer2.convolution1."),
    ("resConfUnit2.conv2.", "residual_layer2.convolution2."),
]


def _rename_official(key: str) -> str | None:
    """HF name of one official (non-qkv) tensor name, or None if the name is not part of the model."""
    for old, new in _FLAT_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    m = re.fullmatch(r"pretrained\.blocks\.(\d+)\.(.+)", key)
    if m:
        for old, new in _BLOCK_RENAMES:
            if m.group(2).startswith(old):
                return f"backbone.encoder.layer.{m.group(1)}.{new}{m.group(2)[len(old):]}"
        return None
    m = re.fullmatch(r"depth_head\.projects\.(\d)\.(.+)", key)
    if m:
        return f"neck.reassemble_stage.layers.{m.group(1)}.projection.{m.group(2)}"
    m = re.fullmatch(r"depth_head\.resize_layers\.(\d)\.(.+)", key)
    if m:
        return f"neck.reassemble_stage.layers.{m.group(1)}.resize.{m.group(2)}"
    m = re.fullmatch(r"depth_head\.scratch\.layer(\d)_rn\.(.+)", key)
    if m:
        return f"neck.convs.{int(m.group(1)) - 1}.{m.group(2)}"
    m = re.fullmatch(r"depth_head\.scratch\.refinenet(\d)\.(.+)", key)
    if m:
        for old, new in _FUSION_RENAMES:
            if m.group(2).startswith(old):
                return f"neck.fusion_stage.layers.{4 - int(m.group(1))}.{new}{m.group(2)[len(old):]}"
    return None


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` (and a wrapping ``model.`` / ``state_dict``) prefix if every key has it."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def official_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official Depth Anything state dict onto ``DepthAnythingForDepthEstimation`` names.

    The fused ``attn.qkv`` (rows ordered query, key, value) is split into three tensors.
    Raises ``KeyError`` naming the first tensor that has no counterpart.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in strip_prefix(state).items():
        m = re.fullmatch(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if m:
            q, k, v = value.chunk(3, dim=0)
            base = f"backbone.encoder.layer.{m.group(1)}.attention.attention"
            out[f"{base}.query.{m.group(2)}"] = q
            out[f"{base}.key.{m.group(2)}"] = k
            out[f"{base}.value.{m.group(2)}"] = v
            continue
        new = _rename_official(key)
        if new is None:
            raise KeyError(f"tensor {key!r} is not part of an official Depth Anything checkpoint")
        out[new] = value
    return out


def hf_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_hf`: ``transformers`` names back to the official layout (qkv fused)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", key)
        if m is None:
            out[_official_name(key)] = value
        elif m.group(2) == "query":
            base = f"backbone.encoder.layer.{m.group(1)}.attention.attention"
            qkv = torch.cat([state[f"{base}.{n}.{m.group(3)}"] for n in ("query", "key", "value")], dim=0)
            out[f"pretrained.blocks.{m.group(1)}.attn.qkv.{m.group(3)}"] = qkv
    return out


def _official_name(hf_key: str) -> str:
    """Official name of one HF tensor name (non-qkv)."""
    for old, new in _FLAT_RENAMES:
        if hf_key.startswith(new):
            return old + hf_key[len(new):]
    m = re.fullmatch(r"backbone\.encoder\.layer\.(\d+)\.(.+)", hf_key)
    if m:
        for old, new in _BLOCK_RENAMES:
            if m.group(2).startswith(new):
                return f"pretrained.blocks.{m.group(1)}.{old}{m.group(2)[len(new):]}"
    m = re.fullmatch(r"neck\.reassemble_stage\.layers\.(\d)\.(projection|resize)\.(.+)", hf_key)
    if m:
        part = "projects" if m.group(2) == "projection" else "resize_layers"
        return f"depth_head.{part}.{m.group(1)}.{m.group(3)}"
    m = re.fullmatch(r"neck\.convs\.(\d)\.(.+)", hf_key)
    if m:
        return f"depth_head.scratch.layer{int(m.group(1)) + 1}_rn.{m.group(2)}"
    m = re.fullmatch(r"neck\.fusion_stage\.layers\.(\d)\.(.+)", hf_key)
    if m:
        for old, new in _FUSION_RENAMES:
            if m.group(2).startswith(new):
                return f"depth_head.scratch.refinenet{4 - int(m.group(1))}.{old}{m.group(2)[len(new):]}"
    raise KeyError(f"transformers tensor {hf_key!r} has no official Depth Anything counterpart")
