"""``pseudodepth app``: what the page computes, and the page itself in a real browser (Debian's chromium)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pseudodepth.app import Comparison, run_models
from pseudodepth.imageio import read_png16, read_rgb
from pseudodepth.infer import predict
from pseudodepth.models import build_model, load_model, save_checkpoint
from pseudodepth.store import decode_label

INPUT_SIZE = 56


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory, photos: Path) -> Path:
    """A real photo, shrunk to 210 px wide (the page runs at every upload; keep it quick)."""
    image = Image.open(sorted(photos.glob("*.jpg"))[0]).convert("RGB")
    path = tmp_path_factory.mktemp("app") / "street.png"
    image.resize((210, round(210 * image.height / image.width)), Image.Resampling.LANCZOS).save(path)
    return path


def test_comparison_outputs_and_downloads(tmp_path: Path, small_photo: Path) -> None:
    models = {"a": load_model("da-v2-tiny"), "b b": load_model("da-v1-tiny")}
    rgb = read_rgb(small_photo)
    outputs = Comparison(models, INPUT_SIZE, tmp_path)(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    assert len(outputs) == 6  # RGBA in: alpha dropped
    for k, model in enumerate(models.values()):
        coloured, (left, right), files = outputs[3 * k:3 * k + 3]
        expected = predict(model, rgb, INPUT_SIZE)
        assert coloured.shape == rgb.shape and np.array_equal(left, rgb) and right is coloured
        npy, png = (Path(f) for f in files)
        np.testing.assert_array_equal(np.load(npy), expected)
        lo, hi = (float(x) for x in png.stem.split("_min")[1].split("_max"))
        restored = decode_label(read_png16(png), lo, hi)
        assert np.abs(restored - expected).max() <= (expected.max() - expected.min()) / 65535 + 1e-4 * abs(hi)
    assert Path(outputs[2][0]).name == "depth_a.npy" and Path(outputs[5][0]).name == "depth_b_b.npy"
    assert Comparison(models)(None) == [None] * 6


def test_run_models_reads_an_adapt_run(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no recipe.yaml"):
        run_models(tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"input_size": 70, "run": {
        "teacher": "da-v2-tiny", "images": {"photos": str(photos)}}}))
    with pytest.raises(FileNotFoundError, match="not trained yet"):
        run_models(tmp_path)
    save_checkpoint(build_model("v2", "tiny"), tmp_path / "student" / "final")
    models, examples, size = run_models(tmp_path)
    assert models == {"teacher": "da-v2-tiny", "student": str(tmp_path / "student" / "final")}
    assert size == 70 and 0 < len(examples) <= 8 and all(p.suffix == ".jpg" for p in examples)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_chromium(small_photo: Path) -> None:
    pytest.importorskip("gradio", reason="Gradio is not installed: pip install 'pseudodepth[app]' (make setup does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed; make test installs it")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; make test does it as root)")
    from pseudodepth.app import launch

    port = free_port()
    page_app = launch(["da-v2-tiny", "da-v1-tiny"], port=port, block=False, input_size=INPUT_SIZE)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle", timeout=120_000)
            assert "pseudodepth: da-v2-tiny vs da-v1-tiny" in page.title()
            page.locator("#input-image input[type=file]").set_input_files(str(small_photo))
            for name, model in (("da-v2-tiny", "da-v2-tiny"), ("da-v1-tiny", "da-v1-tiny")):
                page.locator(f"#depth-{name} img").wait_for(timeout=180_000)
                assert page.locator(f"#slider-{name} img").count() == 2  # image and depth under the slider
                links = page.locator(f"#files-{name} a")
                links.first.wait_for(timeout=60_000)
                hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
                assert any(h.endswith(".npy") for h in hrefs) and any(".png" in h for h in hrefs), hrefs
                npy = next(h for h in hrefs if h.endswith(".npy"))
                body = page.request.get(npy if npy.startswith("http") else f"http://127.0.0.1:{port}{npy}").body()
                downloaded = np.load(__import__("io").BytesIO(body))
                expected = predict(load_model(model), read_rgb(small_photo), INPUT_SIZE)
                np.testing.assert_allclose(downloaded, expected, rtol=1e-5, atol=1e-6)
            browser.close()
    finally:
        page_app.close()
