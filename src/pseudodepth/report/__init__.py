"""Reports: figure panels, image grids, training curves, and one document written as Markdown and HTML.

A :class:`Report` is a title and a list of :class:`Section` s; a section holds blocks: paragraphs
(Markdown limited to ``**bold**``, ``*italic*``, ```code``` and ``[links](url)``), :class:`Table` s
and :class:`Figure` s (a PNG path relative to the report's folder). :meth:`Report.write` renders
``report.md`` and a standalone ``report.html`` (inline CSS, images linked relatively) from the same
blocks, so both always show the same content::

    report = Report("Demo", intro="What this is.")
    report.add("Results", Table(["model", "AbsRel"], [["teacher", "0.120"]]), Figure("figures/a.png", "..."))
    report.write("demo_out")              # demo_out/report.md, demo_out/report.html
    screenshot("demo_out/report.html", "demo_out/report.png")   # what a browser shows (headless Chromium)

Panels are uint8 RGB arrays: :func:`overlay_mask` (a mask in colour over a grey image),
:func:`heatmap` (values on a fixed colour scale); depth maps come from
:func:`pseudodepth.colorize.colorize`. :func:`image_grid` lays panels out with column and row
titles; :func:`plot_curves` draws training ``log.csv`` files.
"""

from __future__ import annotations

import csv
import html
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..imageio import write_png

