"""The bundled default model and the README's main job (d2a-demo on samples/)."""
from pathlib import Path

import numpy as np
import pytest

from d2a_edge import MeshRecoverer
from d2a_edge.demo import main as demo_main
from d2a_edge.imageio import read_image

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_runs_on_a_sample():
    rec = MeshRecoverer()  # bundled edge-s, no network, no pickle
    frame = read_image(ROOT / "samples" / "id_0.jpg")
    (p,) = rec(frame)
    assert p.vertices.shape == (rec.bundle.asset.num_vertices, 3)
    assert np.all(np.isfinite(p.vertices)) and p.translation[2] > 0  # in front of the camera
    assert p.joints2d.shape == (25, 2) and np.all(p.joint_sigma > 0)


def test_main_job_writes_overlays(tmp_path):
    assert demo_main(["--source", str(ROOT / "samples"), "--save", str(tmp_path),
                      "--no-display", "--precision", "int8"]) == 0
    assert len(list(tmp_path.glob("frame_*.png"))) == 6
    assert len(list(tmp_path.glob("mesh_*.obj"))) == 6
    assert demo_main(["--source", str(tmp_path / "missing"), "--save", str(tmp_path)]) == 2
    # a bad source fails before the --save folder is made
    assert demo_main(["--source", str(tmp_path / "missing"), "--save", str(tmp_path / "new"),
                      "--no-display"]) == 2
    assert not (tmp_path / "new").exists()
    # a second run into the same folder leaves only its own outputs (6 frames before, 2 now)
    assert demo_main(["--source", str(ROOT / "samples"), "--save", str(tmp_path),
                      "--no-display", "--max-frames", "2", "--overlay", "cv"]) == 0
    assert len(list(tmp_path.glob("frame_*.png"))) == 2
    assert len(list(tmp_path.glob("mesh_*.obj"))) == 2
    # an unreadable image in a folder leaves a gap in the numbering (the rest shifted)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg"):
        (folder / name).write_bytes((ROOT / "samples" / "id_0.jpg").read_bytes())
    (folder / "b.jpg").write_bytes(b"not an image")
    assert demo_main(["--source", str(folder), "--save", str(tmp_path / "o2"), "--no-display",
                      "--overlay", "cv"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").glob("frame_*.png")) == [
        "frame_000000.png", "frame_000002.png"]


def test_demo_save_removes_only_what_a_demo_run_wrote(tmp_path, capsys):
    """--save into a folder of the user's own frame_*.png (no d2a-demo marker), or into the
    source folder itself, is refused with nothing removed (both deleted the user's images);
    a folder a demo run wrote is cleared, its interrupted .partial meshes too."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "frame_000001.png").write_bytes((ROOT / "samples" / "id_0.jpg").read_bytes())
    for save, message in ((theirs, "no d2a-demo run wrote"), (ROOT / "samples", None)):
        args = ["--source", str(ROOT / "samples"), "--save", str(save), "--no-display"]
        if message is None:  # the source folder
            args = ["--source", str(theirs), "--save", str(theirs), "--no-display"]
            message = "is the source folder"
        assert demo_main(args) == 2
        assert message in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["frame_000001.png"]
    ours = tmp_path / "ours"
    assert demo_main(["--source", str(ROOT / "samples"), "--save", str(ours), "--no-display",
                      "--max-frames", "1", "--overlay", "cv"]) == 0
    (ours / "mesh_000007.obj.partial").write_text("v 0 0 0")  # a run killed mid-write
    assert demo_main(["--source", str(ROOT / "samples"), "--save", str(ours), "--no-display",
                      "--max-frames", "1", "--overlay", "cv"]) == 0
    assert sorted(p.name for p in ours.iterdir()) == [".d2a-demo", "frame_000000.png",
                                                      "mesh_000000.obj"]


def test_write_obj_leaves_no_partial_file_when_interrupted(tmp_path, monkeypatch):

    from d2a_edge import overlay

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(overlay.np, "savetxt", interrupted)
    with pytest.raises(KeyboardInterrupt):
        overlay.write_obj(tmp_path / "m.obj", np.zeros((3, 3)), np.zeros((1, 3), int))
    assert list(tmp_path.iterdir()) == []


def test_demo_rejects_bad_counts_and_reports_a_failed_write(tmp_path, monkeypatch, capsys):
    import cv2
    for flag, value in (("--obj-every", "0"), ("--max-frames", "-1"), ("--threads", "0")):
        with pytest.raises(SystemExit) as e:  # argparse: usage error, exit code 2
            demo_main(["--source", str(ROOT / "samples"), "--save", str(tmp_path), flag, value])
        assert e.value.code == 2 and "must be >=" in capsys.readouterr().err
    from d2a_edge.bench import main as bench_main
    for flag, value in (("--batch", "0"), ("--repeats", "0"), ("--rounds", "0"), ("--threads", "0"),
                        ("--device", "gpu"), ("--json", str(tmp_path / "no" / "b.json"))):
        with pytest.raises(SystemExit) as e:  # was: a numpy error, NaN medians, silently CPU,
            bench_main([flag, value])         # a traceback after the whole run
        assert e.value.code == 2 and flag in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    for images, message in ((tmp_path / "missing", "neither a camera"),
                            (tmp_path / "empty", "holds no images")):
        with pytest.raises(SystemExit) as e:  # was: an InputError traceback
            bench_main(["--images", str(images)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert demo_main(["--source", str(ROOT / "samples"), "--no-display"]) == 2
    assert "--no-display without --save" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert demo_main(["--source", str(ROOT / "samples"), "--save", str(tmp_path / "a_file"),
                      "--no-display"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setattr(cv2, "imwrite", lambda path, image: False)  # e.g. a full disk
    assert demo_main(["--source", str(ROOT / "samples"), "--save", str(tmp_path / "o"),
                      "--no-display", "--overlay", "cv"]) == 2
    assert "could not write" in capsys.readouterr().err


def test_bench_takes_the_precisions_in_turn(tmp_path, capsys):
    """d2a-bench runs every precision and batch in each round and reports the per-round ratio
    to the first precision, which is exactly 1 for the first itself."""
    import json

    from d2a_edge.bench import main as bench_main
    out = tmp_path / "bench.json"
    assert bench_main(["--precision", "fp32", "int8", "--batch", "1", "2", "--repeats", "5",
                       "--rounds", "2", "--warmup", "0", "--images", str(ROOT / "samples"),
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["precision"], r["batch"]) for r in rows] == [
        ("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)]
    for r in rows:
        assert r["rounds"] == 2 and len(r["round_total_ms"]) == 2
        assert all(t > 0 for t in r["round_total_ms"]) and r["median_ms"]["engine"] > 0
        first = next(q for q in rows if q["precision"] == "fp32" and q["batch"] == r["batch"])
        assert np.allclose(r["ratio_to_fp32"], np.array(r["round_total_ms"])
                           / np.array(first["round_total_ms"]))
    assert rows[0]["ratio_to_fp32"] == [1.0, 1.0]
    assert "same round" in capsys.readouterr().out


def test_committed_weights_fit_the_30_mb_budget():
    """Every file of the bundled models together (graphs, body model, manifest) stays within the
    project's 30 MB (decimal) for committed weights; the manifest names each graph's size and
    hash as they are on disk."""
    import json

    from d2a_edge.body import file_sha256
    models = ROOT / "d2a_edge" / "models"
    total = sum(f.stat().st_size for f in models.rglob("*") if f.is_file())
    assert total <= 30_000_000, f"{total / 1e6:.2f} MB"
    for manifest in models.glob("*/manifest.json"):
        for art in json.loads(manifest.read_text())["artifacts"].values():
            path = manifest.parent / art["file"]
            assert path.stat().st_size == art["bytes"] and file_sha256(path) == art["sha256"]


def test_write_obj_leaves_no_partial_file_on_a_full_disk(tmp_path, monkeypatch):
    """An OBJ that cannot be written in full leaves nothing behind (a 69 KB partial mesh was
    left on a full disk), and the error names the file."""
    import errno


    from d2a_edge import overlay
    verts, faces = np.zeros((4, 3), np.float32), np.array([[0, 1, 2], [1, 2, 3]])
    overlay.write_obj(tmp_path / "ok.obj", verts, faces)
    assert (tmp_path / "ok.obj").read_text().count("\nf ") == 2
    real, calls = np.savetxt, []

    def savetxt(f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the faces, after the vertices went out
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, *a, **k)

    monkeypatch.setattr(np, "savetxt", savetxt)
    with pytest.raises(OSError, match="could not write .*full.obj: No space left"):
        overlay.write_obj(tmp_path / "full.obj", verts, faces)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.obj"]


def test_demo_locate_counts_and_saves_only_the_frames_with_a_person(tmp_path, capsys):
    """With --locate, a frame with nobody in it is drawn without a mesh, writes no OBJ, and the
    summary says how many frames had a person (it said only '2 frames')."""
    import cv2
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((ROOT / "samples" / "id_0.jpg").read_bytes())
    cv2.imwrite(str(folder / "b.png"), np.full((192, 192, 3), 90, np.uint8))  # an empty scene
    assert demo_main(["--source", str(folder), "--save", str(tmp_path / "o"), "--no-display",
                      "--overlay", "cv", "--locate"]) == 0
    assert "2 frames (1 with a person)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        ".d2a-demo", "frame_000000.png", "frame_000001.png", "mesh_000000.obj"]


@pytest.mark.parametrize("mode", ["--locate", "--track"])
def test_demo_people_draws_every_located_person(tmp_path, mode):
    """--people 2 draws both people of a two-person frame (--track's first frame locates them
    all); --people 1 one of them."""
    import cv2
    folder = tmp_path / "imgs"
    folder.mkdir()
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[200:584, 100:484] = read_image(ROOT / "samples" / "id_0.jpg")
    frame[250:634, 750:1134] = read_image(ROOT / "samples" / "id_2.jpg")
    cv2.imwrite(str(folder / "two.png"), frame)
    drawn = {}
    for n in (1, 2):
        out = tmp_path / f"o{n}"
        assert demo_main(["--source", str(folder), "--save", str(out), "--no-display",
                          "--overlay", "cv", mode, "--people", str(n)]) == 0
        vis = cv2.imread(str(out / "frame_000000.png"))
        changed = np.abs(vis.astype(int) - frame).sum(-1) > 30
        changed[:40, :200] = False  # the FPS text
        drawn[n] = (changed[:, :600].mean() > 0.01, changed[:, 650:].mean() > 0.01)
    assert sum(drawn[1]) == 1 and drawn[2] == (True, True), drawn


def _read_obj(path):
    lines = Path(path).read_text().splitlines()
    v = np.array([[float(x) for x in l.split()[1:]] for l in lines if l.startswith("v ")])
    f = np.array([[int(x) for x in l.split()[1:]] for l in lines if l.startswith("f ")])
    return v, f


def test_write_obj_round_trips_with_1_based_faces(tmp_path):
    """OBJ indices start at 1 (0-based faces shift every triangle by one vertex in Blender or
    MeshLab, and index 0 is an error there); vertices keep their x, y, z order."""
    from d2a_edge.overlay import write_obj
    verts = np.array([[0.1, -0.2, 3.0], [0.4, 0.5, 3.1], [-0.3, 0.25, 2.9], [0.0, 0.0, 3.5]],
                     np.float32)
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    write_obj(tmp_path / "m.obj", verts, faces)
    v, f = _read_obj(tmp_path / "m.obj")
    np.testing.assert_allclose(v, verts, atol=1e-5)
    np.testing.assert_array_equal(f, faces + 1)


def _demo(*args):
    from d2a_edge.demo import main as demo_main
    return demo_main([*map(str, args), "--no-display", "--overlay", "cv"])


def test_demo_writes_an_obj_every_n_frames_of_the_chosen_mesh(tmp_path):
    """--obj-every 2 writes the meshes of frames 0, 2, 4 (every frame's PNG); --mesh coarse
    writes the coarse sub-mesh, which is the SDK's coarse mesh for that frame."""
    from d2a_edge import MeshRecoverer
    from d2a_edge.imageio import read_image
    out = tmp_path / "o"
    assert _demo("--source", ROOT / "samples", "--save", out, "--max-frames", 5,
                 "--obj-every", 2, "--mesh", "coarse") == 0
    assert len(list(out.glob("frame_*.png"))) == 5
    assert sorted(p.name for p in out.glob("mesh_*.obj")) == [
        "mesh_000000.obj", "mesh_000002.obj", "mesh_000004.obj"]
    v, f = _read_obj(out / "mesh_000000.obj")
    (p,) = MeshRecoverer(mesh="coarse")(read_image(ROOT / "samples" / "id_0.jpg"))
    assert len(v) == len(p.vertices) < MeshRecoverer().bundle.asset.num_vertices
    np.testing.assert_allclose(v, p.vertices, atol=2e-5)
    np.testing.assert_array_equal(f, p.faces + 1)


def test_demo_stops_before_the_disk_fills(tmp_path, monkeypatch, capsys):
    """--save with under --keep-free MB left on the disk: the demo stops with an error that
    names the option and keeps the frames it saved (it saved one 1-3 MB frame after another
    until a write failed on the full disk)."""
    import shutil
    disk_usage = shutil.disk_usage
    free_mb = iter([9000, 600, 499])  # before frames 0, 1, 2

    def usage(path):
        return disk_usage(path)._replace(free=int(next(free_mb) * 1e6))

    monkeypatch.setattr(shutil, "disk_usage", usage)
    out = tmp_path / "o"
    assert _demo("--source", ROOT / "samples", "--save", out) == 2
    err = capsys.readouterr().err
    assert "stopped after saving 2 frames: 499 MB left" in err and "--keep-free 500 MB" in err
    assert len(list(out.glob("frame_*.png"))) == len(list(out.glob("mesh_*.obj"))) == 2
    free_mb = iter([499])
    assert _demo("--source", ROOT / "samples", "--save", out, "--max-frames", 1,
                 "--keep-free", 0) == 0


def test_demo_flip_gives_the_flip_averaged_mesh(tmp_path):
    """--flip reaches the recoverer: the OBJ is MeshRecoverer(flip=True)'s mesh."""
    from d2a_edge import MeshRecoverer
    from d2a_edge.imageio import read_image
    frame = read_image(ROOT / "samples" / "id_0.jpg")
    assert _demo("--source", ROOT / "samples", "--save", tmp_path / "flip", "--max-frames", 1,
                 "--flip") == 0
    v, _ = _read_obj(tmp_path / "flip" / "mesh_000000.obj")
    np.testing.assert_allclose(v, MeshRecoverer(flip=True)(frame)[0].vertices, atol=2e-5)
    assert np.abs(v - MeshRecoverer()(frame)[0].vertices).max() > 1e-3


def test_demo_threads_reaches_the_engine(tmp_path, monkeypatch):
    """--threads N: the demo's recoverer gives ONNX Runtime's engine N threads."""
    from d2a_edge import recoverer
    made = []
    real = recoverer.MeshRecoverer
    monkeypatch.setattr(recoverer, "MeshRecoverer",
                        lambda *a, **kw: made.append(real(*a, **kw)) or made[-1])
    assert _demo("--source", ROOT / "samples", "--save", tmp_path / "t", "--max-frames", 1,
                 "--backend", "onnxruntime", "--threads", 1) == 0
    assert made[0].backend.session.get_session_options().intra_op_num_threads == 1


def test_demo_track_smooths_unless_no_smoothing(tmp_path):
    """--track --no-smoothing gives track()'s unsmoothed meshes, --track alone the smoothed
    ones (the third frame's OBJ compared)."""
    from d2a_edge import MeshRecoverer
    from d2a_edge.imageio import open_source
    rec = MeshRecoverer()
    for smoothing, flag in ((False, ["--no-smoothing"]), (True, [])):
        out = tmp_path / f"track_{smoothing}"
        assert _demo("--source", ROOT / "samples", "--save", out, "--max-frames", 3, "--track",
                     *flag) == 0
        frames = (f for _, f in zip(range(3), open_source(ROOT / "samples")))
        want = [people for _, _, people in rec.track(frames, smoothing=smoothing)]
        v, _ = _read_obj(out / "mesh_000002.obj")
        np.testing.assert_allclose(v, want[2][0].vertices, atol=2e-5, err_msg=str(smoothing))


def test_demo_overlay_uses_the_recoverers_camera_and_sigma_scale(tmp_path, monkeypatch):
    """On a non-square frame the overlay is drawn with the camera the meshes were recovered
    with (its 2D joints are the projections of its 3D joints), and joints turn red at twice
    the model's typical σ (README)."""
    import cv2

    from d2a_edge import demo, load_bundle, overlay
    from d2a_edge.camera import project
    folder = tmp_path / "imgs"
    folder.mkdir()
    frame = np.full((384, 640, 3), 90, np.uint8)
    frame[:, 160:544] = cv2.imread(str(ROOT / "samples" / "id_0.jpg"))
    cv2.imwrite(str(folder / "a.png"), frame)
    seen, scales = [], []
    render, draw_joints = demo.render, overlay.draw_joints

    def spy_render(frame, people, K, *args, **kwargs):
        seen.append((frame.shape, people, K))
        return render(frame, people, K, *args, **kwargs)

    def spy_joints(*args, sigma_full=0.1, **kwargs):
        scales.append(sigma_full)
        return draw_joints(*args, sigma_full=sigma_full, **kwargs)

    monkeypatch.setattr(demo, "render", spy_render)
    monkeypatch.setattr(overlay, "draw_joints", spy_joints)
    assert _demo("--source", folder, "--save", tmp_path / "o") == 0
    (shape, (p,), K), = seen
    assert shape == (384, 640, 3)
    np.testing.assert_allclose(project(p.joints3d, K), p.joints2d, atol=0.05)
    assert scales == [pytest.approx(2 * load_bundle().sigma_reference)]


def test_demo_refuses_the_source_folder_however_it_is_spelled(tmp_path, monkeypatch, capsys):
    """--save naming the source folder by another path (relative against absolute) is refused
    before anything is written (the overlays went into the image folder, and a later run read
    them as input)."""
    import shutil
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(ROOT / "samples" / "id_0.jpg", folder / "a.jpg")
    monkeypatch.chdir(tmp_path)
    for source, save in (("imgs", folder), (folder, "imgs"), ("imgs", "imgs/../imgs")):
        assert _demo("--source", source, "--save", save) == 2
        assert "is the source folder" in capsys.readouterr().err
        assert [p.name for p in folder.iterdir()] == ["a.jpg"]


def test_demo_shows_each_overlay_and_stops_on_q(monkeypatch, capsys):
    """With a display, every overlay is shown in the d2a-demo window, and q (or Esc) ends the
    demo normally."""
    import cv2

    from d2a_edge import demo
    from d2a_edge.demo import main as demo_main
    shown, keys = [], iter([-1, ord("q")])
    monkeypatch.setattr(demo, "_can_show", lambda: True)
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append((name, image.shape)))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: next(keys))
    assert demo_main(["--source", str(ROOT / "samples"), "--overlay", "cv"]) == 0
    assert shown == [("d2a-demo", (384, 384, 3))] * 2  # the second frame's q ended it
    assert "d2a-demo: 2 frames" in capsys.readouterr().out  # the frame of the q counts


