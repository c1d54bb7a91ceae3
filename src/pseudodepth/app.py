"""``pseudodepth app``: a local web page (Gradio) to compare depth models on any image.

``pseudodepth app --model A --model B`` shows each model's depth side by side; ``pseudodepth app RUN``
shows an ``adapt`` run's teacher and student and offers the run's own images as examples. Per model:
the depth in Spectral_r (near = warm, as Depth Anything shows it), a slider between the image and
its depth, and downloads of the raw depth: ``.npy`` (float32 disparity at the image's resolution)
and a 16-bit PNG (min-max normalised disparity, as in a label store; the min/max are in its name).

The page is served on this machine only (``127.0.0.1``) and fetches nothing from the internet.
Gradio is an optional extra: ``pip install 'pseudodepth[app]'`` (``make setup`` installs it).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import yaml

from .colorize import colorize
from .imageio import list_images, write_png
from .infer import predict
from .models import load_model
from .store import encode_label

EXAMPLES = 8


def run_models(run: str | os.PathLike) -> tuple[dict[str, str], list[Path], int]:
    """An ``adapt`` run's ``{"teacher": SPEC, "student": RUN/student/final}``, example images and input size."""
    run = Path(run)
    recipe_path = run / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{run}: no recipe.yaml; `pseudodepth app RUN` takes a folder written by "
                                "`pseudodepth adapt` (or use --model SPEC)")
    recipe = yaml.safe_load(recipe_path.read_text()) or {}
    final = run / "student" / "final"
    if not (final / "pseudodepth.json").is_file():
        raise FileNotFoundError(f"{final}: the student is not trained yet; finish the run with the same "
                                "`pseudodepth adapt` command first")
    info = recipe.get("run") or {}
    examples = []
    for folder in (info.get("images") or {}).values():
        examples += [Path(folder) / rel for rel in list_images(folder)[0]][:EXAMPLES - len(examples)]
    return {"teacher": str(info["teacher"]), "student": str(final)}, examples, int(recipe.get("input_size", 518))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def depth_files(disparity: np.ndarray, folder: Path, stem: str) -> list[str]:
    """``STEM.npy`` (float32 disparity) and ``STEM_min..._max....png`` (16-bit, min-max normalised)."""
    folder.mkdir(parents=True, exist_ok=True)
    npy = folder / f"{stem}.npy"
    np.save(npy, disparity.astype(np.float32))
    q, lo, hi, _ = encode_label(disparity)
    png = folder / f"{stem}_min{lo:.6g}_max{hi:.6g}.png"
    write_png(png, q)
    return [str(npy), str(png)]


class Comparison:
    """The models and what the page computes for one image (kept apart from Gradio, so it is testable)."""

    def __init__(self, models: dict[str, object], input_size: int = 518, out_dir: str | os.PathLike | None = None):
        if not models:
            raise ValueError("give at least one --model (or an adapt RUN folder)")
        self.models, self.input_size = models, input_size
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="pseudodepth-app-"))
        self.count = 0

    def __call__(self, rgb: np.ndarray | None) -> list:
        """Per model: (coloured depth, (image, coloured depth) for the slider, [.npy, .png] files)."""
        if rgb is None:
            return [None, None, None] * len(self.models)
        rgb = np.ascontiguousarray(rgb[..., :3]).astype(np.uint8)
        self.count += 1
        outputs = []
        for name, model in self.models.items():
            disparity = predict(model, rgb, self.input_size)
            coloured = colorize(disparity)
            files = depth_files(disparity, self.out_dir / f"{self.count:04d}", f"depth_{_safe(name)}")
            outputs += [coloured, (rgb, coloured), files]
        return outputs


def build_app(comparison: Comparison, examples: list[Path] | None = None, title: str = "pseudodepth"):
    """The Gradio page: an image in; per model, depth, image/depth slider and downloads side by side."""
    import gradio as gr

    outputs = []
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"## {title}\nUpload an image (or pick one below): every model's relative depth (disparity, "
                    "Spectral_r: near = warm), a slider between the image and its depth, and the raw depth to "
                    "download (`.npy` float32; 16-bit PNG min-max normalised, min/max in the file name).")
        image = gr.Image(type="numpy", label="image", elem_id="input-image", height=360)
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[image], label="the run's images")
        with gr.Row():
            for name in comparison.models:
                with gr.Column():
                    outputs.append(gr.Image(label=f"{name}: depth", elem_id=f"depth-{_safe(name)}",
                                            interactive=False, format="png"))
                    outputs.append(gr.ImageSlider(label=f"{name}: image | depth", elem_id=f"slider-{_safe(name)}",
                                                  interactive=False, format="png"))
                    outputs.append(gr.File(label=f"{name}: raw depth", elem_id=f"files-{_safe(name)}",
                                           file_count="multiple", interactive=False))
        image.change(comparison, inputs=[image], outputs=outputs)
    return page


def launch(specs: list[str] | None, run: str | None = None, port: int = 7860, host: str = "127.0.0.1",
           input_size: int | None = None, block: bool = True):
    """Load the models, build the page and serve it; returns the Gradio app (``block=False``: in the background)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise RuntimeError("the app needs Gradio: pip install 'pseudodepth[app]' (make setup installs it)") from None
    from .evaluate import name_models

    examples: list[Path] = []
    if run is not None:
        named, examples, run_size = run_models(run)
        input_size = input_size or run_size
        title = f"pseudodepth: {Path(run).name} (teacher vs student)"
    else:
        named = name_models(specs or [])
        title = "pseudodepth: " + " vs ".join(named)
    models = {name: load_model(spec) for name, spec in named.items()}
    page = build_app(Comparison(models, input_size or 518), examples, title)
    import gradio as gr

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                quiet=not block, allowed_paths=sorted({str(p.parent) for p in examples}) or None, theme=theme)
    return page


def add_app_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("app", help="a local web page (Gradio) comparing models' depth on any image")
    p.add_argument("run", nargs="?", default=None, help="an adapt RUN folder: its teacher and student")
    p.add_argument("--model", action="append", default=None, help="model SPEC; repeat to compare side by side")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: this machine only)")
    p.add_argument("--input-size", type=int, default=None, help="network input size (default 518, or the run's)")
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    if (args.run is None) == (args.model is None):
        raise ValueError("give either an adapt RUN folder or one or more --model SPEC")
    launch(args.model, args.run, port=args.port, host=args.host, input_size=args.input_size)
    return 0
