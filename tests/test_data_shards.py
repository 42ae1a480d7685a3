"""Shard writer, resume, determinism, bad input, the torch Datasets and the d2a-data CLI."""
import contextlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import requires_anny, requires_torch

pytestmark = requires_anny
SIZE = 48


def _cfg(out, **kw):
    from d2a_edge.training.data.shards import GenerateConfig
    args = dict(split="id", num=10, out=str(out), size=SIZE, seed=5, shard_size=4)
    args.update(kw)
    return GenerateConfig(**args)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from d2a_edge.training.data.shards import generate
    out = tmp_path_factory.mktemp("ref")
    generate(_cfg(out))
    return out


def test_layout_and_manifest(reference):
    man = json.loads((reference / "manifest.json").read_text())
    assert [s["count"] for s in man["shards"]] == [4, 4, 2]
    assert all(s["complete"] for s in man["shards"])
    assert man["schema"]["image"] == {"shape": [SIZE, SIZE, 3], "dtype": "uint8"}
    img = np.load(reference / "shard_00002" / "image.npy", mmap_mode="r")
    assert isinstance(img, np.memmap) and img.shape == (2, SIZE, SIZE, 3)
    assert not list(reference.glob("*.partial"))


def test_a_damaged_manifest_is_a_clear_error(tmp_path):
    from d2a_edge.training.data.shards import read_manifest
    for text, match in (("[]", "corrupt \\(a list"), ("{ not json", "manifest.json is corrupt")):
        (tmp_path / "manifest.json").write_text(text)  # was: AttributeError / a bare JSON error
        with pytest.raises(ValueError, match=match):
            read_manifest(tmp_path)


def test_same_seed_gives_byte_identical_shards(reference, tmp_path):
    from d2a_edge.training.data.shards import generate
    generate(_cfg(tmp_path / "again"))
    assert _files(tmp_path / "again") == _files(reference)
    generate(_cfg(tmp_path / "other", seed=6))
    other = np.load(tmp_path / "other" / "shard_00000" / "image.npy")
    assert not np.array_equal(other, np.load(reference / "shard_00000" / "image.npy"))


def test_worker_count_does_not_change_the_bytes(reference, tmp_path):
    from d2a_edge.training.data.shards import generate
    generate(_cfg(tmp_path / "w2", workers=2))
    assert _files(tmp_path / "w2") == _files(reference)


def test_resume_keeps_finished_shards(reference, tmp_path):
    from d2a_edge.training.data.shards import generate
    out = tmp_path / "resume"
    generate(_cfg(out))
    kept = {p: p.stat().st_mtime_ns for p in (out / "shard_00000").iterdir()}
    kept.update({p: p.stat().st_mtime_ns for p in (out / "shard_00001").iterdir()})
    # simulate an interrupted run: the last shard is gone, a half-written one is left behind
    for p in (out / "shard_00002").iterdir():
        p.unlink()
    (out / "shard_00002").rmdir()
    (out / "shard_00002.partial").mkdir()
    (out / "shard_00002.partial" / "image.npy").write_bytes(b"junk")
    man = json.loads((out / "manifest.json").read_text())
    man["shards"][2]["complete"] = False
    (out / "manifest.json").write_text(json.dumps(man))
    done = []
    generate(_cfg(out), on_shard=lambda e: done.append(e["name"]))
    assert done == ["shard_00002"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert _files(out) == _files(reference)


def test_resume_regenerates_a_shard_with_a_truncated_file(reference, tmp_path):
    from d2a_edge.training.data.shards import generate
    out = tmp_path / "trunc"
    generate(_cfg(out))
    path = out / "shard_00001" / "depth.npy"
    path.write_bytes(path.read_bytes()[:100])
    done = []
    generate(_cfg(out), on_shard=lambda e: done.append(e["name"]))
    assert done == ["shard_00001"] and _files(out) == _files(reference)


def test_changed_settings_refuse_to_mix(reference, tmp_path):
    from d2a_edge.training.data.shards import generate
    out = tmp_path / "mix"
    generate(_cfg(out, num=4))
    with pytest.raises(ValueError, match="another --out") as e:
        generate(_cfg(out, num=4, seed=99))
    assert "seed 5 -> 99" in str(e.value) and "num_samples" not in str(e.value)  # named, not
    # two whole config dicts


@pytest.mark.parametrize("kw,match", [(dict(num=0), "--num must be >= 1"),
                                      (dict(num=-3), "--num must be >= 1"),
                                      (dict(size=4), "--size must be >= 16"),
                                      (dict(split="train"), "--split must be one of")])
def test_bad_arguments(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **kw)


def test_bad_backgrounds_folder_fails_before_rendering(tmp_path):
    from d2a_edge.training.data.shards import generate
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        generate(_cfg(tmp_path / "out", backgrounds=str(tmp_path / "empty")))
    assert not (tmp_path / "out").exists()  # no empty dataset folder left behind


def test_user_backgrounds_are_used(tmp_path):
    from d2a_edge.training.data.appearance import Backgrounds
    (tmp_path / "bg").mkdir()
    cv2.imwrite(str(tmp_path / "bg" / "a.png"), np.full((80, 120, 3), (10, 200, 30), np.uint8))
    bg = Backgrounds(tmp_path / "bg").sample(np.random.default_rng(1), 32)
    assert bg.shape == (32, 32, 3) and tuple(bg[5, 5]) == (30, 200, 10)  # BGR file -> RGB


def test_unwritable_output_dir(tmp_path):
    from d2a_edge.training.data.shards import generate
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError, match="cannot write to output directory"):
        generate(_cfg(blocker / "out"))


