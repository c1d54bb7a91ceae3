"""One dataset class for every source: labeled ground truth and teacher pseudo-labels alike.

Training sample (``train=True``), the Depth Anything recipe:

1. read the RGB image and the source's depth (metres, range-masked) or pseudo-label disparity;
2. ``disparity = 1 / depth`` on valid pixels (pseudo-labels are disparity already);
3. resize so the shorter side is ``crop_size`` (image ``INTER_CUBIC``, disparity and mask
   nearest neighbour on the same grid), take a random ``crop_size x crop_size`` window, flip horizontally with p = 0.5;
4. target = the crop's disparity min-max normalised to [0, 1] over its valid pixels;
5. image = RGB / 255 as float32 3 x S x S, ImageNet-normalised when ``normalize=True``.

With ``target="metric"`` (``train`` in ``mode: metric``) step 2 and 4 are skipped: the target is the
crop's depth in metres (labeled sources and metric label stores), valid where inside
``[min_depth, max_depth]`` of the source; a relative (disparity) label store is refused.

Use ``normalize=False`` for unlabeled (pseudo-labeled) images that get strong perturbations in the
training step: the perturbations of :mod:`pseudodepth.data.augment` are defined on [0, 1] RGB, so
the step calls ``strong_perturbation`` and then ``normalize_imagenet``. The target always belongs
to the clean image.

Evaluation sample (``train=False``): the image exactly as inference prepares it
(:func:`pseudodepth.preprocess.prepare`, lower bound ``input_size``, multiples of 14, normalised),
and target, ``depth`` and ``valid`` at the ground truth's native resolution (metrics are computed
there). Sources with ``kb_crop`` (KITTI) are cropped to 352 x 1216 first.

Randomness: with ``seed`` set, sample ``i`` in epoch ``e`` draws from
``numpy.random.default_rng([seed, e, i])``, the same in any worker process; call
:meth:`DepthDataset.set_epoch` each epoch. With ``seed=None`` the draw comes from torch's global
generator, which ``DataLoader`` seeds per worker (reproducible under ``torch.manual_seed``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pseudodepth import metrics, preprocess
from pseudodepth.data.augment import normalize_imagenet
from pseudodepth.data.sources import DepthSource
from pseudodepth.data.transforms import depth_to_disparity, minmax_normalize, random_crop_box, resize_shorter_side


class DepthDataset(Dataset):
    """Training or evaluation samples of one :class:`~pseudodepth.data.sources.DepthSource`.

    Train items: ``{"image": float32 3 x S x S, "target": float32 S x S (normalised disparity),
    "valid": bool S x S, "kind": "labeled" | "pseudo", "path": str}``. Eval items add
    ``"depth"`` (metres, native resolution), ``"min_depth"``, ``"max_depth"`` and ``"eval_crop"``
    (a :func:`pseudodepth.metrics.crop_mask` name, ``""`` for none); their image has the inference
    size and target / depth / valid the ground truth's size.
    """

    def __init__(
        self,
        source: DepthSource,
        train: bool = True,
        crop_size: int = 518,
        input_size: int = 518,
        normalize: bool = True,
        flip_p: float = 0.5,
        seed: int | None = None,
        target: str = "relative",
    ) -> None:
        if crop_size <= 0 or input_size <= 0:
            raise ValueError(f"crop_size and input_size must be positive, got {crop_size}, {input_size}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p is a probability in [0, 1], got {flip_p}")
        if not train and source.kind == "pseudo":
            raise ValueError(f"{source.name}: pseudo-labels are not ground truth; evaluate on a labeled source")
        if target not in ("relative", "metric"):
            raise ValueError(f"target must be 'relative' or 'metric', got {target!r}")
        if target == "metric" and source.values != "depth":
            raise ValueError(f"{source.name}: holds relative disparity labels, which cannot train a metric model; "
                             "make metric labels with `pseudodepth label --align-to SPARSE` or a metric teacher")
        self.target = target
        self.source = source
        self.train = train
        self.crop_size = crop_size
        self.input_size = input_size
        self.normalize = normalize
        self.flip_p = flip_p
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips ``seed`` reproduces."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([self.seed, self.epoch, index])

    def _disparity(self, values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.source.values == "disparity":
            return values, valid
        return depth_to_disparity(values, valid)

    def __getitem__(self, index: int) -> dict:
        rgb, values, valid = self.source.load(index)
        path = self.source.samples[index].name
        if not self.train:
            return self._eval_item(rgb, values, valid, path)
        disparity, valid = (values, valid) if self.target == "metric" else self._disparity(values, valid)
        rgb, disparity, valid = resize_shorter_side(rgb, disparity, valid, self.crop_size)
        rng = self._rng(index)
        top, left = random_crop_box(*valid.shape, self.crop_size, rng)
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        rgb, disparity, valid = rgb[window], disparity[window], valid[window]
        if rng.random() < self.flip_p:
            rgb, disparity, valid = rgb[:, ::-1], disparity[:, ::-1], valid[:, ::-1]
        if self.target == "metric":  # metres, nearest-neighbour resized: no mixing across depth edges
            target, valid = np.ascontiguousarray(np.where(valid, disparity, 0), dtype=np.float32), valid.copy()
        else:
            target, valid = minmax_normalize(disparity, valid)
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        if self.normalize:
            image = normalize_imagenet(image)
        return {"image": image, "target": torch.from_numpy(target), "valid": torch.from_numpy(valid),
                "kind": self.source.kind, "path": path}

    def _eval_item(self, rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray, path: str) -> dict:
        if self.source.kb_crop:
            rgb, depth, valid = metrics.kb_crop(rgb), metrics.kb_crop(depth), metrics.kb_crop(valid)
        target, target_valid = minmax_normalize(*self._disparity(depth, valid))
        image = torch.from_numpy(preprocess.prepare(np.ascontiguousarray(rgb), self.input_size))
        return {
            "image": image,
            "target": torch.from_numpy(target),
            "valid": torch.from_numpy(np.ascontiguousarray(target_valid)),
            "depth": torch.from_numpy(np.ascontiguousarray(depth)),
            "kind": self.source.kind,
            "path": path,
            "min_depth": float(self.source.min_depth),
            "max_depth": float(self.source.max_depth),
            "eval_crop": self.source.eval_crop or "",
        }