__all__ = [
    "Figure", "Report", "Section", "Table", "find_chromium", "heatmap", "image_grid", "inline_html",
    "moving_average", "overlay_mask", "plot_curves", "read_log", "save_figure", "screenshot",
]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --------------------------------------------------------------------------- panels


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{what}: expected an H x W x 3 uint8 RGB image, got {rgb.dtype} array of shape {rgb.shape}")


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (230, 20, 20),
                 alpha: float = 0.75) -> np.ndarray:
    """``mask`` in ``color`` over a grey version of ``rgb``.

    ``g = round(0.299 R + 0.587 G + 0.114 B)`` (ITU-R 601 luma); every channel ``c`` of the output is
    ``(1 - alpha) * g + alpha * color_c`` where ``mask`` holds, ``g`` elsewhere (rounded to uint8).
    """
    _check_rgb(rgb, "overlay_mask")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"overlay_mask: mask of shape {mask.shape} does not match the image {rgb.shape[:2]}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"overlay_mask: alpha must be in [0, 1], got {alpha}")
    grey = np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]
    tinted = (1 - alpha) * grey + alpha * np.asarray(color, dtype=np.float64)
    out = np.where(mask.astype(bool)[..., None], tinted, grey)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, vmax: float, valid: np.ndarray | None = None, cmap: str = "inferno",
            invalid_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Values on a fixed scale: ``x = clip(values / vmax, 0, 1)`` coloured by ``cmap``'s 256-entry table
    (entry ``floor(255 x)``); pixels outside ``valid`` or not finite get ``invalid_color``. Unlike
    :func:`pseudodepth.colorize.colorize` (min-max per image) equal colours mean equal values across panels.
    """
    import matplotlib

    if not vmax > 0:
        raise ValueError(f"heatmap: vmax must be > 0, got {vmax}")
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) if valid is None else (np.isfinite(v) & np.asarray(valid, dtype=bool))
    lut = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    index = (np.clip(np.nan_to_num(v / vmax), 0, 1) * 255).astype(np.intp)
    return np.where(ok[..., None], lut[index], np.asarray(invalid_color, dtype=np.uint8)).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _fit_height(panel: np.ndarray, height: int) -> Image.Image:
    image = Image.fromarray(panel)
    if image.height != height:
        width = max(1, round(image.width * height / image.height))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def image_grid(rows: Sequence[Sequence[np.ndarray]], col_titles: Sequence[str] | None = None,
               row_titles: Sequence[str] | None = None, panel_height: int = 160, gap: int = 4,
               font_size: int = 14) -> np.ndarray:
    """A white sheet with ``rows`` of RGB panels (each scaled to ``panel_height``, aspect kept),
    column titles above the columns and row titles on the left. Returns H x W x 3 uint8."""
    if not rows or not all(rows):
        raise ValueError("image_grid: give at least one row with at least one panel")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            _check_rgb(np.asarray(panel), f"image_grid panel ({r}, {c})")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"image_grid: {len(row_titles)} row titles for {len(rows)} rows")
    n_cols = max(len(row) for row in rows)
    if col_titles is not None and len(col_titles) != n_cols:
        raise ValueError(f"image_grid: {len(col_titles)} column titles for {n_cols} columns")
    images = [[_fit_height(np.asarray(p), panel_height) for p in row] for row in rows]
    widths = [max((row[c].width for row in images if c < len(row)), default=0) for c in range(n_cols)]
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 0
    if row_titles:
        left = max(measure.textbbox((0, 0), t, font=font)[2] for t in row_titles) + 2 * gap
    top = font_size + 2 * gap if col_titles else 0
    sheet = Image.new("RGB", (left + sum(widths) + gap * (n_cols + 1), top + (panel_height + gap) * len(rows) + gap),
                      "white")
    draw = ImageDraw.Draw(sheet)
    xs = [left + gap + sum(widths[:c]) + gap * c for c in range(n_cols)]
    for c, title in enumerate(col_titles or []):
        text_width = measure.textbbox((0, 0), title, font=font)[2]
        draw.text((xs[c] + (widths[c] - text_width) / 2, gap), title, fill=(20, 20, 20), font=font)
    for r, row in enumerate(images):
        y = top + gap + r * (panel_height + gap)
        if row_titles:
            draw.text((gap, y + panel_height / 2 - font_size / 2), row_titles[r], fill=(20, 20, 20), font=font)
        for c, image in enumerate(row):
            sheet.paste(image, (xs[c] + (widths[c] - image.width) // 2, y))
    return np.asarray(sheet)


# --------------------------------------------------------------------------- training curves


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A training ``log.csv`` as ``{column: float64 array}`` (empty cells are NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training log not found (train writes it to its train.out folder)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: the training log has no rows; was the run logged (train.log_every)?")
    columns = {}
    for name in rows[0]:
        try:
            columns[name] = np.array([float(r[name]) if r[name] not in ("", None) else np.nan for r in rows])
        except ValueError:
            raise ValueError(f"{path}: column {name!r} holds a non-number ({[r[name] for r in rows][:3]}...)") from None
    if "step" not in columns:
        raise ValueError(f"{path}: no 'step' column; expected the log.csv written by pseudodepth train")
    return columns


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values: ``m_i = mean(v_j : i - window < j <= i, v_j finite)``
    (NaN where there is none)."""
    if window < 1:
        raise ValueError(f"moving_average: window must be >= 1, got {window}")
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    lo = np.maximum(np.arange(1, len(v) + 1) - window, 0)
    hi = np.arange(1, len(v) + 1)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def plot_curves(logs: Mapping[str, Mapping[str, np.ndarray]], panels: Sequence[tuple[str, Sequence[str]]],
                path: str | os.PathLike, smooth: int = 1, columns_per_row: int = 2) -> Path:
    """One plot per ``(title, columns)`` panel, ``columns_per_row`` plots a row: every run of ``logs`` that
    has a column draws it against ``step`` (label ``"run: column"``); with ``smooth > 1`` the raw values are
    drawn faintly under their :func:`moving_average`. Written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("plot_curves: give at least one panel")
    n_cols = min(columns_per_row, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 3.2 * n_rows), squeeze=False, dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, columns) in zip(axes.flat, panels):
        drawn = 0
        for run, log in logs.items():
            for column in columns:
                if column not in log or not np.isfinite(log[column]).any():
                    continue
                colour = colours[drawn % len(colours)]
                label = f"{run}: {column}"
                if smooth > 1:
                    ax.plot(log["step"], log[column], color=colour, alpha=0.25, linewidth=0.8)
                    ax.plot(log["step"], moving_average(log[column], smooth), color=colour, linewidth=1.6, label=label)
                else:
                    ax.plot(log["step"], log[column], color=colour, linewidth=1.4, label=label)
                drawn += 1
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- document


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*([^*\s][^*]*?)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline_html(text: str) -> str:
    """The Markdown subset of report text as HTML: ```code```, ``**bold**``, ``*italic*``,
    ``[text](url)``; everything else is HTML-escaped (code spans are not parsed further)."""

    def replace(m: re.Match) -> str:
        code, bold, italic, link_text, url = m.groups()
        if code is not None:
            return f"<code>{html.escape(code)}</code>"
        if bold is not None:
            return f"<strong>{inline_html(bold)}</strong>"
        if italic is not None:
            return f"<em>{inline_html(italic)}</em>"
        return f'<a href="{html.escape(url, quote=True)}">{inline_html(link_text)}</a>'

    out, last = [], 0
    for m in _INLINE.finditer(text):
        out += [html.escape(text[last:m.start()]), replace(m)]
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


@dataclass
class Table:
    """A table of text cells (cells may use the inline Markdown subset). ``numeric`` columns are
    right-aligned; by default those whose cells all read as numbers."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] | None = None

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"Table: row {i} has {len(row)} cells for {len(self.header)} columns: {row}")
        if self.numeric is None:
            self.numeric = [bool(self.rows) and all(_looks_numeric(r[c]) for r in self.rows)
                            for c in range(len(self.header))]

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cell(h) for h in self.header) + " |",
                 "|" + "|".join("---:" if n else "---" for n in self.numeric) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        if self.caption:
            lines += ["", f"*{self.caption}*"]
        return "\n".join(lines)

    def html(self) -> str:
        def cells(tag: str, row: list[str]) -> str:
            return "".join(f'<{tag}{" class=num" if n else ""}>{inline_html(str(c))}</{tag}>'
                           for c, n in zip(row, self.numeric))

        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in self.rows)
        caption = f'<p class="caption">{inline_html(self.caption)}</p>' if self.caption else ""
        return f"<table><thead><tr>{cells('th', self.header)}</tr></thead><tbody>{body}</tbody></table>{caption}"


