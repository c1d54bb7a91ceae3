"""Procedural scenes with exact depth: a tiny vectorised ray caster for demo and test data.

A `Scene` is a pinhole `Camera`, analytic primitives (`Plane`, `Box`, `Sphere`, `Cylinder`),
procedural `Material`s and `Lighting` (Lambert + ambient + Blinn specular from one directional
light, hard shadows cast by the objects), an optional `Sky` and distance haze. `render` casts one
ray per pixel centre for all pixels at once in numpy (loops run over primitives only).

Depth is the **planar z-depth in metres** (distance along the camera's optical axis, like KITTI
and NYUv2, not the distance to the camera centre), float32. Each camera ray is `R @ (x, y, 1)` in
camera coordinates, so its ray parameter `t` *is* the z-depth. `valid` is False on sky and beyond
the domain's `max_depth` (a sensor range, like a lidar's); `depth` is 0 exactly where `valid` is
False. Coordinates: world y is up (the ground is y = 0); camera x right, y down, z forward.

Domains (`DOMAINS`), deterministic given a seed (`numpy.random.default_rng(seed)`):

- `"source"`: the demo's labeled domain: indoor rooms, 4-8 m wide and 5-10 m deep. Painted,
  striped, plaster or brick walls with flat doors / pictures / shelves, tiled / plank / carpet
  floors, a light ceiling; 3-7 warm-coloured boxes (some rotated), spheres, stacks and tables on
  the floor; warm light from above with soft ambient light; camera at 1.1-1.8 m looking level to
  25 degrees down, 55-70 degree field of view. Every pixel is valid; depth about 0.3-13 m.
- `"target"`: the demo's shifted, unlabeled domain: the same kind of rooms seen through a poor
  camera (`CameraEffects`: a hue shift, washed-out colours, lost contrast, wrong exposure and
  defocus blur, all global: none depends on depth; severity uniform in 0-0.7 per image), like a cheap
  camera with poor white balance and a dirty lens. The geometry is the source's; what changes is the
  appearance a model reads depth from, within the family Depth Anything's strong perturbations span.
- `"outdoor"` and `"outdoor_shifted"`: an infinite ground to the horizon under a sky with clouds
  (invalid depth), 10-20 objects (boxes, buildings, trees, poles, boulders, crates, logs,
  barrels) over 1.5-25 m, valid depth up to 30 m; the shifted one has other objects, a cool, low
  sun, haze, bluish palettes and wider, slightly rolled cameras. (The demo used them until it was
  measured that a model this small learns almost nothing that transfers between them.)

`write_domain` writes the plain folder layout that `pseudodepth.data` reads:
`out/images/000000.png` and `out/depth/000000.png` (16-bit, millimetres, 0 = invalid).
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .data.formats import write_png16
from .imageio import atomic_write_bytes

__all__ = [
    "Box", "Camera", "CameraEffects", "Cylinder", "DOMAINS", "DomainConfig", "Lighting", "Material", "Plane", "Scene",
    "Sky", "Sphere", "contact_sheet", "domain_fingerprint", "make_demo_data", "render", "render_scene", "rotation",
    "sample_scene", "write_domain",
]

EPS = 1e-4  # minimum ray parameter (metres of z-depth) for a hit
DEPTH_PNG_SCALE = 1000.0  # 16-bit depth PNG: value = round(depth_m * 1000); 0 = invalid
Vector = tuple[float, float, float]


def _vec(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (N, 3) and/or (3,) arrays."""
    if b.ndim == 1:
        return a @ b
    if a.ndim == 1:
        return b @ a
    return np.einsum("ij,ij->i", a, b)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3 x 3 rotation R = R_y(yaw) R_x(pitch) R_z(roll), angles in radians; columns = local axes."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_y @ r_x @ r_z


# --------------------------------------------------------------------------- textures


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point (integer hash)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (int(seed) * 83492791)
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h.astype(np.float64) / 2.0**32


def value_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: lattice hashes, smoothstep-weighted bilinear interpolation."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    top = _hash01(iu, iv, seed) * (1 - fu) + _hash01(iu + 1, iv, seed) * fu
    bottom = _hash01(iu, iv + 1, seed) * (1 - fu) + _hash01(iu + 1, iv + 1, seed) * fu
    return top * (1 - fv) + bottom * fv


def fbm(u: np.ndarray, v: np.ndarray, seed: int, octaves: int = 4) -> np.ndarray:
    """Fractal Brownian motion: sum_k 0.5^k noise(2^k u, 2^k v), normalised to [0, 1]."""
    total, norm = np.zeros_like(u), 0.0
    for k in range(octaves):
        total += 0.5**k * value_noise(u * 2**k, v * 2**k, seed + 101 * k)
        norm += 0.5**k
    return total / norm


