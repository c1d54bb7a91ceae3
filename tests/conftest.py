"""Shared fixtures: tiny models, the real demo photos, awkward image files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


@pytest.fixture(scope="session")
def photos() -> Path:
    if not PHOTOS.is_dir():
        pytest.skip(f"real photos not found at {PHOTOS} (CI keeps ../shared beside the checkout)")
    return PHOTOS


@pytest.fixture
def one_thread():
    """Training the tiny model is much faster on one thread than on two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model():
    from pseudodepth.models import load_model

    return load_model("da-v2-tiny")


def jpeg_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def make_awkward_folder(root: Path, rng: np.random.Generator | None = None) -> dict[str, str]:
    """Write one file of every awkward kind; returns {relative path: "ok" | "failed"} expected statuses.

    ``notes.txt`` and ``sub/README.md`` are not images by name: they are no inputs and get no row."""
    rng = rng or np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    expect = {}

    def save(rel: str, img: Image.Image, status: str = "ok", **kw) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, **kw)
        expect[rel] = status

    save("plain.jpg", Image.fromarray(rgb), quality=90)
    save("sub/deeper/nested.png", Image.fromarray(rgb))
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("gray16.png", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=90)
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise on display
    save("rotated.jpg", Image.fromarray(rgb), quality=90, exif=exif.tobytes())
    good = jpeg_bytes(rgb)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    expect["truncated.jpg"] = "failed"
    (root / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = "failed"
    (root / "notes.jpg").write_text("text under an image name\n")
    expect["notes.jpg"] = "failed"
    (root / "notes.txt").write_text("not an image name: no input, no row\n")
    (root / "sub" / "README.md").write_text("# about these images\n")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    expect["corrupt.png"] = "failed"
    return expect
