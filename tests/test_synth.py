"""pseudodepth.synth: exact depth against analytic references, determinism, and the folder writer."""

from __future__ import annotations

import colorsys
import json
import math

import cv2
import numpy as np
import pytest

from pseudodepth.synth import (
    DOMAINS,
    Box,
    Camera,
    CameraEffects,
    Cylinder,
    DomainConfig,
    Lighting,
    Material,
    Plane,
    Scene,
    Sky,
    Sphere,
    contact_sheet,
    make_demo_data,
    render,
    render_scene,
    rotation,
    sample_scene,
    write_domain,
)

GREY = Material((0.5, 0.5, 0.5), (0.1, 0.1, 0.1), "checkers", 0.3)


def camera_basis(yaw: float, pitch: float) -> tuple[list[float], list[float], list[float]]:
    """Right, down, forward from first principles: forward from yaw/pitch, right = forward x up."""
    forward = [math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
    up = [0.0, 1.0, 0.0]
    right = [forward[1] * up[2] - forward[2] * up[1], forward[2] * up[0] - forward[0] * up[2],
             forward[0] * up[1] - forward[1] * up[0]]
    norm = math.sqrt(sum(c * c for c in right))
    right = [c / norm for c in right]
    down = [forward[1] * right[2] - forward[2] * right[1], forward[2] * right[0] - forward[0] * right[2],
            forward[0] * right[1] - forward[1] * right[0]]
    return right, down, forward


def pixel_ray(camera: Camera, i: int, j: int, height: int, width: int) -> list[float]:
    """World direction of pixel (i, j) with unit camera-z component (slow, per pixel)."""
    focal = (width / 2) / math.tan(math.radians(camera.fov_deg) / 2)
    x, y = (j + 0.5 - width / 2) / focal, (i + 0.5 - height / 2) / focal
    right, down, forward = camera_basis(camera.yaw, camera.pitch)
    return [x * r + y * d + f for r, d, f in zip(right, down, forward)]


def forward_point(camera: Camera, distance: float) -> tuple[float, float, float]:
    _, _, forward = camera_basis(camera.yaw, camera.pitch)
    return tuple(p + distance * f for p, f in zip(camera.position, forward))


# ----------------------------------------------------------------------------- exact depth


def test_camera_basis_matches_first_principles():
    camera = Camera((1.0, 2.0, 3.0), yaw=0.7, pitch=-0.3, fov_deg=70)
    basis = camera.to_world()
    np.testing.assert_allclose(basis.T, np.array(camera_basis(0.7, -0.3)), atol=1e-12)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
    assert np.linalg.det(basis) == pytest.approx(1.0)


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (0.6, -0.25)])
def test_plane_facing_camera_has_constant_z_depth(yaw, pitch):
    camera = Camera((0.5, 1.5, -2.0), yaw=yaw, pitch=pitch, fov_deg=75)
    _, _, forward = camera_basis(yaw, pitch)
    scene = Scene(camera, [Plane(forward_point(camera, 4.25), tuple(-f for f in forward), GREY)])
    rgb, depth, valid = render(scene, (31, 40))
    assert depth.dtype == np.float32 and valid.dtype == bool and rgb.dtype == np.uint8 and rgb.shape == (31, 40, 3)
    assert valid.all()
    np.testing.assert_allclose(depth, 4.25, rtol=1e-6)  # z-depth, not distance to the camera centre


def test_ground_plane_depth_and_sky_mask_match_per_pixel_reference():
    camera = Camera((0.0, 1.6, 0.0), yaw=0.4, pitch=-0.1, fov_deg=80)
    scene = Scene(camera, [Plane((0, 0, 0), (0, 1, 0), GREY)], sky=Sky(clouds=0.5))
    height, width = 24, 32
    _, depth, valid = render(scene, (height, width))
    for i in range(height):
        for j in range(width):
            direction = pixel_ray(camera, i, j, height, width)
            if direction[1] < 0:  # hits y = 0 at t = height / -dy, and t is the z-depth
                assert valid[i, j]
                assert depth[i, j] == pytest.approx(1.6 / -direction[1], rel=1e-5)
            else:
                assert not valid[i, j] and depth[i, j] == 0.0
    assert valid.any() and not valid.all()