@dataclass
class Material:
    """Albedo pattern in surface coordinates (u, v) in metres, mixing `colour` and `colour2`.

    Patterns: plain, checkers, stripes (along `angle`), bricks, noise (fBm), gradient.
    `scale` is the pattern period in metres; `specular` the Blinn-Phong highlight strength.
    `footprint` (metres per pixel on the surface) fades periodic patterns to their mean colour as
    the pixel approaches the pattern's Nyquist limit, a cheap box filter against moire.
    """

    colour: Vector
    colour2: Vector = (0.0, 0.0, 0.0)
    pattern: str = "plain"
    scale: float = 1.0
    angle: float = 0.0
    specular: float = 0.0
    seed: int = 0

    def albedo(self, u: np.ndarray, v: np.ndarray, footprint: np.ndarray | None = None) -> np.ndarray:
        a, b = _vec(self.colour), _vec(self.colour2)
        u, v = u / self.scale, v / self.scale
        mix = self._mix(u, v)
        if footprint is not None and self.pattern in _PATTERN_MEANS:
            contrast = np.clip((0.5 - footprint / self.scale) / 0.3, 0.0, 1.0)
            mix = _PATTERN_MEANS[self.pattern] + (mix - _PATTERN_MEANS[self.pattern]) * contrast
        return a * (1 - mix[:, None]) + b * mix[:, None]

    def _mix(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Weight of `colour2` in [0, 1] at pattern coordinates (u, v) in periods."""
        if self.pattern == "plain":
            return np.zeros_like(u)
        if self.pattern == "checkers":
            return (np.floor(u) + np.floor(v)) % 2
        if self.pattern == "stripes":
            w = u * np.cos(self.angle) + v * np.sin(self.angle)
            return 0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * w))
        if self.pattern == "bricks":  # bricks of scale x scale/2 with mortar lines (mix 1)
            row = np.floor(v * 2)
            shifted = u + 0.5 * (row % 2)
            mortar = ((v * 2) % 1 < 0.1) | (shifted % 1 < 0.05)
            return np.where(mortar, 1.0, 0.25 * _hash01(np.floor(shifted), row, self.seed))
        if self.pattern == "noise":
            return np.clip((fbm(u, v, self.seed) - 0.25) * 2, 0, 1)
        if self.pattern == "gradient":
            return 0.5 + 0.5 * np.sin(0.25 * np.pi * v)
        raise ValueError(f"unknown texture pattern {self.pattern!r}; use plain, checkers, stripes, bricks, "
                         "noise or gradient")


_PATTERN_MEANS = {"checkers": 0.5, "stripes": 0.5, "bricks": 0.26}  # mean mix of the periodic patterns


# --------------------------------------------------------------------------- primitives
# Each primitive: intersect(origins, dirs) -> ray parameter t (inf = miss), for origins (3,) or
# (N, 3) and dirs (N, 3) or (3,); surface(points) -> (normals, u, v); bounds() -> bounding sphere.


@dataclass
class Plane:
    """Infinite plane through `point` with `normal`; textured in two in-plane axes."""

    point: Vector
    normal: Vector
    material: Material
    casts_shadow: bool = False

    def __post_init__(self) -> None:
        self._p = _vec(self.point)
        self._n = _vec(self.normal) / np.linalg.norm(self.normal)
        helper = np.array([0.0, 1.0, 0.0]) if abs(self._n[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        self._t1 = np.cross(self._n, helper)
        self._t1 /= np.linalg.norm(self._t1)
        self._t2 = np.cross(self._n, self._t1)

    def bounds(self) -> tuple[np.ndarray, float] | None:
        return None

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((self._p - origins) @ self._n) / (dirs @ self._n)
        return np.where(t > EPS, t, np.inf)

    def surface(self, points: np.ndarray):
        rel = points - self._p
        return np.broadcast_to(self._n, points.shape), rel @ self._t1, rel @ self._t2


@dataclass
class Sphere:
    center: Vector
    radius: float
    material: Material
    casts_shadow: bool = True

    def bounds(self) -> tuple[np.ndarray, float]:
        return _vec(self.center), float(self.radius)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        oc = origins - _vec(self.center)
        a, b, c = _dot(dirs, dirs), _dot(oc, dirs), _dot(oc, oc) - self.radius**2
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        near, far = (-b - root) / a, (-b + root) / a
        t = np.where(near > EPS, near, far)
        return np.where((disc >= 0) & (t > EPS), t, np.inf)

    def surface(self, points: np.ndarray):
        rel = points - _vec(self.center)
        normals = rel / self.radius
        u = self.radius * np.arctan2(rel[:, 0], rel[:, 2])
        v = self.radius * np.arccos(np.clip(normals[:, 1], -1, 1))
        return normals, u, v


@dataclass
class Box:
    """Box with half extents `half_size` along the columns of `rot` (a 3 x 3 rotation)."""

    center: Vector
    half_size: Vector
    material: Material
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    casts_shadow: bool = True

    def bounds(self) -> tuple[np.ndarray, float]:
        return _vec(self.center), float(np.linalg.norm(self.half_size))

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        half = _vec(self.half_size)
        o_local = (origins - _vec(self.center)) @ self.rot
        d_local = dirs @ self.rot
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d_local
            t1, t2 = (-half - o_local) * inv, (half - o_local) * inv
        low, high = np.fmin(t1, t2), np.fmax(t1, t2)  # per-axis slab entry and exit
        t_near = np.fmax(np.fmax(low[:, 0], low[:, 1]), low[:, 2])
        t_far = np.fmin(np.fmin(high[:, 0], high[:, 1]), high[:, 2])
        t = np.where(t_near > EPS, t_near, t_far)
        return np.where((t_far >= t_near) & (t > EPS), t, np.inf)

    def surface(self, points: np.ndarray):
        local = (points - _vec(self.center)) @ self.rot
        scaled = local / _vec(self.half_size)
        axis = np.argmax(np.abs(scaled), axis=1)
        normals_local = np.zeros_like(local)
        rows = np.arange(len(points))
        normals_local[rows, axis] = np.sign(scaled[rows, axis])
        u = np.where(axis == 0, local[:, 2], local[:, 0])
        v = np.where(axis == 1, local[:, 2], local[:, 1])
        return normals_local @ self.rot.T, u, v


@dataclass
class Cylinder:
    """Closed cylinder of `radius` along the local y axis (column 1 of `rot`), length 2 * `half_height`."""

    center: Vector
    radius: float
    half_height: float
    material: Material
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    casts_shadow: bool = True

    def bounds(self) -> tuple[np.ndarray, float]:
        return _vec(self.center), float(np.hypot(self.radius, self.half_height))

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        o = (origins - _vec(self.center)) @ self.rot
        d = dirs @ self.rot
        ox, oy, oz, dx, dy, dz = o[..., 0], o[..., 1], o[..., 2], d[..., 0], d[..., 1], d[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = dx * dx + dz * dz
            b = ox * dx + oz * dz
            disc = b * b - a * (ox * ox + oz * oz - self.radius**2)
            side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            side = np.where((disc >= 0) & (side > EPS) & (np.abs(oy + side * dy) <= self.half_height), side, np.inf)
            best = side
            for cap in (self.half_height, -self.half_height):
                t = (cap - oy) / dy
                inside = (ox + t * dx) ** 2 + (oz + t * dz) ** 2 <= self.radius**2
                best = np.fmin(best, np.where(inside & (t > EPS), t, np.inf))
        return best

    def surface(self, points: np.ndarray):
        local = (points - _vec(self.center)) @ self.rot
        radial = np.hypot(local[:, 0], local[:, 2])
        on_cap = np.abs(np.abs(local[:, 1]) - self.half_height) < np.abs(radial - self.radius)
        cap_normals = np.stack([0 * radial, np.sign(local[:, 1]), 0 * radial], 1)
        side_normals = np.stack([local[:, 0], 0 * radial, local[:, 2]], 1) / np.maximum(radial, 1e-12)[:, None]
        normals_local = np.where(on_cap[:, None], cap_normals, side_normals)
        u = np.where(on_cap, local[:, 0], self.radius * np.arctan2(local[:, 0], local[:, 2]))
        v = np.where(on_cap, local[:, 2], local[:, 1])
        return normals_local @ self.rot.T, u, v


Primitive = Plane | Sphere | Box | Cylinder


# --------------------------------------------------------------------------- scene and rendering


@dataclass
class Camera:
    """Pinhole camera at `position` (m); yaw about world up (0 looks along +z), pitch up, roll; radians.

    `fov_deg` is the horizontal field of view; the principal point is the image centre and pixel
    (i, j) is sampled at its centre (j + 0.5, i + 0.5).
    """

    position: Vector
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    fov_deg: float = 60.0

    def focal(self, width: int) -> float:
        """Focal length in pixels for an image `width` pixels wide."""
        return 0.5 * width / np.tan(np.radians(self.fov_deg) / 2)

    def rays(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Origin (3,) and H x W x 3 world directions whose camera-frame z component is 1."""
        focal = self.focal(width)
        x = (np.arange(width) + 0.5 - width / 2) / focal
        y = (np.arange(height) + 0.5 - height / 2) / focal
        cam = np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.ones((1, 1))), axis=-1)
        return _vec(self.position), cam @ self.to_world().T

    def to_world(self) -> np.ndarray:
        """Rotation whose columns are the camera's right, down and forward axes in world coordinates."""
        r = rotation(self.yaw, -self.pitch, -self.roll)  # local +x, +y, +z = left, up, forward
        return np.stack([-r[:, 0], -r[:, 1], r[:, 2]], axis=1)


