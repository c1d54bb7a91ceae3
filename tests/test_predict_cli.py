"""``pseudodepth predict`` as a user runs it: coloured PNG + raw .npy at the input's size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pseudodepth.cli import main
from pseudodepth.colorize import colorize
from pseudodepth.imageio import read_rgb
from pseudodepth.infer import predict
from pseudodepth.models import load_model


def test_predict_writes_colour_png_and_raw_npy(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    code = main(["predict", str(tmp_path / "a.jpg"), str(tmp_path / "bad.jpg"), "--model", "da-v2-tiny",
                 "--out", str(tmp_path / "out"), "--raw"])
    assert code == 0
    captured = capsys.readouterr()
    assert "bad.jpg" in captured.err and "1 images skipped" in captured.out
    raw = np.load(tmp_path / "out/a.npy")
    assert raw.shape == (45, 70) and raw.dtype == np.float32
    ref = predict(load_model("da-v2-tiny"), read_rgb(tmp_path / "a.jpg"))
    assert np.allclose(raw, ref, atol=1e-6)
    png = read_rgb(tmp_path / "out/a.png")
    assert png.shape == (45, 70, 3)
    assert np.array_equal(png, colorize(raw))


def test_colorize_near_is_warm_and_reference_lut():
    import matplotlib

    d = np.array([[0.0, 0.5, 1.0, np.nan]])
    rgb = colorize(d)
    lut = matplotlib.colormaps["Spectral_r"]
    for x, v in enumerate([0.0, 0.5, 1.0]):
        ref = np.round(np.array(lut(round(v * 255) / 255)[:3]) * 255)
        assert np.abs(rgb[0, x].astype(int) - ref).max() <= 1
    assert rgb[0, 2, 0] > rgb[0, 2, 2]  # nearest = red end
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # farthest = blue end
    assert (rgb[0, 3] == 0).all()  # invalid = black
    assert (colorize(np.full((3, 3), 2.0)) == colorize(np.zeros((3, 3)))).all()  # constant map: no NaN