def test_demo_refuses_the_source_folder_behind_a_missing_folder(tmp_path, monkeypatch):
    """'x/../imgs' with no x: save.exists() is False, so the resolved paths are not compared;
    mkdir(parents=True) then makes x and the overlays go into imgs, the source folder (a later
    run reads them as input images)."""
    import shutil
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(ROOT / "samples" / "id_0.jpg", folder / "a.jpg")
    monkeypatch.chdir(tmp_path)
    assert _demo("--source", "imgs", "--save", "x/../imgs") == 2
    assert [p.name for p in folder.iterdir()] == ["a.jpg"]


def test_demo_keep_free_measures_the_disk_holding_the_save_folder(tmp_path, monkeypatch, capsys):
    """--keep-free is checked on the disk that holds the --save folder. Kills the mutants that
    asked shutil.disk_usage about '.' (the working directory) or about the folder's parent: the
    existing test's fake disk_usage ignores its argument, so a demo run from a roomy disk but
    saving onto a nearly full one (an SD card, a mounted share) would fill it unchecked."""
    import shutil
    disk_usage = shutil.disk_usage
    out = (tmp_path / "o").resolve()

    def usage(path):  # only the save folder's disk is nearly full
        free = 100e6 if Path(path).resolve() == out else 1e12
        return disk_usage(path)._replace(free=int(free))

    monkeypatch.setattr(shutil, "disk_usage", usage)
    assert _demo("--source", ROOT / "samples", "--save", out, "--max-frames", 1) == 2
    assert "stopped after saving 0 frames: 100 MB left" in capsys.readouterr().err
    assert not list(out.glob("frame_*.png"))