@dataclass
class Lighting:
    """Directional light: `direction` points towards the light; colours are linear RGB."""

    direction: Vector = (0.3, 1.0, -0.4)
    colour: Vector = (1.0, 1.0, 1.0)
    ambient: Vector = (0.3, 0.3, 0.3)
    shadows: bool = True
    shininess: float = 40.0


@dataclass
class Sky:
    """Sky seen where no primitive is hit: horizon-to-zenith gradient plus fBm clouds."""

    horizon: Vector = (0.75, 0.82, 0.9)
    zenith: Vector = (0.25, 0.45, 0.8)
    clouds: float = 0.5
    seed: int = 0

    def colour(self, dirs: np.ndarray) -> np.ndarray:
        unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        up = np.clip(unit[:, 1], 0, 1)
        colour = _vec(self.horizon) + (_vec(self.zenith) - _vec(self.horizon)) * np.sqrt(up)[:, None]
        if self.clouds > 0:
            lift = up + 0.08
            cover = fbm(unit[:, 0] / lift * 2, unit[:, 2] / lift * 2, self.seed)
            amount = self.clouds * np.clip((cover - 0.45) * 3, 0, 1) * np.clip(up * 8, 0, 1)
            colour = colour * (1 - amount[:, None]) + 0.95 * amount[:, None]
        return colour


@dataclass
class Scene:
    camera: Camera
    primitives: list[Primitive]
    lighting: Lighting = field(default_factory=Lighting)
    sky: Sky | None = None
    haze: float = 0.0  # extinction per metre of distance, towards the sky's horizon colour
    max_depth: float = np.inf  # farther pixels are rendered but marked invalid
    background: Vector = (0.0, 0.0, 0.0)  # colour of misses when there is no sky
    camera_effects: "CameraEffects | None" = None  # what a poor camera does to the image (depth unchanged)


@dataclass
class CameraEffects:
    """A poor camera (poor white balance, a dirty lens): a global hue shift, washed-out colours, lost
    contrast, wrong exposure and defocus blur, all scaled by ``severity`` (0 = clean, 1 = strong).

    ``hue``: hue rotation at severity 1 (fraction of the colour circle); ``exposure``: brightness
    multiplier at severity 1. Applied to the finished display image; depth is not touched.
    """

    severity: float
    hue: float = 0.0
    exposure: float = 1.0

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        s = float(np.clip(self.severity, 0.0, 1.0))
        if s == 0.0:
            return rgb
        hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees
        hsv[..., 0] = (hsv[..., 0] + 360.0 * self.hue * s) % 360.0
        hsv[..., 1] *= 1 - 0.6 * s
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        mean = x.mean()
        x = (mean + (x - mean) * (1 - 0.55 * s)) * self.exposure ** s
        sigma = 2.0 * s * rgb.shape[1] / 128
        if sigma >= 0.3:
            x = cv2.GaussianBlur(x, (0, 0), sigma)
        return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _screen_box(bound, camera: Camera, height: int, width: int) -> tuple[int, int, int, int]:
    """Conservative pixel rectangle (rows i0:i1, cols j0:j1) covering a bounding sphere."""
    center, radius = bound
    focal = camera.focal(width)
    x, y, z = (center - _vec(camera.position)) @ camera.to_world()
    if z - radius <= 1e-3:
        return 0, height, 0, width
    xs = [(x + sx * radius) / (z + sz * radius) for sx in (-1, 1) for sz in (-1, 1)]
    ys = [(y + sy * radius) / (z + sz * radius) for sy in (-1, 1) for sz in (-1, 1)]
    j0, j1 = int(np.floor(min(xs) * focal + width / 2)), int(np.ceil(max(xs) * focal + width / 2)) + 1
    i0, i1 = int(np.floor(min(ys) * focal + height / 2)), int(np.ceil(max(ys) * focal + height / 2)) + 1
    return max(i0, 0), min(i1, height), max(j0, 0), min(j1, width)


def _in_shadow(points: np.ndarray, light: np.ndarray, casters: list[Primitive]) -> np.ndarray:
    """True where the ray from `points` towards the (unit) light direction hits a shadow caster."""
    blocked = np.zeros(len(points), dtype=bool)
    for caster in casters:
        center, radius = caster.bounds()
        rel = center - points
        along = rel @ light
        near_line = (along > -radius) & (_dot(rel, rel) - along**2 < radius**2) & ~blocked
        idx = np.nonzero(near_line)[0]
        if len(idx):
            blocked[idx] |= np.isfinite(caster.intersect(points[idx], light))
    return blocked


