"""Training and evaluation data: depth-format readers, dataset sources, one dataset class and
strong perturbations. (The student's labeled / pseudo-labeled batches are drawn by
:mod:`pseudodepth.train`, step-deterministically; :func:`split_batch_size` splits a batch 1 : 2.)

Typical use::

    from pseudodepth.data import DepthDataset, make_source

    labeled = DepthDataset(make_source({"type": "folder", "root": "data/train"}), seed=0)
    pseudo = DepthDataset(make_source({"type": "label_store", "root": "labels"}), normalize=False, seed=0)
    sample = pseudo[0]   # {"image", "target", "valid", "kind", "path"}
"""

from pseudodepth.data.augment import (
    StrongPerturbation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    grayscale,
    normalize_imagenet,
    rgb_to_grayscale,
    strong_perturbation,
)
from pseudodepth.data.dataset import DepthDataset
from pseudodepth.data.formats import (
    DepthFormatError,
    distance_to_planar_depth,
    load_pfm,
    nyu_mat_count,
    read_diode,
    read_eth3d,
    read_hypersim,
    read_npy,
    read_nyu_mat,
    read_pfm,
    read_png16,
    read_sintel_dpt,
    read_vkitti2,
    write_eth3d,
    write_pfm,
    write_png16,
    write_sintel_dpt,
)
from pseudodepth.data.mixing import split_batch_size
from pseudodepth.data.sources import (
    SOURCE_TYPES,
    DepthSource,
    Sample,
    SourceConfigError,
    diode,
    eth3d,
    folder,
    hypersim,
    kitti,
    label_store,
    make_source,
    nyu_mat,
    sintel,
    vkitti2,
)
from pseudodepth.data.transforms import depth_to_disparity, minmax_normalize, random_crop_box, resize_shorter_side

__all__ = [
    "SOURCE_TYPES", "DepthDataset", "DepthFormatError", "DepthSource", "Sample",
    "SourceConfigError", "StrongPerturbation", "adjust_brightness", "adjust_contrast", "adjust_hue",
    "adjust_saturation", "depth_to_disparity", "diode", "distance_to_planar_depth", "eth3d", "folder",
    "gaussian_blur", "grayscale", "hypersim", "kitti", "label_store", "load_pfm", "make_source",
    "minmax_normalize", "normalize_imagenet", "nyu_mat", "nyu_mat_count", "random_crop_box",
    "read_diode", "read_eth3d", "read_hypersim", "read_npy", "read_nyu_mat", "read_pfm", "read_png16",
    "read_sintel_dpt", "read_vkitti2", "resize_shorter_side", "rgb_to_grayscale",
    "sintel", "split_batch_size", "strong_perturbation", "vkitti2", "write_eth3d", "write_pfm", "write_png16",
    "write_sintel_dpt",
]
