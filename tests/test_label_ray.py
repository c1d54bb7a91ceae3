"""``label --engine ray``: the label-store contract on Ray Data (one local 2-CPU Ray for the whole file)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import ray

from conftest import make_awkward_folder
from pseudodepth import label_ray
from pseudodepth.imageio import read_png16
from pseudodepth.label import LabelSettings, label_folder
from pseudodepth.store import LabelStore, StoreError


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One local Ray for the session. The crash marker path is set before start so every worker inherits it."""
    marker = tmp_path_factory.mktemp("ray") / "crash-once"
    os.environ[label_ray.CRASH_MARKER_ENV] = str(marker)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield marker
    ray.shutdown()
    os.environ.pop(label_ray.CRASH_MARKER_ENV, None)


def _statuses(store) -> dict[str, str]:
    return {r["source"]: r["status"] for r in LabelStore(store).rows()}


def test_awkward_folder_matches_the_local_engine(tmp_path, tiny_model, local_ray):
    expect = make_awkward_folder(tmp_path / "imgs")
    report = label_ray.label_folder_ray("da-v2-tiny", tmp_path / "imgs", tmp_path / "ray", batch_size=3,
                                        progress=False)
    local = label_folder("da-v2-tiny", tmp_path / "imgs", tmp_path / "local", batch_size=2, workers=0,
                         model=tiny_model, progress=False)
    assert (report.ok, report.failed, report.skipped) == (local.ok, local.failed, 0)
    assert _statuses(tmp_path / "ray") == _statuses(tmp_path / "local") == expect
    assert sorted(report.failures) == sorted(local.failures)
    assert not (tmp_path / "ray/manifest.journal").exists()
    ray_rows, local_rows = LabelStore(tmp_path / "ray").rows(), LabelStore(tmp_path / "local").rows()
    for a, b in zip(ray_rows, local_rows):
        assert {k: a[k] for k in ("hash", "error", "height", "width", "label", "teacher")} == \
               {k: b[k] for k in ("hash", "error", "height", "width", "label", "teacher")}
        if a["status"] != "ok":
            continue
        assert a["min"] == pytest.approx(b["min"], rel=1e-5, abs=1e-6)
        assert a["max"] == pytest.approx(b["max"], rel=1e-5, abs=1e-6)
        qa = read_png16(tmp_path / "ray" / a["label"]).astype(int)
        qb = read_png16(tmp_path / "local" / b["label"]).astype(int)
        assert qa.shape == (a["height"], a["width"]) and np.abs(qa - qb).max() <= 1
    assert not list((tmp_path / "ray").rglob(".tmp-*"))


def test_resumes_a_store_and_refuses_another_teacher(tmp_path, tiny_model, local_ray):
    imgs = tmp_path / "imgs"
    make_awkward_folder(imgs)
    first = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False)
    labels = tmp_path / "s/labels"
    mtimes = {p: p.stat().st_mtime_ns for p in labels.rglob("*.png")}
    # same teacher and settings: the local engine's rows are done rows for the Ray engine too
    again = label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, first.ok + first.failed)
    shutil.copy(imgs / "plain.jpg", imgs / "new.jpg")
    (imgs / "sub/new.png").write_bytes((imgs / "sub/deeper/nested.png").read_bytes())
    third = label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", batch_size=2, progress=False)
    assert (third.ok, third.failed, third.skipped) == (2, 0, first.ok + first.failed)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert (labels / "new.png").is_file() and (labels / "sub/new.png").is_file()
    assert len(LabelStore(tmp_path / "s").rows()) == first.ok + first.failed + 2
    with pytest.raises(StoreError, match="--overwrite"):
        label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", settings=LabelSettings(tta="flip"),
                                   progress=False)
    shutil.copy(imgs / "plain.jpg", imgs / "extra.jpg")
    with pytest.raises(ValueError, match="--actors 5 CPU actors cannot run on a Ray cluster of 2 CPUs"):
        label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", num_actors=5, progress=False)
    assert "extra.jpg" not in _statuses(tmp_path / "s")


