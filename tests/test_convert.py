"""The official <-> transformers weight-name mapping against the full official key lists.

``tests/data/official_v2_{small,base}_keys.txt`` hold every tensor name and shape of the official
``DepthAnythingV2`` state dict (written by ``bench/official_keys.py`` from the official architecture
built on random weights; the command is in each file's header).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DepthAnythingForDepthEstimation

from pseudodepth.convert import hf_to_official, official_to_hf
from pseudodepth.models import make_config

DATA = Path(__file__).parent / "data"


def official_keys(size: str) -> dict[str, tuple[int, ...]]:
    lines = (DATA / f"official_v2_{size}_keys.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    return {name: tuple(int(d) for d in shape.split("x")) for name, shape in rows}


@pytest.mark.parametrize("size", ["small", "base"])
def test_every_official_name_maps_to_transformers_and_back(size):
    official = official_keys(size)
    assert len(official) == 239
    with torch.device("meta"):
        hf_model = DepthAnythingForDepthEstimation(make_config("v2", size))
        hf = {name: t.shape for name, t in hf_model.state_dict().items()}
        mapped = official_to_hf({name: torch.empty(shape) for name, shape in official.items()})
    # every transformers weight is covered, nothing extra, and each has the shape the model expects
    assert sorted(mapped) == sorted(hf)
    for name, tensor in mapped.items():
        assert tuple(tensor.shape) == tuple(hf[name]), name
    # back: exactly the official names and shapes
    with torch.device("meta"):
        back = hf_to_official({name: torch.empty(shape) for name, shape in hf.items()})
    assert sorted(back) == sorted(official)
    for name, tensor in back.items():
        assert tuple(tensor.shape) == official[name], name


def test_one_official_name_per_tensor_and_values_follow_their_names():
    """No two official tensors land on one transformers name: each value arrives where its name says."""
    official = official_keys("small")
    state = {name: torch.full(shape, float(i)) for i, (name, shape) in enumerate(official.items())}
    back = hf_to_official(official_to_hf(state))
    assert sorted(back) == sorted(state)
    for name, tensor in back.items():
        assert torch.equal(tensor, state[name]), name

