"""The bundled default model and the README's main job (d2a-demo on samples/)."""
from pathlib import Path

import numpy as np

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
    import pytest

    from d2a_edge import overlay

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(overlay.np, "savetxt", interrupted)
    with pytest.raises(KeyboardInterrupt):
        overlay.write_obj(tmp_path / "m.obj", np.zeros((3, 3)), np.zeros((1, 3), int))
    assert list(tmp_path.iterdir()) == []


def test_demo_rejects_bad_counts_and_reports_a_failed_write(tmp_path, monkeypatch, capsys):
    import cv2
    import pytest
    for flag, value in (("--obj-every", "0"), ("--max-frames", "-1")):
        with pytest.raises(SystemExit) as e:  # argparse: usage error, exit code 2
            demo_main(["--source", str(ROOT / "samples"), "--save", str(tmp_path), flag, value])
        assert e.value.code == 2 and "must be >=" in capsys.readouterr().err
    from d2a_edge.bench import main as bench_main
    for flag, value in (("--batch", "0"), ("--repeats", "0"), ("--rounds", "0"),
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

    import pytest

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


def test_demo_people_draws_every_located_person(tmp_path, capsys):
    """--locate --people 2 draws both people of a two-person frame; --people 1 one of them."""
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
                          "--overlay", "cv", "--locate", "--people", str(n)]) == 0
        vis = cv2.imread(str(out / "frame_000000.png"))
        changed = np.abs(vis.astype(int) - frame).sum(-1) > 30
        changed[:40, :200] = False  # the FPS text
        drawn[n] = (changed[:, :600].mean() > 0.01, changed[:, 650:].mean() > 0.01)
    assert sum(drawn[1]) == 1 and drawn[2] == (True, True), drawn