def test_killed_actor_is_restarted_and_every_image_committed_once(tmp_path, local_ray, monkeypatch):
    rng = np.random.default_rng(1)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (30 + 7 * (i % 2), 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    appended: list[str] = []
    real_append = LabelStore.append

    def recording_append(self, rows):
        appended.extend(r["source"] for r in rows)
        real_append(self, rows)

    monkeypatch.setattr(LabelStore, "append", recording_append)
    local_ray.write_text("crash the first batch that sees this file")
    report = label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", batch_size=2, progress=False)
    assert not local_ray.exists(), "the actor should have crashed once (marker consumed)"
    assert (report.ok, report.failed) == (7, 0)
    assert sorted(appended) == sorted(f"{i}.png" for i in range(7)), "every row committed exactly once"
    store = LabelStore(tmp_path / "s")
    for row in store.rows():
        assert row["status"] == "ok" and store.read_disparity(row).shape == (row["height"], row["width"])
    assert not list((tmp_path / "s").rglob(".tmp-*"))


def test_a_stopped_ray_run_is_one_line_that_says_what_to_do():
    """What the driver turns Ray's errors into (no Ray needed): one line, the actor's own exception when Ray
    wraps one (RayTaskError's ``cause``), what was kept and the command to run again."""
    died = label_ray._ray_failure(ray.exceptions.ActorDiedError(), 2)
    assert isinstance(died, RuntimeError) and "\n" not in str(died)
    assert str(died).startswith("the Ray run stopped: ActorDiedError: The actor died unexpectedly")
    assert "the 2 label(s) committed in this run are kept: run the same command again" in str(died)
    wrapped = RuntimeError("ray::MapWorker traceback\n  File x, line 1\nMemoryError: boom")
    wrapped.cause = MemoryError("killed by the OOM killer\nsecond line")
    line = str(label_ray._ray_failure(wrapped, 0))
    assert "\n" not in line and "MemoryError: killed by the OOM killer (" in line and "lower --batch-size" in line


@pytest.mark.timeout(300)  # its own limit, whatever the default: this test used to wait for ever (issue 12)
def test_batch_out_of_retries_stops_the_run_in_one_line_and_rerunning_resumes(tmp_path, local_ray, monkeypatch):
    """No batch retries: the actor that dies takes its batch with it, and the run ends (instead of waiting for
    ever) with one line that says what to do; what was committed stays, the stopped run's actors are killed
    (their CPU comes back) and the same command finishes the store with every image once, in the same Ray.

    Ray restarts the actor that died as long as a handle to it is alive, and pytest's log capture keeps Ray
    Data's error record (its ``exc_info`` traceback reaches the actor's handle) for the whole test: before the
    run killed its actors, the restarted one kept its CPU and the second run waited for ever (issue 12)."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    monkeypatch.setattr(label_ray, "MAX_BATCH_RETRIES", 0)
    local_ray.write_text("crash the first batch that sees this file")
    with pytest.raises(label_ray.RayRunError) as err:
        label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", batch_size=2, progress=False)
    line = str(err.value)
    assert "\n" not in line and line.startswith("the Ray run stopped: ") and "run the same command again" in line
    assert not local_ray.exists()
    assert err.value.__context__ is None and err.value.__cause__ is None  # no Ray exception (nor its actors) kept
    committed = LabelStore(tmp_path / "s").rows()
    assert len(committed) < 6

    def run_actors() -> list[dict]:
        return [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"].startswith(label_ray.ACTOR_NAMESPACE_PREFIX)]

    deadline = time.monotonic() + 120  # its last decoding tasks may still be finishing on this loaded machine
    while (run_actors() or ray.available_resources().get("CPU", 0) < 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not run_actors(), "the stopped run's actors are killed"
    assert ray.available_resources().get("CPU", 0) == 2, "a stopped run's actor still holds a CPU"
    report = label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "s", batch_size=2, progress=False)
    assert (report.ok, report.skipped) == (6 - len(committed), len(committed))
    rows = LabelStore(tmp_path / "s").rows()
    assert sorted(r["source"] for r in rows) == [f"{i}.png" for i in range(6)]
    assert all(r["status"] == "ok" for r in rows) and not list((tmp_path / "s").rglob(".tmp-*"))


def test_metric_alignment_matches_the_local_engine(tmp_path, tiny_model, local_ray):
    """--align-to on Ray: the same metric labels, scales, shifts and inlier counts as the local engine.

    The Ray CPU actor runs torch on one thread, this process on two: their float32 predictions differ in
    the last bits. With these exact points the inliers used to follow that rounding (63 vs 69 of the same
    points) until the threshold got its floor (``AlignSettings.rel_floor``)."""
    import cv2

    from pseudodepth.align import AlignSettings, sparse_sample
    from pseudodepth.infer import predict

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "sparse").mkdir()
    exact = {}
    for name in ("a", "b", "c"):
        rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "imgs" / f"{name}.png"), rgb[..., ::-1])
        depth = 1.0 / (0.5 * predict(tiny_model, rgb, 42).astype(np.float64) + 0.05)
        points = sparse_sample(depth, depth > 0, 0.1, rng, outlier_fraction=0.2)
        np.save(tmp_path / "sparse" / f"{name}.npy", points)
        u, v = points[:, 0].astype(int), points[:, 1].astype(int)
        exact[name + ".png"] = int(np.sum(np.abs(points[:, 2] / depth[v, u] - 1) < 1e-6))  # not outliers
    (tmp_path / "sparse" / "c.npy").unlink()  # no sparse depth: a failed row with the reason
    settings = LabelSettings(input_size=42, align=AlignSettings(str(tmp_path / "sparse")))
    report = label_ray.label_folder_ray("da-v2-tiny", tmp_path / "imgs", tmp_path / "ray", settings=settings,
                                        progress=False)
    local = label_folder("da-v2-tiny", tmp_path / "imgs", tmp_path / "local", workers=0, settings=settings,
                         model=tiny_model, progress=False)
    assert (report.ok, report.failed) == (local.ok, local.failed) == (2, 1)
    for a, b in zip(LabelStore(tmp_path / "ray").rows(), LabelStore(tmp_path / "local").rows()):
        assert (a["status"], a["error"], a["inliers"]) == (b["status"], b["error"], b["inliers"])
        if a["status"] == "ok":
            assert a["inliers"] == exact[a["source"]]  # every exact point, whatever the thread count
            assert a["scale"] == pytest.approx(b["scale"], rel=1e-4) and a["scale"] == pytest.approx(0.5, rel=1e-3)
            assert a["shift"] == pytest.approx(b["shift"], rel=1e-4, abs=1e-6)
            qa = read_png16(tmp_path / "ray" / a["label"]).astype(int)
            qb = read_png16(tmp_path / "local" / b["label"]).astype(int)
            assert np.abs(qa - qb).max() <= 1
    assert LabelStore(tmp_path / "ray").label_space == "metric_depth"


def test_actor_refuses_weights_with_another_fingerprint(tmp_path, tiny_model):
    """What each actor checks on its node: its model must have the driver's teacher fingerprint."""
    from pseudodepth.models import fingerprint

    settings = LabelSettings()
    teacher = fingerprint(tiny_model, settings.as_dict())
    label_ray._Teacher("da-v2-tiny", settings, str(tmp_path / "s"), {}, teacher)  # the same weights: accepted
    with pytest.raises(RuntimeError, match="teacher fingerprint .* but the driver's has 0123456789abcdef"):
        label_ray._Teacher("da-v2-tiny", settings, str(tmp_path / "s"), {}, "0123456789abcdef")
    with pytest.raises(RuntimeError, match="fingerprint"):  # same weights, other settings: another teacher
        label_ray._Teacher("da-v2-tiny", LabelSettings(tta="flip"), str(tmp_path / "s"), {}, teacher)


def test_cli_engine_ray(tmp_path, local_ray, monkeypatch, capsys):
    from pseudodepth import label as local_engine
    from pseudodepth.cli import main

    def no_local(*args, **kwargs):
        raise AssertionError("--engine ray ran the local engine")

    monkeypatch.setattr(local_engine, "label_folder", no_local)
    expect = make_awkward_folder(tmp_path / "imgs")
    args = ["label", "--engine", "ray", "--model", "da-v2-tiny", "--images", str(tmp_path / "imgs"),
            "--out", str(tmp_path / "s"), "--batch-size", "3"]
    assert main(args) == 0
    out = capsys.readouterr()
    ok = sum(s == "ok" for s in expect.values())
    assert f"labelled {ok} ok, {len(expect) - ok} failed, 0 already done" in out.out
    assert _statuses(tmp_path / "s") == expect
    assert main(args + ["--actors", "5"]) == 0  # nothing left to do: no actors needed
    assert "0 ok, 0 failed" in capsys.readouterr().out
    shutil.copy(tmp_path / "imgs" / "plain.jpg", tmp_path / "imgs" / "more.jpg")
    assert main(args + ["--actors", "5"]) == 2
    assert "cannot run on a Ray cluster of 2 CPUs" in capsys.readouterr().err


def test_confidence_scales_and_changed_sources_match_the_local_engine(tmp_path, tiny_model, local_ray):
    """``--confidence scales`` on Ray writes the local engine's maps; a changed source is relabelled there too."""
    from PIL import Image

    rng = np.random.default_rng(2)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name, shape in (("a.png", (30, 40, 3)), ("b.png", (40, 30, 3)), ("c.png", (30, 40, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(imgs / name)
    settings = LabelSettings(input_size=42, confidence="scales")
    report = label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "ray", batch_size=3, settings=settings,
                                        progress=False)
    label_folder("da-v2-tiny", imgs, tmp_path / "local", workers=0, model=tiny_model, progress=False,
                 settings=settings)
    assert report.ok == 3
    ray_store, local_store = LabelStore(tmp_path / "ray"), LabelStore(tmp_path / "local")
    assert ray_store.meta()["teacher"] == local_store.meta()["teacher"]
    for a, b in zip(ray_store.rows(), local_store.rows()):
        assert a["confidence"] == b["confidence"] and (a["bytes"], a["mtime_ns"]) == (b["bytes"], b["mtime_ns"])
        assert np.abs(ray_store.read_confidence(a) - local_store.read_confidence(b)).max() < 1e-4
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / "b.png")
    again = label_ray.label_folder_ray("da-v2-tiny", imgs, tmp_path / "ray", settings=settings, progress=False)
    assert (again.ok, again.skipped, again.relabelled) == (1, 2, 1)
    row = {r["source"]: r for r in ray_store.rows()}["b.png"]
    assert (row["height"], row["width"]) == (30, 40)