def test_sphere_centre_pixel_depth_is_distance_minus_radius():
    camera = Camera((0.3, 1.2, 0.0), yaw=-0.5, pitch=0.2, fov_deg=60)
    scene = Scene(camera, [Sphere(forward_point(camera, 5.0), 0.75, GREY)])
    _, depth, valid = render(scene, (65, 65))
    assert valid[32, 32]
    assert depth[32, 32] == pytest.approx(5.0 - 0.75, rel=1e-6)
    assert not valid[0, 0] and depth[0, 0] == 0.0


def reference_sphere_depth(camera, centre, radius, i, j, height, width) -> float:
    d = pixel_ray(camera, i, j, height, width)
    oc = [o - c for o, c in zip(camera.position, centre)]
    a = sum(x * x for x in d)
    b = sum(x * y for x, y in zip(oc, d))
    c = sum(x * x for x in oc) - radius**2
    disc = b * b - a * c
    return (-b - math.sqrt(disc)) / a if disc >= 0 else math.inf


def test_sphere_in_front_of_wall_matches_per_pixel_reference():
    camera = Camera((0.0, 1.0, 0.0), fov_deg=50)
    centre, radius = (0.4, 1.3, 3.0), 0.9
    scene = Scene(camera, [Plane((0, 0, 6.0), (0, 0, -1), GREY), Sphere(centre, radius, GREY)])
    height, width = 21, 27
    _, depth, valid = render(scene, (height, width))
    assert valid.all()
    for i in range(height):
        for j in range(width):
            expected = min(reference_sphere_depth(camera, centre, radius, i, j, height, width), 6.0)
            assert depth[i, j] == pytest.approx(expected, rel=1e-5)
    assert (depth < 6.0 - 1e-3).any()  # the sphere occludes part of the wall


def test_box_and_cylinder_faces_on_the_optical_axis():
    camera = Camera((0.0, 1.0, 0.0), fov_deg=40)
    size = (33, 33)
    box = Box((0.0, 1.0, 4.0), (0.5, 0.5, 0.4), GREY)
    assert render(Scene(camera, [box]), size)[1][16, 16] == pytest.approx(3.6, rel=1e-6)
    rotated = Box((0.0, 1.0, 4.0), (0.5, 0.5, 0.4), GREY, rotation(yaw=np.pi / 4))
    assert render(Scene(camera, [rotated]), size)[1][16, 16] == pytest.approx(4.0 - 0.4 * math.sqrt(2), rel=1e-5)
    upright = Cylinder((0.0, 1.0, 4.0), 0.3, 0.8, GREY)
    assert render(Scene(camera, [upright]), size)[1][16, 16] == pytest.approx(3.7, rel=1e-6)
    along_axis = Cylinder((0.0, 1.0, 4.0), 0.3, 0.8, GREY, rotation(pitch=np.pi / 2))  # cap faces the camera
    assert render(Scene(camera, [along_axis]), size)[1][16, 16] == pytest.approx(3.2, rel=1e-6)


def test_max_depth_marks_far_pixels_invalid():
    camera = Camera((0.0, 0.0, 0.0))
    scene = Scene(camera, [Plane((0, 0, 8.0), (0, 0, -1), GREY), Sphere((0, 0, 3.0), 0.5, GREY)], max_depth=5.0)
    _, depth, valid = render(scene, (33, 33))
    assert valid[16, 16] and depth[16, 16] == pytest.approx(2.5)
    assert not valid[0, 0] and depth[0, 0] == 0.0
    assert np.array_equal(valid, depth > 0)