def test_missing_egl_is_a_clear_error(tmp_path, monkeypatch):
    """In-process (monkeypatched context creation) and in the generate workers (no EGL vendor
    library, as on a machine without libegl-mesa0)."""
    import moderngl

    from d2a_edge.training.data import render
    from d2a_edge.training.data.shards import generate

    with monkeypatch.context() as m:
        def no_egl(**kwargs):
            raise Exception("eglGetDisplay failed")  # what glcontext raises without libEGL
        m.setattr(render, "_CONTEXTS", {})
        m.setattr(moderngl, "create_standalone_context", no_egl)
        with pytest.raises(RuntimeError, match="headless EGL.*libegl1"):
            render.egl_context()
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", str(tmp_path / "no_vendor.json"))
    with pytest.raises(RuntimeError, match="headless EGL.*libegl1"):
        generate(_cfg(tmp_path / "noegl", num=2))
    man = json.loads((tmp_path / "noegl" / "manifest.json").read_text())
    assert not any(s["complete"] for s in man["shards"])


@requires_torch
def test_shard_dataset_tensors(reference):
    import torch

    from d2a_edge.camera import bbox_info
    from d2a_edge.training.data.dataset import ShardDataset
    ds = ShardDataset(reference)
    assert len(ds) == 10 and ds.split == "id"
    item = ds[9]
    raw = np.load(reference / "shard_00002" / "kp2d.npy")[1]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["depth"].shape == (SIZE, SIZE) and item["mask"].shape == (SIZE, SIZE)
    np.testing.assert_array_equal(item["kp2d"].numpy(), raw)
    s = ds.sample(9)
    np.testing.assert_allclose(item["bbox_info"].numpy(),
                               bbox_info(s["crop_box"], s["K"]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["rotmats"].shape == (4, 25, 3, 3)
    with pytest.raises(IndexError):
        ds[10]


@requires_torch
def test_incomplete_dataset_is_refused(reference, tmp_path):
    from d2a_edge.training.data.dataset import ShardDataset
    out = tmp_path / "inc"
    out.mkdir()
    man = json.loads((reference / "manifest.json").read_text())
    man["shards"][1]["complete"] = False
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="incomplete"):
        ShardDataset(out)
    with pytest.raises(FileNotFoundError, match="d2a-data generate"):
        ShardDataset(tmp_path)


@requires_torch
def test_on_the_fly_matches_shards(reference):
    from d2a_edge.training.data.dataset import OnTheFlyDataset, ShardDataset
    fly, ds = OnTheFlyDataset("id", 10, seed=5, image_size=SIZE), ShardDataset(reference)
    assert len(fly) == 10
    a, b = fly[6], ds[6]
    for key in ("rotmats", "betas", "transl", "joints3d", "kp2d", "K", "crop_box"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-4, err_msg=key)
    inter = (a["mask"] * b["mask"]).sum()
    assert inter / ((a["mask"] + b["mask"]) > 0).sum() > 0.99
    with pytest.raises(ValueError, match="size"):
        OnTheFlyDataset("id", 0)


@requires_torch
def test_on_the_fly_in_dataloader_workers():
    """Spawned workers (after the parent rendered) each build their own EGL context; forked
    ones would deadlock in Mesa, so they get a clear error instead."""
    import torch

    from d2a_edge.training.data.dataset import OnTheFlyDataset
    fly = OnTheFlyDataset("ood", 4, seed=2, image_size=32)
    first = fly[0]["joints2d"]
    forked = torch.utils.data.DataLoader(fly, batch_size=2, num_workers=1,
                                         multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match="forked from one that already created an EGL"):
        list(forked)
    loader = torch.utils.data.DataLoader(fly, batch_size=2, num_workers=2,
                                         multiprocessing_context="spawn")
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3]]
    np.testing.assert_allclose(batches[0]["joints2d"][0].numpy(), first.numpy(), atol=1e-3)
    assert all(b["mask"].sum() > 0 for b in batches)
    # training's loader spawns its rendering workers on the CPU too once this process has
    # rendered (d2a-train --init BUNDLE renders its BatchNorm crops before the loader starts)
    from _batches import tiny_config
    from d2a_edge.training.distributed import Dist
    from d2a_edge.training.feed import make_loader
    cfg = tiny_config(train={"batch_size": 2})
    train_loader = make_loader(fly, cfg, Dist(), 0, workers=1)
    assert train_loader.multiprocessing_context.get_start_method() == "spawn"
    assert len(next(iter(train_loader))["index"]) == 2