def _looks_numeric(text: str) -> bool:
    """'0.123', '**0.120**', '-3.1%', '0.120 (0.118 / 0.122)' are numbers; '', 'n/a', 'teacher' are not."""
    core = re.sub(r"[*`%+\-−±()/,\s]", "", str(text))
    return bool(re.fullmatch(r"[0-9][0-9.eE]*", core))


@dataclass
class Figure:
    """A PNG (``path`` relative to the report folder) with a caption."""

    path: str
    caption: str = ""
    width: str = "100%"

    def markdown(self) -> str:
        return f"![{Path(self.path).stem}]({self.path})" + (f"\n\n*{self.caption}*" if self.caption else "")

    def html(self) -> str:
        caption = f"<figcaption>{inline_html(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure><a href="{html.escape(self.path, quote=True)}"><img src="{html.escape(self.path, quote=True)}" '
                f'alt="{html.escape(self.caption, quote=True)}" style="max-width:{self.width}"></a>{caption}</figure>')


Block = str | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


def _block_markdown(block: Block) -> str:
    return block if isinstance(block, str) else block.markdown()


def _block_html(block: Block) -> str:
    if isinstance(block, str):
        if block.lstrip().startswith("- "):
            items = [line.strip()[2:] for line in block.strip().splitlines() if line.strip().startswith("- ")]
            return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in items) + "</ul>"
        return f"<p>{inline_html(block)}</p>"
    return block.html()


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d1f23;
max-width:1120px;margin:0 auto;padding:24px 28px 60px;line-height:1.5;background:#fff}
h1{font-size:1.9em;margin:0.2em 0 0.3em} h2{font-size:1.35em;margin-top:1.8em;border-bottom:1px solid #e3e5e8;
padding-bottom:4px} p,li{max-width:900px}
nav{background:#f5f7fa;border:1px solid #e3e5e8;border-radius:6px;padding:8px 14px;font-size:0.92em}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none;white-space:nowrap}
table{border-collapse:collapse;margin:12px 0 4px;font-size:0.93em}
th,td{border-bottom:1px solid #e3e5e8;padding:5px 12px;text-align:left} th{background:#f5f7fa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
p.caption{color:#555;font-size:0.9em;margin-top:2px}
figure{margin:16px 0} img{height:auto;border:1px solid #e3e5e8}
figcaption{color:#555;font-size:0.9em;margin-top:4px;max-width:900px}
code{background:#f2f3f5;padding:1px 4px;border-radius:3px;font-size:0.92em}
"""


@dataclass
class Report:
    """A document: title, intro paragraph(s) and sections, rendered as Markdown and HTML."""

    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, *blocks: Block) -> Section:
        section = Section(title, list(blocks))
        self.sections.append(section)
        return section

    def markdown(self) -> str:
        parts = [f"# {self.title}", *self.intro]
        for section in self.sections:
            parts.append(f"## {section.title}")
            parts += [_block_markdown(b) for b in section.blocks]
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = [f"<h1>{html.escape(self.title)}</h1>", *(_block_html(p) for p in self.intro)]
        if self.sections:
            body.append(f"<nav>{nav}</nav>")
        for section in self.sections:
            body.append(f'<h2 id="{section.anchor}">{html.escape(section.title)}</h2>')
            body += [_block_html(b) for b in section.blocks]
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")

    def write(self, out_dir: str | os.PathLike, name: str = "report") -> tuple[Path, Path]:
        """Write ``out_dir/<name>.md`` and ``out_dir/<name>.html``; every figure must exist there."""
        out = Path(out_dir)
        missing = [b.path for s in self.sections for b in s.blocks if isinstance(b, Figure) and not (out / b.path).is_file()]
        if missing:
            raise FileNotFoundError(f"{out}: the report links figures that do not exist: {', '.join(missing)}")
        out.mkdir(parents=True, exist_ok=True)
        md, page = out / f"{name}.md", out / f"{name}.html"
        md.write_text(self.markdown(), encoding="utf-8")
        page.write_text(self.html(), encoding="utf-8")
        return md, page


def save_figure(out_dir: str | os.PathLike, rel_path: str, image: np.ndarray) -> str:
    """Write an RGB panel or grid as ``out_dir/rel_path`` (PNG); returns ``rel_path`` for a :class:`Figure`."""
    write_png(Path(out_dir) / rel_path, image)
    return rel_path


# --------------------------------------------------------------------------- browser check


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: str | os.PathLike, png: str | os.PathLike, window: tuple[int, int] = (1200, 2400),
               chromium: str | None = None, timeout: float = 120.0) -> Path:
    """Render ``page`` (an HTML file) in headless Chromium and save a ``window``-sized PNG screenshot."""
    page, png = Path(page).resolve(), Path(png).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such HTML file to screenshot")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); "
                                "install it (Debian: apt-get install chromium) to check reports in a browser")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="pseudodepth-chromium-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
                   f"--window-size={window[0]},{window[1]}", page.as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"{chromium} wrote no screenshot of {page} (exit {result.returncode}): "
                           f"{result.stderr.strip()[-500:]}")
    return png
