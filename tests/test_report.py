"""Report building blocks: panels against slow references, grids, tables, curves, and a real browser."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
from PIL import Image

from pseudodepth import report as rp


# --------------------------------------------------------------------------- panels


def overlay_reference(rgb, mask, color, alpha):
    out = np.zeros_like(rgb)
    for y in range(rgb.shape[0]):
        for x in range(rgb.shape[1]):
            r, g, b = (float(v) for v in rgb[y, x])
            grey = round(0.299 * r + 0.587 * g + 0.114 * b)
            for c in range(3):
                value = (1 - alpha) * grey + alpha * color[c] if mask[y, x] else grey
                out[y, x, c] = min(255, max(0, round(value)))
    return out


@pytest.mark.parametrize("mask_kind", ["random", "empty", "full", "one"])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_overlay_mask_matches_reference(mask_kind, alpha):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    mask = {"random": rng.random((7, 9)) < 0.3, "empty": np.zeros((7, 9), bool), "full": np.ones((7, 9), bool),
            "one": np.eye(7, 9, dtype=bool) & (np.arange(9) == 3)}[mask_kind]
    got = rp.overlay_mask(rgb, mask, (200, 10, 30), alpha)
    # numpy rounds half to even like Python's round(); compare within 1 for float summation order
    assert np.abs(got.astype(int) - overlay_reference(rgb, mask, (200, 10, 30), alpha).astype(int)).max() <= 1
    assert got.dtype == np.uint8 and got.shape == rgb.shape


def test_overlay_mask_rejects_bad_input():
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        rp.overlay_mask(rgb, np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="uint8 RGB"):
        rp.overlay_mask(rgb.astype(np.float32), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="alpha"):
        rp.overlay_mask(rgb, np.zeros((4, 4), bool), alpha=1.5)


def heatmap_reference(values, vmax, valid, cmap, invalid):
    table = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    out = np.zeros(values.shape + (3,), np.uint8)
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            v = float(values[y, x])
            if not math.isfinite(v) or (valid is not None and not valid[y, x]):
                out[y, x] = invalid
                continue
            t = min(1.0, max(0.0, v / vmax))
            out[y, x] = [round(c * 255) for c in table[int(t * 255)]]
    return out


@pytest.mark.parametrize("case", ["random", "constant", "nan_inf", "masked", "all_invalid"])
def test_heatmap_matches_reference(case):
    rng = np.random.default_rng(2)
    values = rng.uniform(-0.2, 1.5, (6, 5))
    valid = None
    if case == "constant":
        values = np.full((6, 5), 0.3)
    elif case == "nan_inf":
        values[0, 0], values[1, 1], values[2, 2] = np.nan, np.inf, -np.inf
    elif case == "masked":
        valid = rng.random((6, 5)) < 0.5
    elif case == "all_invalid":
        valid = np.zeros((6, 5), bool)
    got = rp.heatmap(values, 0.8, valid, "inferno", invalid_color=(1, 2, 3))
    np.testing.assert_array_equal(got, heatmap_reference(values, 0.8, valid, "inferno", (1, 2, 3)))


def test_heatmap_rejects_non_positive_scale():
    with pytest.raises(ValueError, match="vmax"):
        rp.heatmap(np.zeros((2, 2)), 0.0)


def test_image_grid_places_every_panel():
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((10, 10, 3), np.uint8)
    blue[..., 2] = 255
    sheet = rp.image_grid([[red, blue], [blue, red]], ["a", "b"], ["row 1", "row 2"], panel_height=20)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3
    is_red = (sheet[..., 0] == 255) & (sheet[..., 1] == 0) & (sheet[..., 2] == 0)
    is_blue = (sheet[..., 0] == 0) & (sheet[..., 1] == 0) & (sheet[..., 2] == 255)
    assert is_red.sum() == 2 * 20 * 30  # scaled to height 20: unchanged
    assert is_blue.sum() == 2 * 20 * 20  # 10 x 10 scaled to 20 x 20
    assert (sheet[:12] != 255).any()  # column titles drawn at the top


def test_image_grid_rejects_mismatched_titles():
    panel = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="column titles"):
        rp.image_grid([[panel, panel]], ["only one"])
    with pytest.raises(ValueError, match="row titles"):
        rp.image_grid([[panel]], row_titles=["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        rp.image_grid([])
    with pytest.raises(ValueError, match=r"panel \(0, 1\)"):
        rp.image_grid([[panel, np.zeros((4, 4), np.uint8)]])


# --------------------------------------------------------------------------- logs and curves


def write_log(path, rows):
    path.write_text("step,loss,unlabeled_loss\n" + "".join(f"{s},{l},{u}\n" for s, l, u in rows))
    return path


def test_read_log_and_plot_curves(tmp_path):
    teacher = rp.read_log(write_log(tmp_path / "t.csv", [(10, 2.0, ""), (20, 1.5, "")]))
    student = rp.read_log(write_log(tmp_path / "s.csv", [(10, 3.0, 1.0), (20, 2.5, 0.8)]))
    np.testing.assert_array_equal(teacher["step"], [10, 20])
    assert np.isnan(teacher["unlabeled_loss"]).all()
    np.testing.assert_allclose(student["unlabeled_loss"], [1.0, 0.8])
    png = rp.plot_curves({"teacher": teacher, "student": student},
                         [("total", ["loss"]), ("pseudo", ["unlabeled_loss"]), ("absent", ["nothing"])],
                         tmp_path / "figs" / "curves.png", smooth=2, columns_per_row=2)
    with Image.open(png) as image:  # 2 x 2 grid, the fourth cell hidden
        assert image.width > 1000 and image.height > 600
        rgb = np.asarray(image.convert("RGB")).astype(int)
    first, second = (31, 119, 180), (255, 127, 14)  # matplotlib's C0 and C1: each panel's 1st and 2nd line

    def pixels(cell: np.ndarray, colour) -> int:
        return int((np.abs(cell - np.array(colour)).max(axis=-1) <= 12).sum())

    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    total, pseudo, absent, hidden = rgb[:h, :w], rgb[:h, w:], rgb[h:, :w], rgb[h:, w:]
    assert pixels(total, first) > 200 and pixels(total, second) > 200  # teacher and student loss
    assert pixels(pseudo, first) > 200 and pixels(pseudo, second) == 0  # only the student has unlabeled_loss
    assert pixels(absent, first) == pixels(absent, second) == 0  # no run has the column: an empty plot
    assert (hidden >= 250).all()  # the unused fourth cell is blank


def moving_average_reference(values, window):
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return np.array(out)


@pytest.mark.parametrize("window", [1, 3, 10])
def test_moving_average_matches_reference(window):
    values = np.random.default_rng(5).normal(size=17)
    values[[2, 3, 4, 5]] = [np.nan, np.inf, np.nan, np.nan]  # non-finite values are skipped
    np.testing.assert_allclose(rp.moving_average(values, window), moving_average_reference(values, window),
                               equal_nan=True)
    assert rp.moving_average(np.array([]), 3).shape == (0,)
    assert np.isnan(rp.moving_average(np.array([np.nan, np.nan]), 1)).all()
    with pytest.raises(ValueError, match="window"):
        rp.moving_average(values, 0)


def test_read_log_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        rp.read_log(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("step,loss\n")
    with pytest.raises(ValueError, match="empty.csv.*no rows"):
        rp.read_log(tmp_path / "empty.csv")
    (tmp_path / "text.csv").write_text("step,loss\n1,abc\n")
    with pytest.raises(ValueError, match="text.csv.*'loss'"):
        rp.read_log(tmp_path / "text.csv")


# --------------------------------------------------------------------------- document


@pytest.mark.parametrize("text, expected", [
    ("plain & <b>", "plain &amp; &lt;b&gt;"),
    ("a **bold** word", "a <strong>bold</strong> word"),
    ("an *italic* word", "an <em>italic</em> word"),
    ("`x < **y**`", "<code>x &lt; **y**</code>"),
    ("see [the docs](https://a.b/c?d=1&e=2)", 'see <a href="https://a.b/c?d=1&amp;e=2">the docs</a>'),
    ("2 * 3 * 4", "2 * 3 * 4"),
    ("", ""),
])
def test_inline_html(text, expected):
    assert rp.inline_html(text) == expected


def test_table_markdown_and_html():
    table = rp.Table(["model", "AbsRel"], [["teacher", "0.1200"], ["student|x", "**0.1100**"]], "caption")
    assert table.numeric == [False, True]
    md = table.markdown().splitlines()
    assert md[0] == "| model | AbsRel |" and md[1] == "|---|---:|"
    assert md[3] == "| student\\|x | **0.1100** |" and md[-1] == "*caption*"
    html = table.html()
    assert "<td class=num><strong>0.1100</strong></td>" in html and '</table><p class="caption">caption</p>' in html
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        rp.Table(["a", "b"], [["only"]])


def test_numeric_columns_recognise_formatted_numbers():
    table = rp.Table(["a", "b", "c"], [["0.120 (0.118 / 0.122)", "-3.1%", "n/a"], ["+0.5%", "1e-3", "x"]])
    assert table.numeric == [True, True, False]


def test_report_write_checks_figures(tmp_path):
    report = rp.Report("Title", ["Intro with `code`."])
    report.add("Section one", "Text.", rp.Figure("figures/missing.png", "cap"))
    with pytest.raises(FileNotFoundError, match="figures/missing.png"):
        report.write(tmp_path)
    rp.save_figure(tmp_path, "figures/missing.png", np.zeros((4, 4, 3), np.uint8))
    md, page = report.write(tmp_path)
    assert md.read_text().startswith("# Title\n\nIntro with `code`.\n\n## Section one")
    assert "![missing](figures/missing.png)" in md.read_text()
    text = page.read_text()
    assert '<h2 id="section-one">Section one</h2>' in text and '<img src="figures/missing.png"' in text
    assert "<code>code</code>" in text


def test_bullet_lists_render_as_html_lists():
    report = rp.Report("T")
    report.add("S", "- one\n- **two**")
    assert "<ul><li>one</li><li><strong>two</strong></li></ul>" in report.html()


# --------------------------------------------------------------------------- browser


def test_report_renders_in_chromium(tmp_path):
    if rp.find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser check is skipped")
    magenta = np.zeros((60, 200, 3), np.uint8)
    magenta[..., 0] = magenta[..., 2] = 255
    report = rp.Report("Browser check", ["A report with one figure and one table."])
    report.add("Figure", rp.Figure(rp.save_figure(tmp_path, "figures/m.png", magenta), "a magenta block"),
               rp.Table(["k", "v"], [["a", "1"]]))
    _, page = report.write(tmp_path)
    png = rp.screenshot(page, tmp_path / "shot.png", window=(800, 600))
    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert shot.shape[:2] == (600, 800)
    is_magenta = (shot[..., 0] > 240) & (shot[..., 1] < 20) & (shot[..., 2] > 240)
    assert is_magenta.sum() > 0.8 * 60 * 200  # the image was loaded and drawn (scaled to the page at most)
    assert (shot < 100).all(axis=2).sum() > 100  # dark text was drawn


def test_screenshot_names_a_missing_page(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.html"):
        rp.screenshot(tmp_path / "x.html", tmp_path / "x.png")


# --------------------------------------------------------------------------- figures and tables of a run (report.run)


def test_metrics_table_of_a_run_with_and_without_a_baseline():
    from pseudodepth.report.run import metrics_table

    scores = {"teacher": {"a": {"abs_rel": 0.2, "delta1": 0.7}}, "student": {"a": {"abs_rel": 0.15, "delta1": 0.6}},
              "blind": {"a": {"abs_rel": 0.25, "delta1": 0.0}}}
    plain = metrics_table(scores, "eval set", "caption")
    assert plain.header == ["eval set", "metric", "teacher", "student", "student vs teacher"]
    assert plain.rows == [["`a`", "AbsRel ↓", "0.2000", "**0.1500**", "-25.0%"],
                          ["`a`", "δ1 ↑", "0.700", "0.600", "-14.3%"]]
    with_blind = metrics_table(scores, "split", "caption", baseline=("blind", "blind map", "teacher vs blind"))
    assert with_blind.header == ["split", "metric", "blind map", "teacher", "student", "student vs teacher",
                                 "teacher vs blind"]
    assert with_blind.rows[0] == ["`a`", "AbsRel ↓", "0.2500", "0.2000", "**0.1500**", "-25.0%", "-20.0%"]
    assert with_blind.rows[1][-1] == "n/a"  # a baseline of 0 gives no ratio
    missing = metrics_table({k: scores[k] for k in ("teacher", "student")}, "s", "c", ("blind", "b", "t vs b"))
    assert missing.rows[0][2] == "nan" and missing.rows[0][-1] == "n/a"


def test_scene_figure_columns_and_views(monkeypatch):
    import pseudodepth.report.run as run

    depth = np.linspace(1, 10, 28)[:, None] * np.ones((1, 42))

    class Source:  # the depth-source interface scene_views reads
        min_depth, max_depth = 1e-3, 80.0

        def load(self, i):
            return np.full((28, 42, 3), 40 * i, np.uint8), depth, np.ones(depth.shape, bool)

    # stand-in models: exact disparity, the student's at twice the scale (equal after the affine alignment)
    monkeypatch.setattr(run, "predict", lambda model, rgb, size: (1.0 if model == "t" else 2.0) / depth)
    views = run.scene_views({"teacher": "t", "student": "s"}, Source(), [0, 1], 28, ratio=0.1)
    assert len(views) == 2 and views[0].dropped.shape == (28, 42) and views[0].dropped.dtype == bool
    for view in views:
        np.testing.assert_allclose(view.teacher_error, 0, atol=1e-9)
        np.testing.assert_allclose(view.student_error, 0, atol=1e-9)
    assert run.scene_views({"teacher": "t", "student": "s"}, Source(), [0], 28)[0].dropped is None
    grid = run.scene_figure(views, ["a", "b"], [("teacher error", "teacher_error"), ("dropped", "dropped")])
    assert grid.dtype == np.uint8 and grid.shape[0] > 2 * 150
    with pytest.raises(ValueError, match="unknown column"):
        run.scene_figure(views, ["a", "b"], [("x", "rgb")])