def render(scene: Scene, size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast `scene`: (rgb uint8 H x W x 3, planar z-depth float32 H x W in metres, valid bool H x W)."""
    height, width = size
    origin, grid = scene.camera.rays(height, width)
    t_best = np.full((height, width), np.inf)
    hit_id = np.full((height, width), -1)
    for k, primitive in enumerate(scene.primitives):
        bound = primitive.bounds()
        i0, i1, j0, j1 = (0, height, 0, width) if bound is None else _screen_box(bound, scene.camera, height, width)
        if i0 >= i1 or j0 >= j1:
            continue
        t = primitive.intersect(origin, grid[i0:i1, j0:j1].reshape(-1, 3)).reshape(i1 - i0, j1 - j0)
        closer = t < t_best[i0:i1, j0:j1]
        t_best[i0:i1, j0:j1][closer] = t[closer]
        hit_id[i0:i1, j0:j1][closer] = k

    dirs, t_flat, ids = grid.reshape(-1, 3), t_best.reshape(-1), hit_id.reshape(-1)
    hit = ids >= 0
    colour = np.empty((height * width, 3))
    colour[~hit] = scene.sky.colour(dirs[~hit]) if scene.sky is not None else _vec(scene.background)
    hit_idx = np.nonzero(hit)[0]
    points = origin + t_flat[hit_idx, None] * dirs[hit_idx]
    view = dirs[hit_idx] / np.linalg.norm(dirs[hit_idx], axis=1, keepdims=True)
    pixel_size = t_flat[hit_idx] / scene.camera.focal(width)  # metres per pixel facing the camera
    normals, albedo, specular = np.empty_like(points), np.empty_like(points), np.zeros(len(hit_idx))
    for k in np.unique(ids[hit_idx]):
        sel = np.nonzero(ids[hit_idx] == k)[0]
        primitive = scene.primitives[k]
        normal, u, v = primitive.surface(points[sel])
        normal = np.where(_dot(normal, view[sel])[:, None] > 0, -normal, normal)  # face the camera
        footprint = pixel_size[sel] / np.maximum(np.abs(_dot(normal, view[sel])), 0.1)
        normals[sel], albedo[sel] = normal, primitive.material.albedo(u, v, footprint)
        specular[sel] = primitive.material.specular

    light = scene.lighting
    to_light = _vec(light.direction) / np.linalg.norm(light.direction)
    lambert = np.clip(normals @ to_light, 0, None)
    if light.shadows:
        lit_idx = np.nonzero(lambert > 0)[0]
        casters = [p for p in scene.primitives if p.casts_shadow]
        shadowed = _in_shadow(points[lit_idx] + 1e-3 * normals[lit_idx], to_light, casters)
        lambert[lit_idx[shadowed]] = 0.0
    halfway = to_light - view
    halfway /= np.linalg.norm(halfway, axis=1, keepdims=True)
    highlight = specular * np.clip(_dot(normals, halfway), 0, None) ** light.shininess * (lambert > 0)
    shaded = (albedo * (_vec(light.ambient) + lambert[:, None] * _vec(light.colour))
              + highlight[:, None] * _vec(light.colour))
    if scene.haze > 0:
        horizon = _vec(scene.sky.horizon) if scene.sky is not None else _vec(scene.background)
        keep = np.exp(-scene.haze * t_flat[hit_idx] * np.linalg.norm(dirs[hit_idx], axis=1))[:, None]
        shaded = shaded * keep + horizon * (1 - keep)
    colour[hit_idx] = shaded

    valid = np.isfinite(t_best) & (t_best <= scene.max_depth)
    depth = np.where(valid, t_best, 0.0).astype(np.float32)
    rgb = np.round(np.clip(colour, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8).reshape(height, width, 3)
    if scene.camera_effects is not None:
        rgb = scene.camera_effects.apply(rgb)
    return rgb, depth, valid


# --------------------------------------------------------------------------- domains

Range = tuple[float, float]

# Surface styles: (pattern, HSV ranges of colour, HSV ranges of colour2, period range in metres).
# HSV values are display (sRGB-like) colours; they are linearised (** 2.2) for shading.
SURFACE_STYLES: dict[str, tuple[str, tuple[Range, Range, Range], tuple[Range, Range, Range], Range]] = {
    "paint": ("plain", ((0.0, 1.0), (0.05, 0.3), (0.65, 0.9)), ((0, 0), (0, 0), (0, 0)), (1.0, 1.0)),
    "wallpaper": ("stripes", ((0.0, 1.0), (0.1, 0.35), (0.6, 0.85)),
        ((0.0, 1.0), (0.1, 0.3), (0.45, 0.7)), (0.15, 0.4)),
    "plaster": ("gradient", ((0.05, 0.15), (0.05, 0.25), (0.7, 0.85)),
        ((0.05, 0.15), (0.1, 0.3), (0.5, 0.65)), (0.5, 1.5)),
    "bricks": ("bricks", ((0.0, 0.06), (0.45, 0.7), (0.4, 0.6)), ((0.0, 0.1), (0.0, 0.1), (0.7, 0.85)), (0.25, 0.45)),
    "tiles": ("checkers", ((0.0, 1.0), (0.0, 0.2), (0.65, 0.85)), ((0.0, 1.0), (0.0, 0.3), (0.2, 0.4)), (0.3, 0.8)),
    "planks": ("stripes", ((0.05, 0.1), (0.45, 0.7), (0.4, 0.6)), ((0.05, 0.1), (0.5, 0.75), (0.25, 0.4)), (0.12, 0.3)),
    "carpet": ("noise", ((0.0, 1.0), (0.2, 0.5), (0.3, 0.55)), ((0.0, 1.0), (0.2, 0.5), (0.2, 0.4)), (0.05, 0.15)),
    "grass": ("noise", ((0.2, 0.3), (0.45, 0.75), (0.35, 0.6)), ((0.15, 0.25), (0.5, 0.8), (0.15, 0.3)), (0.6, 3.0)),
    "dirt": ("noise", ((0.06, 0.1), (0.35, 0.6), (0.4, 0.6)), ((0.05, 0.1), (0.4, 0.6), (0.2, 0.35)), (0.4, 2.0)),
    "asphalt": ("noise", ((0.55, 0.65), (0.0, 0.1), (0.3, 0.45)),
        ((0.55, 0.65), (0.0, 0.1), (0.12, 0.22)), (0.08, 0.3)),
    "field": ("stripes", ((0.08, 0.25), (0.4, 0.7), (0.35, 0.55)), ((0.06, 0.12), (0.4, 0.6), (0.2, 0.35)), (0.8, 2.0)),
    "paving": ("checkers", ((0.05, 0.12), (0.0, 0.15), (0.55, 0.7)),
        ((0.05, 0.12), (0.0, 0.15), (0.35, 0.5)), (0.5, 1.2)),
    "concrete": ("noise", ((0.08, 0.15), (0.0, 0.1), (0.6, 0.75)), ((0.08, 0.15), (0.0, 0.1), (0.4, 0.55)), (0.3, 1.5)),
    "bark": ("stripes", ((0.05, 0.09), (0.4, 0.6), (0.25, 0.4)), ((0.05, 0.09), (0.4, 0.6), (0.12, 0.2)), (0.05, 0.1)),
    "foliage": ("noise", ((0.2, 0.35), (0.5, 0.8), (0.3, 0.5)), ((0.2, 0.3), (0.6, 0.9), (0.08, 0.2)), (0.3, 0.8)),
    "rock": ("noise", ((0.05, 0.15), (0.0, 0.2), (0.45, 0.65)), ((0.05, 0.15), (0.0, 0.2), (0.2, 0.35)), (0.15, 0.5)),
    "metal": ("plain", ((0.0, 1.0), (0.0, 0.15), (0.45, 0.7)), ((0, 0), (0, 0), (0, 0)), (1.0, 1.0)),
}


@dataclass(frozen=True)
class DomainConfig:
    """Parameters of a family of generated scenes (all ranges are sampled uniformly)."""

    name: str
    layout: str  # "room": camera inside a box room; "outdoor": ground plane to the horizon + sky
    object_kinds: dict[str, float]  # kind -> sampling weight (see `_OBJECT_BUILDERS`)
    n_objects: tuple[int, int]
    object_distance: Range  # metres from the camera, sampled log-uniformly
    floor_styles: tuple[str, ...]
    wall_styles: tuple[str, ...] = ()
    object_patterns: tuple[str, ...] = ("plain", "checkers", "stripes")  # patterns of palette objects
    object_hue: Range = (0.0, 1.0)
    object_saturation: Range = (0.3, 0.8)
    object_value: Range = (0.4, 0.9)
    fov_deg: Range = (55.0, 70.0)
    camera_height: Range = (1.1, 1.8)
    pitch_deg: Range = (-25.0, 0.0)
    roll_deg: Range = (0.0, 0.0)
    room_size: tuple[Range, Range, Range] = ((4.0, 8.0), (5.0, 10.0), (2.5, 3.5))  # width, depth, height
    light_colour: Vector = (1.0, 1.0, 1.0)
    light_elevation_deg: Range = (40.0, 80.0)
    ambient_colour: Vector = (0.3, 0.3, 0.3)
    shadows: bool = True
    haze: Range = (0.0, 0.0)
    clouds: Range = (0.0, 0.0)
    max_depth: float = 60.0
    camera_effects: Range = (0.0, 0.0)  # severity of `CameraEffects` per image (0, 0: a clean camera)

    def __post_init__(self) -> None:
        problems = []
        if self.layout not in ("room", "outdoor"):
            problems.append(f"layout {self.layout!r} is not 'room' or 'outdoor'")
        if self.layout == "room" and not self.wall_styles:
            problems.append("a room needs wall_styles")
        problems += [f"unknown object kind {k!r}" for k in self.object_kinds if k not in _OBJECT_BUILDERS]
        if not self.object_kinds or min(self.object_kinds.values()) < 0 or sum(self.object_kinds.values()) <= 0:
            problems.append("object_kinds needs non-negative weights with a positive sum")
        if not self.floor_styles:
            problems.append("floor_styles is empty")
        problems += [f"unknown surface style {s!r}" for s in self.floor_styles + self.wall_styles
                     if s not in SURFACE_STYLES]
        if not 0 < self.object_distance[0] <= self.object_distance[1]:
            problems.append(f"object_distance {self.object_distance} must satisfy 0 < low <= high")
        if problems:
            raise ValueError(f"invalid DomainConfig {self.name!r}: " + "; ".join(problems)
                             + f". Object kinds: {sorted(_OBJECT_BUILDERS)}; surface styles: {sorted(SURFACE_STYLES)}")



def _hsv_albedo(rng: np.random.Generator, hsv: tuple[Range, Range, Range]) -> Vector:
    h, s, v = (rng.uniform(*r) for r in hsv)
    return tuple(float(c) ** 2.2 for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _style_material(style: str, rng: np.random.Generator, specular: float = 0.0) -> Material:
    pattern, hsv1, hsv2, period = SURFACE_STYLES[style]
    return Material(_hsv_albedo(rng, hsv1), _hsv_albedo(rng, hsv2), pattern, rng.uniform(*period),
                    angle=float(rng.choice([0.0, np.pi / 2])), specular=specular, seed=int(rng.integers(2**31)))


def _palette_material(cfg: DomainConfig, rng: np.random.Generator, specular: float = 0.0) -> Material:
    hsv = (cfg.object_hue, cfg.object_saturation, cfg.object_value)
    colour = _hsv_albedo(rng, hsv)
    colour2 = tuple(c * rng.uniform(0.15, 0.5) for c in colour) if rng.random() < 0.6 else _hsv_albedo(rng, hsv)
    return Material(colour, colour2, str(rng.choice(cfg.object_patterns)), rng.uniform(0.12, 0.5),
                    angle=rng.uniform(0, np.pi), specular=specular, seed=int(rng.integers(2**31)))


# Object builders: (rng, cfg, x, z) -> (primitives standing on the floor at (x, z), footprint radius).
Placed = tuple[list[Primitive], float]
Rng = np.random.Generator


def _box(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    half = rng.uniform(0.15, 0.6, 3)
    yaw = rng.uniform(0, np.pi) if rng.random() < 0.6 else 0.0
    box = Box((x, half[1], z), tuple(half), _palette_material(cfg, rng), rotation(yaw))
    return [box], float(np.hypot(half[0], half[2]))


def _sphere(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    radius = rng.uniform(0.15, 0.55)
    return [Sphere((x, radius, z), radius, _palette_material(cfg, rng, specular=rng.uniform(0, 0.5)))], radius


def _stack(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    """A box with a sphere or a smaller box on top."""
    (base,), footprint = _box(rng, cfg, x, z)
    top_y = 2 * base.half_size[1]
    small = min(base.half_size[0], base.half_size[2])
    if rng.random() < 0.5:
        radius = small * rng.uniform(0.5, 1.0)
        top = Sphere((x, top_y + radius, z), radius, _palette_material(cfg, rng, specular=0.4))
    else:
        half = (small * rng.uniform(0.5, 0.9), rng.uniform(0.1, 0.35), small * rng.uniform(0.5, 0.9))
        top = Box((x, top_y + half[1], z), half, _palette_material(cfg, rng), rotation(rng.uniform(0, np.pi)))
    return [base, top], footprint


def _table(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    """A table top on four thin legs."""
    half_w, half_d, height = rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.6), rng.uniform(0.55, 0.8)
    rot = rotation(rng.uniform(0, np.pi))
    material = _style_material("planks", rng) if rng.random() < 0.5 else _palette_material(cfg, rng)
    parts = [Box((x, height - 0.025, z), (half_w, 0.025, half_d), material, rot)]
    leg_half = (0.03, (height - 0.05) / 2, 0.03)
    for sx in (-1, 1):
        for sz in (-1, 1):
            offset = rot @ np.array([sx * (half_w - 0.06), 0.0, sz * (half_d - 0.06)])
            parts.append(Box((x + offset[0], leg_half[1], z + offset[2]), leg_half, material, rot))
    return parts, float(np.hypot(half_w, half_d))


def _building(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    half = (rng.uniform(2.0, 7.0), rng.uniform(2.0, 9.0), rng.uniform(2.0, 7.0))
    material = _style_material(str(rng.choice(["bricks", "concrete", "wallpaper", "paint"])), rng)
    return [Box((x, half[1], z), half, material, rotation(rng.uniform(0, np.pi)))], float(np.hypot(half[0], half[2]))


def _tree(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    """A trunk cylinder under a canopy sphere."""
    trunk_r, trunk_h = rng.uniform(0.1, 0.3), rng.uniform(1.5, 4.0)
    canopy_r = rng.uniform(1.0, 2.5)
    return [Cylinder((x, trunk_h / 2, z), trunk_r, trunk_h / 2, _style_material("bark", rng)),
            Sphere((x, trunk_h + canopy_r * 0.7, z), canopy_r, _style_material("foliage", rng))], canopy_r


def _pole(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    radius, half = rng.uniform(0.04, 0.12), rng.uniform(1.5, 4.0)
    return [Cylinder((x, half, z), radius, half, _style_material("metal", rng, specular=0.6))], radius + 0.2


def _boulder(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    """A sphere partly sunk into the ground."""
    radius = rng.uniform(0.3, 1.5)
    return [Sphere((x, radius * rng.uniform(0.2, 0.7), z), radius, _style_material("rock", rng))], radius


def _crate(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    half = rng.uniform(0.25, 0.8)
    material = _style_material("planks", rng) if rng.random() < 0.5 else _palette_material(cfg, rng)
    return [Box((x, half, z), (half, half, half), material, rotation(rng.uniform(0, np.pi)))], half * 1.42


def _log(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    """A cylinder lying on the ground."""
    radius, half = rng.uniform(0.15, 0.4), rng.uniform(0.8, 2.5)
    lying = rotation(rng.uniform(0, np.pi), 0.0, np.pi / 2)
    return [Cylinder((x, radius, z), radius, half, _style_material("bark", rng), lying)], half


def _barrel(rng: Rng, cfg: DomainConfig, x: float, z: float) -> Placed:
    radius, half = rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.9)
    return [Cylinder((x, half, z), radius, half, _palette_material(cfg, rng, specular=0.3))], radius


_OBJECT_BUILDERS: dict[str, Callable[[Rng, DomainConfig, float, float], Placed]] = {
    "box": _box, "sphere": _sphere, "stack": _stack, "table": _table, "building": _building, "tree": _tree,
    "pole": _pole, "boulder": _boulder, "crate": _crate, "log": _log, "barrel": _barrel,
}
_MIN_DISTANCE = {"building": 12.0, "tree": 4.0}  # metres beyond the footprint, so they do not fill the view


_ROOMS = DomainConfig(
    name="source", layout="room",
    object_kinds={"box": 0.4, "sphere": 0.3, "stack": 0.15, "table": 0.15}, n_objects=(3, 7),
    object_distance=(1.3, 7.0),
    floor_styles=("tiles", "planks", "carpet"), wall_styles=("paint", "wallpaper", "plaster", "bricks"),
    object_hue=(0.0, 0.17), object_saturation=(0.3, 0.75), object_value=(0.45, 0.9),
    light_colour=(1.0, 0.82, 0.6), light_elevation_deg=(35.0, 75.0), ambient_colour=(0.38, 0.32, 0.26),
    max_depth=20.0,
)

DOMAINS: dict[str, DomainConfig] = {
    "source": _ROOMS,
    # the same kind of rooms seen through a poor camera (severity uniform in 0-0.7 per image, chosen after
    # the 0-1 range's run: see README, "demo — the whole loop on generated data")
    "target": dataclasses.replace(_ROOMS, name="target", camera_effects=(0.0, 0.7)),
    "outdoor": DomainConfig(
        name="outdoor", layout="outdoor",
        object_kinds={"box": 0.2, "sphere": 0.15, "tree": 0.2, "building": 0.1, "crate": 0.15, "boulder": 0.1,
                      "stack": 0.1},
        n_objects=(10, 20), object_distance=(1.5, 25.0),
        floor_styles=("grass", "dirt", "field", "paving"),
        object_patterns=("plain", "checkers", "stripes"), object_hue=(0.0, 0.17), object_saturation=(0.3, 0.75),
        object_value=(0.45, 0.9),
        fov_deg=(55.0, 75.0), camera_height=(1.0, 2.5), pitch_deg=(-15.0, 0.0),
        light_colour=(1.05, 0.95, 0.8), light_elevation_deg=(45.0, 80.0), ambient_colour=(0.35, 0.32, 0.28),
        haze=(0.0, 0.003), clouds=(0.0, 0.5), max_depth=30.0,
    ),
    "outdoor_shifted": DomainConfig(
        name="outdoor_shifted", layout="outdoor",
        object_kinds={"building": 0.12, "tree": 0.2, "pole": 0.1, "boulder": 0.15, "crate": 0.13, "log": 0.1,
                      "barrel": 0.2},
        n_objects=(10, 20), object_distance=(1.5, 25.0),
        floor_styles=("grass", "dirt", "asphalt", "field", "paving"),
        object_patterns=("noise", "stripes", "checkers"), object_hue=(0.45, 0.75), object_saturation=(0.2, 0.6),
        object_value=(0.35, 0.8),
        fov_deg=(60.0, 90.0), camera_height=(0.8, 3.0), pitch_deg=(-12.0, 3.0), roll_deg=(-3.0, 3.0),
        light_colour=(1.15, 1.25, 1.45), light_elevation_deg=(12.0, 40.0), ambient_colour=(0.1, 0.13, 0.2),
        haze=(0.004, 0.02), clouds=(0.0, 0.9), max_depth=30.0,
    ),
}


def _road(rng: np.random.Generator, camera_yaw: float) -> list[Primitive]:
    """A long straight asphalt strip with a centre line, roughly along the view direction."""
    rot = rotation(camera_yaw + rng.uniform(-0.6, 0.6))
    half_width, lateral = rng.uniform(2.0, 5.0), rng.uniform(-6.0, 6.0)
    centre = rot @ np.array([lateral, 0.0, 0.0])
    line = Material(_hsv_albedo(rng, ((0.1, 0.15), (0.0, 0.6), (0.8, 0.95))))
    return [Box((centre[0], 0.01, centre[2]), (half_width, 0.01, 300.0), _style_material("asphalt", rng), rot,
                casts_shadow=False),
            Box((centre[0], 0.011, centre[2]), (0.08, 0.011, 300.0), line, rot, casts_shadow=False)]


def _room(cfg: DomainConfig, rng: np.random.Generator) -> tuple[list[Primitive], tuple[float, float, float]]:
    width, depth, height = (rng.uniform(*r) for r in cfg.room_size)
    wall = _style_material(str(rng.choice(cfg.wall_styles)), rng)
    accent = _style_material(str(rng.choice(cfg.wall_styles)), rng) if rng.random() < 0.5 else wall
    ceiling = Material(_hsv_albedo(rng, ((0.08, 0.12), (0.0, 0.1), (0.85, 0.95))))
    primitives: list[Primitive] = [
        Plane((0, 0, 0), (0, 1, 0), _style_material(str(rng.choice(cfg.floor_styles)), rng)),
        Plane((0, height, 0), (0, -1, 0), ceiling),
        Plane((-width / 2, 0, 0), (1, 0, 0), wall),
        Plane((width / 2, 0, 0), (-1, 0, 0), wall),
        Plane((0, 0, depth), (0, 0, -1), accent),
        Plane((0, 0, 0), (0, 0, 1), wall),
    ]
    for _ in range(rng.integers(0, 4)):  # doors, pictures and shelves flat on the side and far walls
        half_w, half_h, thick = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.9), rng.uniform(0.01, 0.15)
        centre_y = float(np.clip(rng.uniform(0.6, 2.0), half_h + 0.01, height - half_h - 0.01))
        wall_index = rng.integers(3)
        if wall_index == 2:  # far wall
            centre = (rng.uniform(-1, 1) * (width / 2 - half_w), centre_y, depth - thick)
            half = (half_w, half_h, thick)
        else:
            side = -1 if wall_index == 0 else 1
            centre = (side * (width / 2 - thick), centre_y, rng.uniform(1.0, depth - half_w))
            half = (thick, half_h, half_w)
        primitives.append(Box(centre, half, _palette_material(cfg, rng), casts_shadow=False))
    return primitives, (width, depth, height)


def sample_scene(domain: str | DomainConfig, rng: np.random.Generator) -> Scene:
    """A random `Scene` of `domain` (a name in `DOMAINS` or a `DomainConfig`), drawn from `rng`."""
    cfg = _domain(domain)
    fov = rng.uniform(*cfg.fov_deg)
    height = rng.uniform(*cfg.camera_height)
    if cfg.layout == "room":
        primitives, (room_w, room_d, room_h) = _room(cfg, rng)
        position = (rng.uniform(-0.3, 0.3) * room_w, min(height, room_h - 0.4), rng.uniform(0.2, 0.8))
        yaw = np.radians(rng.uniform(-35, 35))
    elif cfg.layout == "outdoor":
        primitives = [Plane((0, 0, 0), (0, 1, 0), _style_material(str(rng.choice(cfg.floor_styles)), rng))]
        position, yaw = (0.0, height, 0.0), rng.uniform(0, 2 * np.pi)
        if rng.random() < 0.5:
            primitives += _road(rng, yaw)
    else:
        raise ValueError(f"unknown layout {cfg.layout!r} in domain {cfg.name!r}; use 'room' or 'outdoor'")
    camera = Camera(position, yaw, np.radians(rng.uniform(*cfg.pitch_deg)), np.radians(rng.uniform(*cfg.roll_deg)), fov)

    kinds = list(cfg.object_kinds)
    weights = np.array([cfg.object_kinds[k] for k in kinds], dtype=np.float64)
    placed: list[tuple[float, float, float]] = []  # (x, z, footprint radius)
    for _ in range(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1)):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        builder = _OBJECT_BUILDERS[kind]
        for _attempt in range(20):
            distance = np.exp(rng.uniform(*np.log(cfg.object_distance)))
            angle = yaw + rng.uniform(-0.6, 0.6) * np.radians(fov)
            x, z = position[0] + distance * np.sin(angle), position[2] + distance * np.cos(angle)
            parts, radius = builder(rng, cfg, x, z)
            inside_room = cfg.layout != "room" or (abs(x) + radius < room_w / 2 - 0.05
                                                   and radius + 0.05 < z < room_d - radius - 0.05)
            clear = all(np.hypot(x - px, z - pz) > radius + pr for px, pz, pr in placed)
            if inside_room and clear and distance > radius + _MIN_DISTANCE.get(kind, 0.8):
                primitives += parts
                placed.append((x, z, radius))
                break

    elevation, azimuth = np.radians(rng.uniform(*cfg.light_elevation_deg)), rng.uniform(0, 2 * np.pi)
    to_sun = (np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth))
    ambient = tuple(c * rng.uniform(0.8, 1.25) for c in cfg.ambient_colour)
    lighting = Lighting(direction=to_sun, colour=cfg.light_colour, ambient=ambient, shadows=cfg.shadows)
    sky = None
    if cfg.layout == "outdoor":
        sky = Sky(horizon=_hsv_albedo(rng, ((0.55, 0.62), (0.08, 0.25), (0.82, 0.95))),
                  zenith=_hsv_albedo(rng, ((0.58, 0.64), (0.35, 0.6), (0.6, 0.85))),
                  clouds=rng.uniform(*cfg.clouds), seed=int(rng.integers(2**31)))
    haze = rng.uniform(*cfg.haze)
    effects = None
    if cfg.camera_effects[1] > 0:  # drawn last: a clean domain's scenes do not depend on this option
        effects = CameraEffects(rng.uniform(*cfg.camera_effects), rng.uniform(-0.25, 0.25), float(np.exp(rng.uniform(-0.6, 0.4))))
    return Scene(camera, primitives, lighting, sky, haze=haze, max_depth=cfg.max_depth, camera_effects=effects)


def _domain(domain: str | DomainConfig) -> DomainConfig:
    if isinstance(domain, DomainConfig):
        return domain
    if domain not in DOMAINS:
        raise ValueError(f"unknown scene domain {domain!r}; use one of {sorted(DOMAINS)} or a DomainConfig")
    return DOMAINS[domain]


def domain_fingerprint(*domains: str | DomainConfig) -> str:
    """16 hex characters over every parameter of ``domains``: a data marker that holds it is stale as soon as
    a domain's definition changes, even when the names, counts and seeds stay the same."""
    import hashlib

    params = [dataclasses.asdict(_domain(d)) for d in domains]
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=list).encode()).hexdigest()[:16]