@requires_torch
def test_batched_getitems_match_single_samples_across_splits():
    """``__getitems__`` (one render pass per part) returns, in the sampler's order, what
    ``__getitem__`` returns one by one; ``index`` is the position in the concatenation."""
    from d2a_edge.training.data.dataset import ConcatOnTheFly, OnTheFlyDataset
    both = ConcatOnTheFly([OnTheFlyDataset("id", 3, seed=4, image_size=32),
                           OnTheFlyDataset("ood", 3, seed=5, image_size=32)])
    order = [4, 0, 5, 2]
    batch = both.__getitems__(order)
    assert [int(b["index"]) for b in batch] == order
    for i, b in zip(order, batch):
        one = both[i]
        for key in ("rotmats", "transl", "joints2d"):
            np.testing.assert_allclose(b[key].numpy(), one[key].numpy(), atol=1e-3, err_msg=key)
    with pytest.raises(IndexError, match="out of range"):
        both.datasets[0].__getitems__([0, 3])


def test_cli_generate_preview_and_errors(tmp_path, capsys):
    from d2a_edge.training.data.cli import main
    out = tmp_path / "cli"
    main(["generate", "--split", "ood", "--num", "3", "--size", str(SIZE), "--seed", "1",
          "--out", str(out)])
    assert "wrote 3 ood samples" in capsys.readouterr().out
    png = tmp_path / "sheet.png"
    main(["preview", str(out), "--out", str(png)])
    sheet = cv2.imread(str(png))
    assert sheet.shape == (2 * SIZE, 2 * 4 * SIZE, 3) and sheet.mean() > 10
    with pytest.raises(SystemExit) as e:
        main(["generate", "--num", "0", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--num must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0 and "manifest.json" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["preview", str(tmp_path / "nothing"), "--out", str(png)])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # was: a cv2.error traceback
        main(["preview", str(out), "--out", str(tmp_path / "sheet.txt")])
    assert e.value.code == 2 and "must end in .png" in capsys.readouterr().err
    assert os.path.getsize(png) > 0


def test_preview_writes_a_jpeg_without_opencv_warnings(tmp_path, capfd):
    """d2a-data preview --out sheet.jpg passed PNG's compression flag to the JPEG write, and
    OpenCV printed "[ WARN ...] An unsupported key(16) was specified" on stderr."""
    from d2a_edge.training.data.preview import write_contact_sheet

    class Tiny:  # two 8-pixel samples
        def __len__(self):
            return 2

        def sample(self, i):
            return {"image": np.full((8, 8, 3), 100 + i, np.uint8), "depth": np.ones((8, 8)),
                    "mask": np.ones((8, 8)), "kp2d": np.full((17, 2), 4.0)}

    for name in ("sheet.jpg", "sheet.png"):
        write_contact_sheet(Tiny(), tmp_path / name)
        assert cv2.imread(str(tmp_path / name)).shape == (8, 2 * 4 * 8, 3)
    assert "WARN" not in capfd.readouterr().err


def test_all_ages_requests_the_all_ages_asset(monkeypatch, anny_asset):
    from d2a_edge.training.data import shards
    calls = []
    monkeypatch.setattr(shards, "load_body", lambda *a, **k: calls.append((a, k)) or anny_asset)
    assert shards.load_asset(_cfg("unused", all_ages=True)) is anny_asset
    assert calls == [(("anny",), {"all_ages": True})]
    with pytest.raises(ValueError, match="Anny body only"):
        shards.load_asset(_cfg("unused", all_ages=True, body="x.npz"))


@requires_torch
def test_compact_batches_expand_to_the_float_form(reference):
    """The training loader's compact samples (uint8 image and mask) carry the same batch: after
    ``feed.to_device`` every key equals the float form exactly, and the bytes per sample drop."""
    import torch

    from d2a_edge.training.data.dataset import OnTheFlyDataset, ShardDataset, expand
    from d2a_edge.training.feed import to_device
    for make in (lambda c: ShardDataset(reference, compact=c),
                 lambda c: OnTheFlyDataset("ood", 4, seed=2, image_size=SIZE, compact=c)):
        full, small = make(False), make(True)
        collate = torch.utils.data.default_collate
        a = collate(full.__getitems__([1, 3]) if hasattr(full, "__getitems__")
                    else [full[1], full[3]])
        b = collate(small.__getitems__([1, 3]) if hasattr(small, "__getitems__")
                    else [small[1], small[3]])
        assert b["image"].dtype == torch.uint8 and b["mask"].dtype == torch.uint8
        assert b["image"].shape == a["image"].shape and b["image"].is_contiguous()
        size = lambda batch: sum(v.nbytes for v in batch.values())  # noqa: E731
        assert size(b) < 0.5 * size(a)
        moved = to_device(b, torch.device("cpu"))
        assert set(moved) == set(a)
        for key in a:
            assert moved[key].dtype == a[key].dtype, key
            torch.testing.assert_close(moved[key], a[key], rtol=0, atol=0, msg=key)
        assert expand(a)["image"] is a["image"]  # the float form passes through
        real = expand({"image": b["image"]})  # real-data batches have no mask
        assert set(real) == {"image"} and torch.equal(real["image"], a["image"])


def test_to_tensors_keeps_rows_and_columns():
    """to_tensors: the (s, s, 3) image becomes (3, s, s) with rows still rows (a transpose
    keeps the shape of a square crop, so shape checks cannot see it)."""
    import torch

    from d2a_edge.camera import intrinsics
    from d2a_edge.training.data.dataset import to_tensors
    from d2a_edge.training.data.engine import SCHEMA_KEYS
    s = 8
    rng = np.random.default_rng(0)
    sample = {k: np.zeros(1, np.float32) for k in SCHEMA_KEYS}
    sample.update(image=rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
                  mask=np.zeros((s, s), np.uint8), depth=np.zeros((s, s), np.float32),
                  crop_box=np.array([10, 20, 110, 120], np.float32),
                  K=intrinsics(500.0, (640, 480)))
    sample["mask"][1, 5] = 1  # row 1, column 5
    for compact in (False, True):
        out = to_tensors(sample, 0, compact)
        img = out["image"].float() / (1 if not compact else 255)
        for y, x in ((0, 7), (7, 0), (2, 5)):
            torch.testing.assert_close(img[:, y, x], torch.tensor(sample["image"][y, x] / 255,
                                                                  dtype=torch.float32))
        assert out["mask"][1, 5] == 1 and out["mask"].sum() == 1


def _fake_dataset(root, counts=(4, 4, 2), s=8, J=3):
    from d2a_edge.training.data.engine import SCHEMA_KEYS
    from d2a_edge.training.data.shards import FORMAT, VERSION, shard_name, write_manifest, \
        write_shard
    shapes = dict(image=((s, s, 3), np.uint8), depth=((s, s), np.float32),
                  mask=((s, s), np.uint8), rotmats=((J, 3, 3), np.float32),
                  betas=((2,), np.float32), transl=((3,), np.float32),
                  joints3d=((J, 3), np.float32), kp3d=((17, 3), np.float32),
                  joints2d=((J, 2), np.float32), kp2d=((17, 2), np.float32),
                  verts_coarse=((5, 3), np.float32), K=((3, 3), np.float32),
                  crop_box=((4,), np.float32), img_size=((2,), np.float32))
    assert set(shapes) == set(SCHEMA_KEYS)
    shards, start = [], 0
    for k, n in enumerate(counts):
        idx = np.arange(start, start + n)
        arrays = {key: np.broadcast_to(idx.reshape(-1, *[1] * len(shp)), (n, *shp)).astype(dt)
                  for key, (shp, dt) in shapes.items()}  # every value = the global index
        write_shard(root, shard_name(k), arrays)
        shards.append(dict(name=shard_name(k), start=start, count=n, complete=True))
        start += n
    schema = {k: dict(shape=list(shp), dtype=np.dtype(dt).name) for k, (shp, dt) in shapes.items()}
    write_manifest(root, dict(format=FORMAT, version=VERSION, shards=shards, schema=schema,
                              config=dict(split="id", num_samples=start)))
    return schema


def test_every_key_of_every_sample_comes_from_its_own_row(tmp_path):
    from d2a_edge.training.data.shards import ShardReader
    _fake_dataset(tmp_path)
    r = ShardReader(tmp_path)
    assert len(r) == 10
    for i in range(10):
        for key, arr in r.sample(i).items():
            assert np.all(np.asarray(arr) == i), (i, key)


def test_a_shard_with_the_wrong_row_count_or_dtype_is_not_ok(tmp_path):
    from d2a_edge.training.data.shards import shard_ok
    schema = _fake_dataset(tmp_path)
    man = json.loads((tmp_path / "manifest.json").read_text())
    entry = man["shards"][0]
    assert shard_ok(tmp_path, entry, schema)
    assert not shard_ok(tmp_path, dict(entry, count=5), schema)
    np.save(tmp_path / entry["name"] / "depth.npy", np.zeros((4, 8, 8), np.float64))
    assert not shard_ok(tmp_path, entry, schema)


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_worker_is_an_error_not_a_hang_and_the_rerun_resumes(tmp_path):
    """A rendering worker killed mid-run (OOM killer) hung `generate` forever on its lost shard;
    now d2a-data exits 2 with a message, and the same command finishes the dataset."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "d2a_edge.training.data.cli", "generate", "--split", "id",
           "--num", "2000", "--size", str(SIZE), "--shard-size", "4", "--workers", "2",
           "--seed", "5", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(s.is_dir() for s in out.glob("shard_?????")):  # a worker is rendering
            assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()
            time.sleep(0.02)
        worker = next(c for c in _children(p.pid)
                      if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())
        os.kill(worker, signal.SIGKILL)
        log, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 2, log
    assert "worker process died" in log and "rerun the same command" in log
    done = sum(s["complete"] for s in json.loads((out / "manifest.json").read_text())["shards"])
    assert 0 < done < 500
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    man = json.loads((out / "manifest.json").read_text())
    assert all(s["complete"] for s in man["shards"]) and len(man["shards"]) == 500
