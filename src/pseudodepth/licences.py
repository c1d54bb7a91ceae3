"""Licences of released depth weights, and the terms pseudo-labels and students inherit from them.

The released weights (DESIGN.md, "Other teachers"; the model cards of each release):

| weights | licence |
|---|---|
| Depth Anything V1 Small / Base / Large (``depth_anything_vit{s,b,l}14.pth``) | Apache-2.0 |
| Depth Anything V2 Small (``depth_anything_v2_vits.pth``) | Apache-2.0 |
| Depth Anything V2 Base / Large / Giant (``depth_anything_v2_vit{b,l,g}.pth``) | CC-BY-NC-4.0 |
| DA3MONO-LARGE, DA3METRIC-LARGE, DA3-Small, DA3-Base | Apache-2.0 |
| DA3-Large, DA3-Giant, DA3NESTED-GIANT-LARGE | CC-BY-NC-4.0 |
| DINOv2 encoders (``dinov2_vit*14_pretrain.pth``) | Apache-2.0 |

A checkpoint is recognised by its official file name, its Hugging Face folder name
(``Depth-Anything-V2-Small-hf``, ``DA3MONO-LARGE``), the ``model_name`` of a DA3 ``config.json``, or
the licence a pseudodepth checkpoint recorded when it was trained. Anything else is ``unknown``:
weights renamed by hand are not guessed. Pseudo-labels carry their teacher's licence (``store.json``,
the shard index) and a student carries every licence of the weights and labels it was trained from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

APACHE = "Apache-2.0"
NON_COMMERCIAL = "CC-BY-NC-4.0"
UNKNOWN = "unknown"

_NAME_RULES: list[tuple[re.Pattern, str]] = [  # matched against a file or folder name (full match)
    (re.compile(r"depth_anything_vit[sbl]14\.pth"), APACHE),
    (re.compile(r"depth_anything_v2_vits\.pth"), APACHE),
    (re.compile(r"depth_anything_v2_vit[blg]\.pth"), NON_COMMERCIAL),
    (re.compile(r"dinov2_vit[sblg]14(_reg4)?_pretrain\.pth"), APACHE),
    (re.compile(r"depth-anything-(small|base|large)(-hf)?", re.I), APACHE),
    (re.compile(r"depth-anything-v2-small(-hf)?", re.I), APACHE),
    (re.compile(r"depth-anything-v2-(base|large|giant)(-hf)?", re.I), NON_COMMERCIAL),
    (re.compile(r"da3(mono|metric)-large", re.I), APACHE),
    (re.compile(r"da3-(small|base)(-1\.1)?", re.I), APACHE),
    (re.compile(r"da3-(large|giant)(-1\.1)?|da3nested-giant-large(-1\.1)?", re.I), NON_COMMERCIAL),
]


def licence_of_name(name: str) -> str:
    """The licence of an official release by its file, folder or DA3 model name, else ``unknown``."""
    for pattern, licence in _NAME_RULES:
        if pattern.fullmatch(name):
            return licence
    return UNKNOWN


def licence_of(spec: str | Path) -> str:
    """The licence of a model SPEC's weights (see the module docstring); presets are ``unknown``."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        for meta_file in ("pseudodepth.json", "config.json"):
            try:
                meta = json.loads((path / meta_file).read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict):
                continue
            recorded = meta.get("licence") or (meta.get("pseudodepth") or {}).get("licence")
            if recorded and recorded != UNKNOWN:
                return str(recorded)
            if isinstance(meta.get("model_name"), str) and licence_of_name(meta["model_name"]) != UNKNOWN:
                return licence_of_name(meta["model_name"])
        return licence_of_name(path.resolve().name)
    return licence_of_name(path.name)


def combine(licences: Iterable[str]) -> str:
    """One licence string for weights derived from several: the distinct licences joined by `` + ``."""
    distinct = sorted({part for lic in licences if lic for part in str(lic).split(" + ")})
    return " + ".join(distinct) if distinct else UNKNOWN


def is_non_commercial(licence: str) -> bool:
    return NON_COMMERCIAL in str(licence)


def non_commercial_notice(spec: str | Path, licence: str) -> str | None:
    """The one-line notice ``label`` prints for a non-commercial teacher (None otherwise)."""
    if not is_non_commercial(licence):
        return None
    return (f"notice: teacher {Path(str(spec)).name} is licensed {licence} (non-commercial): its pseudo-labels "
            "and every student trained on them inherit these terms; use an Apache-2.0 teacher "
            "(Depth Anything V2 Small, V1, DA3MONO-LARGE, DA3METRIC-LARGE) for commercial work")


def labels_licence(source: dict) -> str:
    """The licence recorded with pseudo-labels: a ``label_store`` source's ``store.json`` or a ``shards``
    source's ``index.json`` (paths already resolved); ``unknown`` when not recorded."""
    if source.get("type") == "label_store":
        meta_file = Path(source["root"]) / "store.json"
    elif source.get("type") == "shards":
        index = Path(source["index"])
        meta_file = index / "index.json" if index.is_dir() else index
    else:
        return UNKNOWN
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return UNKNOWN
    return str(meta.get("licence") or UNKNOWN) if isinstance(meta, dict) else UNKNOWN


def trained_licence(weights: Iterable[str | None], label_sources: Iterable[dict]) -> str:
    """The licence of a model trained from ``weights`` (model SPECs it starts from; presets, random
    weights, carry no terms) and the pseudo-labels of ``label_sources``: every licence they carry."""
    from .models import PRESETS

    found = [licence_of(w) for w in weights if w and w not in PRESETS]
    found += [labels_licence(s) for s in label_sources]
    return combine(found)