def render_scene(domain: str | DomainConfig, seed: int,
                 size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene number `seed` of `domain` at `size` (H, W): (rgb uint8 H x W x 3, depth float32 m, valid bool).

    The scene depends only on (domain, seed), so other sizes render the same scene.
    """
    return render(sample_scene(domain, np.random.default_rng(seed)), size)


# --------------------------------------------------------------------------- writing data sets


def _write_one(job: tuple) -> None:
    out, domain, seed, index, size, with_depth, image_ext = job
    rgb, depth, valid = render_scene(domain, seed, size)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_ext in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(image_ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"OpenCV could not encode {image_ext} for scene {seed}")
    atomic_write_bytes(out / "images" / f"{index:06d}{image_ext}", encoded.tobytes())
    if with_depth:
        write_png16(out / "depth" / f"{index:06d}.png", np.where(valid, depth, 0.0), DEPTH_PNG_SCALE)


def write_domain(out_dir: str | os.PathLike, domain: str | DomainConfig, count: int, seed0: int = 0,
                 size: tuple[int, int] = (256, 256), with_depth: bool = True, workers: int = 1,
                 image_ext: str = ".png") -> int:
    """Write `count` scenes (seeds seed0 .. seed0 + count - 1) in the plain folder layout; returns `count`.

    `out_dir/images/{i:06d}.png` (or `.jpg`, quality 95) and, with depth,
    `out_dir/depth/{i:06d}.png`: 16-bit PNG in millimetres (scale 1000, 0 = invalid, clipped at
    65.535 m). Files are written atomically (temporary name, then rename). `workers > 1` renders in
    that many processes.
    """
    if image_ext not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"image_ext must be '.png' or '.jpg', got {image_ext!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if with_depth:
        (out / "depth").mkdir(parents=True, exist_ok=True)
    jobs = [(out, _domain(domain), seed0 + i, i, tuple(size), with_depth, image_ext) for i in range(count)]
    if workers > 1 and count > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=max(1, count // (4 * workers))))
    else:
        for job in jobs:
            _write_one(job)
    return count


def make_demo_data(out_dir: str | os.PathLike, n_source_train: int, n_target_unlabeled: int, n_source_test: int,
                   n_target_test: int, seed: int = 0, size: tuple[int, int] = (256, 256),
                   workers: int = 1, n_source_unlabeled: int = 0) -> dict[str, Path]:
    """Write the demo splits under `out_dir` and return their folders.

    `source_train/` (labeled source), `target_unlabeled/` (images only), `source_test/`,
    `target_test/` (labeled) and, when `n_source_unlabeled` > 0, `source_unlabeled/` (clean
    source-domain images only: the other part of the unlabeled pool). Split k uses the consecutive
    seed range after split k-1's, starting at `seed`, so no scene appears in two splits (the last
    split comes last so that adding it leaves the others' scenes as they were). `out_dir/synth.json`
    records domains, seeds and size.
    """
    splits = [("source_train", "source", n_source_train, True),
              ("target_unlabeled", "target", n_target_unlabeled, False),
              ("source_test", "source", n_source_test, True),
              ("target_test", "target", n_target_test, True)]
    if n_source_unlabeled > 0:
        splits.append(("source_unlabeled", "source", n_source_unlabeled, False))
    out, folders, manifest, next_seed = Path(out_dir), {}, {}, seed
    for name, domain, count, with_depth in splits:
        folders[name] = out / name
        write_domain(folders[name], domain, count, next_seed, size, with_depth, workers)
        manifest[name] = {"domain": domain, "seed0": next_seed, "count": count, "with_depth": with_depth}
        next_seed += count
    (out / "synth.json").write_text(json.dumps({"size": list(size), "splits": manifest}, indent=2))
    return folders


def contact_sheet(domains: tuple[str, ...] = ("source", "target"), count: int = 4, seed: int = 0,
                  size: tuple[int, int] = (160, 160)) -> np.ndarray:
    """RGB uint8 preview: per domain a row of images and a row of inverse depth (near = bright, invalid = black)."""
    rows = []
    for domain in domains:
        images, depths = [], []
        for i in range(count):
            rgb, depth, valid = render_scene(domain, seed + i, size)
            inverse = np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
            low, high = (np.percentile(inverse[valid], [1, 99]) if valid.any() else (0.0, 1.0))
            grey = np.where(valid, np.clip((inverse - low) / max(high - low, 1e-9), 0, 1) * 0.85 + 0.15, 0.0)
            images.append(rgb)
            depths.append(np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2))
        rows += [np.concatenate(images, axis=1), np.concatenate(depths, axis=1)]
    return np.concatenate(rows, axis=0)