def test_shadows_darken_the_ground_behind_an_object():
    camera = Camera((0.0, 2.0, 0.0), pitch=-0.5, fov_deg=60)
    white = Material((0.8, 0.8, 0.8))
    primitives = [Plane((0, 0, 0), (0, 1, 0), white), Box((0, 0.5, 4.0), (0.5, 0.5, 0.5), white)]
    light = Lighting(direction=(-1.0, 1.0, 0.0), ambient=(0.1, 0.1, 0.1))  # shadow falls towards +x
    lit, depth, _ = render(Scene(camera, primitives, replace_shadows(light, False)), (48, 48))
    shadowed, depth_again, _ = render(Scene(camera, primitives, light), (48, 48))
    assert np.array_equal(depth, depth_again)  # shading never changes depth
    darker = shadowed.astype(int).sum(-1) < lit.astype(int).sum(-1) - 30
    assert darker.sum() > 20


def replace_shadows(light: Lighting, shadows: bool) -> Lighting:
    return Lighting(light.direction, light.colour, light.ambient, shadows, light.shininess)


# ----------------------------------------------------------------------------- textures


@pytest.mark.parametrize("pattern", ["plain", "checkers", "stripes", "bricks", "noise", "gradient"])
def test_patterns_mix_between_the_two_colours(pattern):
    rng = np.random.default_rng(0)
    u, v = rng.uniform(-5, 5, 500), rng.uniform(-5, 5, 500)
    material = Material((0.8, 0.2, 0.1), (0.1, 0.3, 0.7), pattern, 0.7, angle=0.3, seed=4)
    albedo = material.albedo(u, v)
    low, high = np.minimum(material.colour, material.colour2), np.maximum(material.colour, material.colour2)
    assert albedo.shape == (500, 3)
    assert (albedo >= low - 1e-12).all() and (albedo <= high + 1e-12).all()
    far = material.albedo(u, v, footprint=np.full(500, 10.0))  # far away: periodic patterns average out
    if pattern in ("checkers", "stripes"):
        mean_colour = 0.5 * (np.array(material.colour) + material.colour2)
        np.testing.assert_allclose(far, np.broadcast_to(mean_colour, far.shape))


def test_unknown_pattern_and_domain_are_refused():
    with pytest.raises(ValueError, match="unknown texture pattern"):
        Material((1, 1, 1), pattern="marble").albedo(np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="unknown scene domain"):
        render_scene("underwater", 0)


# ----------------------------------------------------------------------------- domains


@pytest.mark.parametrize("domain", ["source", "target"])
def test_render_scene_is_deterministic_by_seed(domain):
    first = render_scene(domain, 7, (40, 48))
    again = render_scene(domain, 7, (40, 48))
    other = render_scene(domain, 8, (40, 48))
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_domains_render_with_their_depth_ranges_and_differ_in_appearance():
    rooms = {d: [render_scene(d, seed, (48, 48)) for seed in range(6)] for d in ("source", "target")}
    for domain, rendered in rooms.items():  # closed rooms: every pixel hits a surface
        for rgb, depth, valid in rendered:
            assert valid.all() and 0.05 < depth.min() and depth.max() < DOMAINS[domain].max_depth
            assert rgb.std() > 2
    # the target is the source's scenes through a poor camera: the same depth, other pixels, less contrast
    for (rgb_s, depth_s, _), (rgb_t, depth_t, _) in zip(*rooms.values()):
        assert np.array_equal(depth_s, depth_t) and not np.array_equal(rgb_s, rgb_t)
    contrast = {d: np.mean([rgb.std() for rgb, _, _ in r]) for d, r in rooms.items()}
    assert contrast["target"] < contrast["source"]
    scenes = {d: [render_scene(d, seed, (48, 48)) for seed in range(4)] for d in ("outdoor", "outdoor_shifted")}
    for domain, rendered in scenes.items():  # outdoor: ground, objects and sky (invalid) in both domains
        assert sum((~valid).sum() for _, _, valid in rendered) > 0
        for rgb, depth, valid in rendered:
            assert valid.any() and depth[valid].max() <= DOMAINS[domain].max_depth
            assert np.array_equal(valid, depth > 0)
    # the outdoor shift is in appearance: cool, low light and haze make it bluer than the warm outdoor domain
    blue_minus_red = {d: np.mean([rgb[..., 2].mean() - rgb[..., 0].mean() for rgb, _, _ in r]) for d, r in scenes.items()}
    assert blue_minus_red["outdoor_shifted"] > blue_minus_red["outdoor"] + 10