def test_keep_free_stops_only_under_the_limit_and_is_never_negative(tmp_path, monkeypatch,
                                                                     capsys):
    """Exactly --keep-free MB free is enough (the option stops *under* it; mutant `free <=
    keep_free_mb` stopped there), and a negative --keep-free is a usage error like the other
    counts (mutant `type=int` took -1 silently, which disables the check)."""
    import shutil
    disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: disk_usage(path)._replace(free=500_000_000))
    out = tmp_path / "o"
    assert _demo("--source", ROOT / "samples", "--save", out, "--max-frames", 1) == 0
    assert len(list(out.glob("frame_*.png"))) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _demo("--source", ROOT / "samples", "--save", out, "--keep-free", -1)
    assert e.value.code == 2 and "must be >=" in capsys.readouterr().err


@pytest.mark.parametrize("entry, prog, args", [
    ("train", "d2a-train", ["--help"]), ("evaluate", "d2a-eval", ["--help"]),
    ("ablation", "d2a-ablation", ["--help"]),
    ("data", "d2a-data", ["generate", "--split", "id", "--num", "1", "--out", "unused"])])
def test_training_commands_without_the_train_extra_name_it(entry, prog, args, tmp_path):
    """`pip install d2a-edge` installs the SDK alone: these commands died with a
    ModuleNotFoundError traceback (torch, tqdm) instead of naming the [train] extra."""
    import subprocess
    import sys
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[prog] == f"d2a_edge._entry:{entry}"
    code = ("import sys; sys.modules['torch'] = sys.modules['tqdm'] = None; "
            f"from d2a_edge._entry import {entry}; sys.exit({entry}())")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"{prog}: error: needs the [train] extra" in r.stderr and "Traceback" not in r.stderr


def test_torch_backend_without_torch_names_the_extra():
    """Without torch the torch backend said 'no PyTorch checkpoint' and gave a recipe that
    itself needs torch."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "from d2a_edge import MeshRecoverer\n"
            "try:\n    MeshRecoverer(backend='torch')\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("BackendUnavailable the torch backend needs the [train] extra"), \
        r.stdout + r.stderr


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'd2a_edge.training.gone'",
                        name="d2a_edge.training.gone"),
    ModuleNotFoundError("a module not found, without a name"),
    ImportError("cannot import name 'x' from 'torch'", name="torch")])
def test_entry_points_show_our_own_import_errors(monkeypatch, capsys, error):
    """Only a missing third-party module is the missing [train] extra; our own missing module
    (a packaging bug), an error without a module name, or an ImportError from an installed
    package propagate as they are instead of 'needs the [train] extra, and ... is not
    installed'."""
    from d2a_edge import _entry

    def fail(module):
        raise error

    monkeypatch.setattr(_entry.importlib, "import_module", fail)
    with pytest.raises(type(error)) as e:
        _entry.train()
    assert e.value is error and "needs the [train] extra" not in capsys.readouterr().err
