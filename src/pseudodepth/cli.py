"""The ``pseudodepth`` command: a thin layer over the Python API (one sub-command per pipeline stage)."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: weights come from local files only
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _model_args(p: argparse.ArgumentParser, repeat: bool = False, max_depth_flag: str = "--max-depth") -> None:
    p.add_argument("--model", required=True, action="append" if repeat else "store",
                   help="official Depth Anything .pth, Hugging Face folder, Depth Anything 3 mono folder "
                   "(DA3MONO-LARGE, DA3METRIC-LARGE), pseudodepth checkpoint, or preset (e.g. da-v2-small)"
                   + ("; repeat to compare models side by side" if repeat else ""))
    p.add_argument("--version", choices=["v1", "v2"], default=None,
                   help="Depth Anything version of an official .pth whose file name is not an official one "
                   "(default: V2, said on one line)")
    p.add_argument("--input-size", type=int, default=None,
                   help="network input size (default: the model's own: 518, lower bound; Depth Anything 3: 504, "
                   "longest side)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--tta", choices=["flip"], default=None, help="flip test-time augmentation")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument(max_depth_flag, dest="model_max_depth", type=float, default=None, metavar="METRES",
                   help="load the model as metric depth with this range (sigmoid * max depth; official metric "
                   "checkpoints: 20 for hypersim, 80 for vkitti, read from the file name)")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def cmd_predict(a: argparse.Namespace) -> int:
    from .predict import predict_files

    written, errors = predict_files(a.model, a.images, a.out, raw=a.raw, input_size=a.input_size,
                                    precision=a.precision, tta=a.tta, device=a.device, version=a.version,
                                    max_depth=a.model_max_depth, focal=_focal(a))
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    print(f"wrote {len(written)} files to {a.out}" + (f"; {len(errors)} images skipped" if errors else ""))
    return 1 if errors and not written else 0


def _focal(a: argparse.Namespace):
    """--focal-px / --intrinsics -> :class:`pseudodepth.da3.FocalSettings` (None when neither is given)."""
    from .da3 import FocalSettings

    if a.focal_px is None and a.intrinsics is None:
        return None
    return FocalSettings(a.focal_px, a.intrinsics)


def _focal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--focal-px", type=float, default=None, metavar="PIXELS",
                   help="DA3METRIC: focal length in pixels of the images as given (fx = fy); metres = focal * "
                   "output / 300 at the network size (required for DA3METRIC unless --intrinsics or --align-to)")
    p.add_argument("--intrinsics", default=None, metavar="CSV",
                   help="DA3METRIC: per-image focal lengths, lines image,fx[,fy] (image: the path relative to "
                   "--images for label, the file name for predict)")


def cmd_label(a: argparse.Namespace) -> int:
    from .align import AlignSettings
    from .label import LabelSettings, label_folder

    align = None
    if a.align_to is not None:
        align = AlignSettings(a.align_to, png_scale=a.sparse_png_scale, min_points=a.min_points,
                              max_depth=a.align_max_depth)
    settings = LabelSettings(a.input_size, a.precision, a.tta, keep_aspect=not a.square,
                             max_depth=a.model_max_depth, align=align,
                             reduced_decode=a.reduced_decode, max_pixels=a.max_pixels, confidence=a.confidence,
                             focal=_focal(a))
    if a.engine == "ray":
        from .label_ray import label_folder_ray

        report = label_folder_ray(a.model, a.images, a.out, batch_size=a.batch_size, settings=settings,
                                  overwrite=a.overwrite, address=a.address, num_actors=a.actors,
                                  version=a.version)
    else:
        report = label_folder(a.model, a.images, a.out, batch_size=a.batch_size, workers=a.workers,
                              settings=settings, overwrite=a.overwrite, device=a.device, version=a.version,
                              compile=a.compile, resize_on=a.resize_on, writer_threads=a.writer_threads,
                              forward_in=a.forward_in)
    for line in report.failures[:20]:
        print(f"failed {line}", file=sys.stderr)
    print(report.summary())
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table, name_models

    results = evaluate(name_models(a.model, a.name), a.data, space=a.space or ["disparity"], input_size=a.input_size,
                       precision=a.precision, tta=a.tta, limit=a.limit, out_dir=a.out, device=a.device,
                       min_depth=a.min_depth, max_depth=a.max_depth, crop=a.crop, version=a.version,
                       model_max_depth=a.model_max_depth)
    print(format_table(results))
    print(f"wrote metrics.json, per_image.csv, table.md to {a.out}")
    return 0


def cmd_shards(a: argparse.Namespace) -> int:
    from .shards import export_shards

    paths = export_shards(a.store, a.out, max_count=a.max_count)
    print(f"wrote {len(paths)} shards and index.json to {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .imageio import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(prog="pseudodepth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="depth for a few images: coloured PNG (+ raw .npy)")
    p.add_argument("images", nargs="+", help="image files")
    _model_args(p)
    p.add_argument("--out", default="depth_out", help="output folder")
    p.add_argument("--raw", action="store_true", help="also write float32 disparity .npy at the input's size "
                   "(metres for a metric model)")
    _focal_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("label", help="pseudo-label an image folder into a resumable label store")
    _model_args(p)
    p.add_argument("--images", required=True, help="folder of images (sub-folders walked)")
    p.add_argument("--out", required=True, help="label store folder")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="decode/resize worker processes")
    p.add_argument("--square", action="store_true", help="resize to a fixed input-size square (one batch shape)")
    p.add_argument("--overwrite", action="store_true", help="relabel a store made by another teacher")
    p.add_argument("--confidence", choices=["flip", "scales"], default=None,
                   help="also store a per-pixel confidence map per label: agreement, after least-squares alignment, "
                   "of the prediction with that of the flipped image (flip) or at 1.5x the input size (scales)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"images with more pixels become failed rows without being decoded (default {DEFAULT_MAX_PIXELS:,}, "
                   "Pillow's decompression-bomb limit)")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--actors", type=int, default=None, help="Ray: number of model actors (default: one per GPU, else 1)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (a one-off compilation per network size; pays off on large folders)")
    p.add_argument("--reduced-decode", action="store_true",
                   help="decode large JPEGs at 1/2, 1/4 or 1/8 size (never below the network size): faster, "
                        "labels differ slightly from the official preprocessing (see README)")
    p.add_argument("--resize-on", choices=["worker", "device"], default=None,
                   help="resize in the decode workers (official float64, default on CPU) or on the model's "
                        "device (default on a GPU; V1/V2 teachers only, DA3 resizes in the workers)")
    p.add_argument("--forward-in", choices=["main", "workers"], default=None,
                   help="where the forward pass runs: in the decode workers, on chunks of --batch-size images, "
                        "one thread each (default for a model on the CPU with at least one worker per core), or "
                        "batched in the main process on every thread (default otherwise, on a GPU, with --compile)")
    p.add_argument("--writer-threads", type=int, default=None,
                   help="threads that upsample, encode and write labels (default: half the CPUs, at most 8)")
    p.add_argument("--align-to", default=None, metavar="SPARSE",
                   help="metric labels: align each prediction to the image's sparse metric depth in SPARSE "
                   "(SPARSE/<image path without ext>.npy|.csv|.png: an H x W depth map with 0 where missing, "
                   "or N x 3 / csv points u,v,z) by a RANSAC least-squares scale and shift")
    p.add_argument("--sparse-png-scale", type=float, default=256.0,
                   help="--align-to .png depth maps: metres = value / scale (256: KITTI LiDAR maps)")
    p.add_argument("--min-points", type=int, default=10,
                   help="--align-to: images with fewer valid sparse points become failed rows")
    p.add_argument("--align-max-depth", type=float, default=None, metavar="METRES",
                   help="--align-to: aligned depth beyond this is stored as invalid (0)")
    _focal_args(p)
    p.set_defaults(func=cmd_label)

    from .adapt import add_adapt_parser
    from .app import add_app_parser
    from .demo import add_demo_parser
    from .train import add_train_parser

    add_adapt_parser(sub)
    add_train_parser(sub)
    add_demo_parser(sub)

    p = sub.add_parser("eval", help="zero-shot depth metrics (affine alignment, or metric with --space metric)")
    _model_args(p, repeat=True, max_depth_flag="--model-max-depth")
    p.add_argument("--name", action="append", default=None, help="display name per --model (same order)")
    p.add_argument("--data", required=True, help="TYPE:PATH[,key=value...] (folder, nyu_mat, kitti, diode, sintel, "
                   "eth3d, hypersim, vkitti2), a .yaml/.json source file, or a folder")
    p.add_argument("--space", choices=["disparity", "depth", "metric"], action="append", default=None,
                   help="protocol: least-squares alignment in disparity (Depth Anything, the default) or depth "
                   "space, or metric (metric models' metres, no alignment); repeat for protocols side by side")
    p.add_argument("--out", default="eval_out")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--min-depth", type=float, default=None)
    p.add_argument("--max-depth", type=float, default=None)
    p.add_argument("--crop", choices=["dataset", "none", "eigen_nyu", "garg", "eigen"], default="dataset",
                   help="evaluation crop (default: the dataset's; KITTI: garg, 'eigen' for Marigold's)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("shards", help="export a label store to WebDataset tar shards for cluster training")
    p.add_argument("store", help="label store folder written by `pseudodepth label`")
    p.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar and index.json")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    p.set_defaults(func=cmd_shards)

    add_app_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed: what an interrupted or finished run tells you to run again
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"pseudodepth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: one line (what was saved, how to continue), no traceback
        from .interrupt import interrupt_line

        print(f"\npseudodepth {args.command}: {interrupt_line(args, argv, err)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