def _camera_effects_reference(rgb: np.ndarray, effects: CameraEffects) -> np.ndarray:
    """Per pixel, from the definition: hue rotation and desaturation in HSV, contrast towards the mean,
    exposure; then the Gaussian blur (cv2's kernel, the same as the fast path's)."""
    s = min(max(effects.severity, 0.0), 1.0)
    x = rgb.astype(np.float64) / 255
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            h, sat, v = colorsys.rgb_to_hsv(*x[i, j])
            out[i, j] = colorsys.hsv_to_rgb((h + effects.hue * s) % 1.0, sat * (1 - 0.6 * s), v)
    mean = out.mean()
    out = (mean + (out - mean) * (1 - 0.55 * s)) * effects.exposure ** s
    sigma = 2.0 * s * rgb.shape[1] / 128
    if sigma >= 0.3:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), sigma).astype(np.float64)
    return np.round(np.clip(out, 0, 1) * 255)


@pytest.mark.parametrize("severity, hue, exposure", [(0.0, 0.2, 0.5), (0.05, -0.25, 1.4), (0.6, 0.1, 0.7),
                                                     (1.0, -0.2, 1.3), (1.7, 0.25, 0.6)])
def test_camera_effects_match_a_per_pixel_reference(severity, hue, exposure):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    rgb[:4] = 128  # a grey band (no hue) and a constant region
    effects = CameraEffects(severity, hue, exposure)
    got = effects.apply(rgb)
    assert got.dtype == np.uint8 and got.shape == rgb.shape
    if severity == 0.0:
        assert np.array_equal(got, rgb)
    assert np.abs(got.astype(int) - _camera_effects_reference(rgb, effects)).max() <= 1


def test_camera_effects_do_not_change_depth_or_the_clean_domain():
    clean = DOMAINS["source"]
    assert clean.camera_effects == (0.0, 0.0) and sample_scene(clean, np.random.default_rng(5)).camera_effects is None
    effects = sample_scene("target", np.random.default_rng(5)).camera_effects
    assert 0.0 <= effects.severity <= 1.0


def test_custom_domain_config_renders():
    indoor_cylinders = DomainConfig(name="pillars", layout="room", object_kinds={"barrel": 1.0}, n_objects=(2, 2),
                                    object_distance=(1.5, 4.0), floor_styles=("tiles",), wall_styles=("paint",))
    rgb, depth, valid = render_scene(indoor_cylinders, 1, (32, 32))
    assert rgb.shape == (32, 32, 3) and valid.all()


def test_invalid_domain_config_names_the_problem():
    with pytest.raises(ValueError, match="unknown object kind 'dragon'.*unknown surface style 'lava'"):
        DomainConfig(name="bad", layout="outdoor", object_kinds={"dragon": 1.0}, n_objects=(1, 2),
                     object_distance=(1.0, 5.0), floor_styles=("lava",))
    with pytest.raises(ValueError, match="a room needs wall_styles"):
        DomainConfig(name="bad", layout="room", object_kinds={"box": 1.0}, n_objects=(1, 2),
                     object_distance=(1.0, 5.0), floor_styles=("tiles",))


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("domain", ["source", "target"])
def test_write_domain_round_trips_through_cv2(tmp_path, domain):
    size = (40, 56)
    assert write_domain(tmp_path, domain, 3, seed0=11, size=size) == 3
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    for index in range(3):
        rgb, depth, valid = render_scene(domain, 11 + index, size)
        image = cv2.imread(str(tmp_path / "images" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(image[..., ::-1], rgb)
        stored = cv2.imread(str(tmp_path / "depth" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint16 and stored.shape == size
        assert np.array_equal(stored > 0, valid)
        np.testing.assert_allclose(stored[valid] / 1000.0, depth[valid], atol=0.0005 + 1e-6)
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_domain_unlabeled_jpeg_and_workers(tmp_path):
    write_domain(tmp_path / "pool", "target", 2, seed0=3, size=(24, 32), with_depth=False, image_ext=".jpg")
    assert not (tmp_path / "pool" / "depth").exists()
    image = cv2.imread(str(tmp_path / "pool" / "images" / "000001.jpg"))
    assert image.shape == (24, 32, 3)
    write_domain(tmp_path / "serial", "source", 3, size=(24, 32))
    write_domain(tmp_path / "parallel", "source", 3, size=(24, 32), workers=2)
    for sub in ("images/000002.png", "depth/000002.png"):
        assert (tmp_path / "serial" / sub).read_bytes() == (tmp_path / "parallel" / sub).read_bytes()
    with pytest.raises(ValueError, match="image_ext"):
        write_domain(tmp_path / "bad", "source", 1, image_ext=".bmp")


def test_make_demo_data_writes_disjoint_splits(tmp_path):
    folders = make_demo_data(tmp_path, 3, 2, 2, 1, seed=5, size=(24, 24), n_source_unlabeled=2)
    assert set(folders) == {"source_train", "target_unlabeled", "source_test", "target_test", "source_unlabeled"}
    counts = {name: len(list((path / "images").iterdir())) for name, path in folders.items()}
    assert counts == {"source_train": 3, "target_unlabeled": 2, "source_test": 2, "target_test": 1, "source_unlabeled": 2}
    assert not (folders["target_unlabeled"] / "depth").exists() and not (folders["source_unlabeled"] / "depth").exists()
    splits = json.loads((tmp_path / "synth.json").read_text())["splits"]
    assert splits["source_unlabeled"]["domain"] == "source" and list(splits)[-1] == "source_unlabeled"
    # the clean pool comes last: without it, the other splits are the very same scenes
    without = make_demo_data(tmp_path / "without", 3, 2, 2, 1, seed=5, size=(24, 24))
    assert "source_unlabeled" not in without
    for name, folder in without.items():
        assert [p.read_bytes() for p in sorted((folder / "images").iterdir())] == \
               [p.read_bytes() for p in sorted((folders[name] / "images").iterdir())], name
    assert len(list((folders["target_test"] / "depth").iterdir())) == 1
    splits = json.loads((tmp_path / "synth.json").read_text())["splits"]
    seeds = [set(range(s["seed0"], s["seed0"] + s["count"])) for s in splits.values()]
    assert sum(len(s) for s in seeds) == len(set().union(*seeds))
    train = {p.read_bytes() for p in (folders["source_train"] / "images").iterdir()}
    assert not train & {p.read_bytes() for p in (folders["source_test"] / "images").iterdir()}


def test_contact_sheet_layout():
    sheet = contact_sheet(count=2, size=(20, 24))
    assert sheet.shape == (4 * 20, 2 * 24, 3) and sheet.dtype == np.uint8


def test_domain_fingerprint_changes_with_any_parameter_and_only_then():
    import dataclasses

    from pseudodepth.synth import domain_fingerprint

    base = domain_fingerprint("source", "target")
    assert base == domain_fingerprint("source", "target") and len(base) == 16
    assert base != domain_fingerprint("target", "source")
    changed = dataclasses.replace(DOMAINS["target"], camera_effects=(0.0, 0.5))
    assert domain_fingerprint("source", changed) != base
