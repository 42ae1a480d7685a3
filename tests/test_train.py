"""Training: config loading, checkpoints, overfitting, DDP (torchrun, gloo) and resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_anny, requires_torch

pytestmark = [requires_torch, pytest.mark.usefixtures("torch_one_thread")]
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent


def test_configs_load_and_reject_typos(tmp_path):
    from d2a_edge.training.config import available_configs, config_to_dict, load_config
    names = available_configs()
    assert {"edge-s", "edge-m", "paper", "edge-s-depth", "edge-s-rle",
            "edge-s-sil-mask"} <= set(names)
    paper = load_config("paper")
    assert paper.model.backbone.name == "hrnet_w64" and paper.model.image_size == 224
    abl = load_config("edge-s-depth")
    assert abl.name == "edge-s-depth" and not abl.model.depth.enabled
    assert abl.model.encoder == load_config("edge-s").model.encoder  # inherited
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: edge-s\nmodel: {backbon: {name: resnet18}}\n")
    with pytest.raises(ValueError, match="backbon.*valid keys"):
        load_config(bad)
    with pytest.raises(ValueError, match="built-in configs"):
        load_config("no-such-config")
    assert json.loads(json.dumps(config_to_dict(paper)))["model"]["backbone"]["name"] == \
        "hrnet_w64"
    assert load_config("edge-s-gpu", {"optim": {"lr": 1.6e-3}}).optim.lr == 1.6e-3  # d2a-train --lr
    for optim, match in (({"lr": -1e-3}, "lr and grad_clip must be > 0"),
                         ({"grad_clip": 0.0}, "lr and grad_clip must be > 0"),
                         ({"lr": float("inf")}, "all finite"),  # trained to NaN weights, rc 0
                         ({"weight_decay": float("nan")}, "all finite"),
                         ({"ema_decay": 1.0}, "0 <= ema_decay < 1")):
        with pytest.raises(ValueError, match=match):
            load_config("edge-s", {"optim": optim})


def test_lr_schedule_warmup_then_cosine():
    from d2a_edge.training.config import OptimConfig
    from d2a_edge.training.schedule import lr_factor
    o = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, o) == pytest.approx(0.1)
    assert lr_factor(9, 100, o) == pytest.approx(1.0)
    assert lr_factor(55, 100, o) == pytest.approx(0.55)
    assert lr_factor(100, 100, o) == pytest.approx(0.1)


def test_step_sampler_resumes_mid_epoch():
    from d2a_edge.training.feed import StepSampler
    full = StepSampler(10, 3, 0, 1, seed=5, start=0)
    it = iter(full)
    first = [next(it) for _ in range(7)]
    it2 = iter(StepSampler(10, 3, 0, 1, seed=5, start=4))
    assert [next(it2) for _ in range(3)] == first[4:7]
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))  # no repeats per epoch
    r0, r1 = iter(StepSampler(10, 2, 0, 2, 5, 0)), iter(StepSampler(10, 2, 1, 2, 5, 0))
    assert not set(next(r0)) & set(next(r1))  # ranks see disjoint samples
    with pytest.raises(ValueError, match="too small"):
        StepSampler(3, 4, 0, 1, 0, 0)


@requires_anny
def test_checkpoint_roundtrip_and_corruption(tmp_path, anny_asset):
    from _batches import tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.train import Dist, build_state, save
    cfg = tiny_config()
    st = build_state(cfg, Dist(), 10, anny_asset)
    st.step = 7
    path = save(st, cfg, tmp_path, Dist())
    c = ckpt.read_checkpoint(tmp_path, with_train_state=True)
    assert c["dir"] == path and c["meta"]["step"] == 7 and c["meta"]["seed"] == cfg.train.seed
    sd = st.model.state_dict()
    got = ckpt.split_weights(c["weights"], "model")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    st2 = build_state(cfg, Dist(), 10, anny_asset)
    assert ckpt.restore_train_state(c, optimizer=st2.optimizer, scheduler=st2.scheduler,
                                    scaler=st2.scaler) == 7
    # no pickle anywhere: both files are safetensors, the rest JSON
    assert (path / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.read_checkpoint(tmp_path)
    (path / "model.safetensors").write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.read_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.read_checkpoint(tmp_path / "nothing")


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path, anny_asset):
    """keep=2 keeps the two newest steps; a later-numbered checkpoint left by another run in the
    same directory does not push out the one just written (it did: pruning sorted by name)."""
    from _batches import tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.train import Dist, build_state
    st = build_state(tiny_config(), Dist(), 10, anny_asset)
    parts = dict(model=st.model, loss=st.loss, optimizer=st.optimizer, scheduler=st.scheduler,
                 scaler=st.scaler, meta={})
    for step in (900, 1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, keep=2, **parts)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000002", "step_00000003", "step_00000900"]
    assert ckpt.read_checkpoint(tmp_path)["meta"]["step"] == 3


def test_resume_survives_a_lost_latest_json_a_damaged_checkpoint_and_a_kill_while_saving(
        tmp_path, anny_asset, capsys, monkeypatch):
    """--resume continues from the newest intact checkpoint when latest.json is gone or garbled
    (it started again at step 0 and overwrote the run) or the newest checkpoint is damaged (the
    error's advice could not be followed); saving a step that exists already keeps it until
    the end (a kill in between deleted it and left latest.json pointing at nothing); a killed
    save's temporary directory is cleared; malformed JSON is a CheckpointError, not a
    traceback; a new run refuses a directory that holds step_* checkpoints."""
    import shutil

    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.train import run
    cfg, ds = tiny_config(), BatchDataset(anny_asset, 4, 64, seed=4)
    kw = dict(ckpt_every=2, asset=anny_asset, progress=False)
    run(cfg, ds, tmp_path / "ref", steps=6, **kw)
    cks = tmp_path / "ref" / "checkpoints"
    assert sorted(p.name for p in cks.glob("step_*")) == [
        "step_00000002", "step_00000004", "step_00000006"]

    def resumed_from(case, steps=6):
        capsys.readouterr()
        run(cfg, ds, tmp_path / case, steps=steps, resume=True, **kw)
        err = capsys.readouterr().err
        return err, ckpt.read_checkpoint(tmp_path / case)["meta"]["step"]

    shutil.copytree(tmp_path / "ref", tmp_path / "lost")
    (tmp_path / "lost" / "checkpoints" / "latest.json").unlink()
    with pytest.raises(ValueError, match="already holds a run's checkpoints"):
        run(cfg, ds, tmp_path / "lost", steps=6, **kw)
    err, step = resumed_from("lost", steps=8)
    assert "resumed from" in err and "step_00000006 at step 6" in err and step == 8
    assert "schedule ran to 6 steps; --steps 8 re-fits" in err  # said, not silent
    shutil.copytree(tmp_path / "ref", tmp_path / "garbled")
    (tmp_path / "garbled" / "checkpoints" / "latest.json").write_text("[]")
    with pytest.raises(ckpt.CheckpointError, match="latest.json is corrupt"):
        ckpt.read_checkpoint(tmp_path / "garbled")
    err, step = resumed_from("garbled", steps=8)
    assert "passing over" in err and "at step 6" in err and step == 8
    shutil.copytree(tmp_path / "ref", tmp_path / "damaged")
    with open(tmp_path / "damaged" / "checkpoints" / "step_00000006" / "model.safetensors",
              "r+b") as f:
        f.truncate(1000)
    err, step = resumed_from("damaged")
    assert "passing over" in err and "sha256 mismatch" in err and "at step 4" in err
    assert step == 6  # trained again from 4 and saved a whole step 6 over the damaged one

    # a kill while saving a step that already exists (simulated: the move of the new
    # directory fails) leaves the old one whole, and latest.json on it
    shutil.copytree(tmp_path / "ref", tmp_path / "again")
    real = ckpt.os.replace

    def killed(src, dst):
        if Path(src).is_dir():
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", killed)
    run(cfg, ds, tmp_path / "again", steps=6, resume=True, **kw)  # saves step 6 again
    monkeypatch.setattr(ckpt.os, "replace", real)
    assert ckpt.read_checkpoint(tmp_path / "again", with_train_state=True)["meta"]["step"] == 6
    # a temporary directory left by a killed save goes at the next save
    stale = tmp_path / "again" / "checkpoints" / ".tmp-step_00000008-12345"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    run(cfg, ds, tmp_path / "again", steps=8, resume=True, **kw)
    assert not stale.exists()
    # malformed meta.json: one clear error
    meta = cks / "step_00000006" / "meta.json"
    for text, match in (("[]", "format 'list'"), ('{"format": "d2a-ckpt-1"}', "lacks the sha256")):
        meta.write_text(text)
        with pytest.raises(ckpt.CheckpointError, match=match):
            ckpt.read_checkpoint(tmp_path / "ref")


def test_the_summary_reports_the_time_spent_waiting_for_data(tmp_path, anny_asset):
    """A dataset that takes 0.1 s per sample: 3 steps of batch 4 wait >= 1.2 s for it."""
    import time as _time
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.train import run

    class Slow(BatchDataset):
        def __getitem__(self, i):
            _time.sleep(0.1)
            return super().__getitem__(i)

    cfg = tiny_config()
    fast = run(cfg, BatchDataset(anny_asset, 4, 64, seed=4), tmp_path / "fast", steps=3,
               ckpt_every=0, asset=anny_asset, progress=False)
    slow = run(cfg, Slow(anny_asset, 4, 64, seed=4), tmp_path / "slow", steps=3, ckpt_every=0,
               asset=anny_asset, progress=False)
    assert 1.2 <= slow["data_wait_s"] <= slow["seconds"]
    assert 0 <= fast["data_wait_s"] < 1.2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(tmp_path / "slow" / "tb")).Reload()
    shares = [e.value for e in tb.Scalars("train/data_wait_fraction")]  # log_every 1: per step
    assert len(shares) == 3 and all(0.1 < v <= 1.0 for v in shares)


def test_a_new_run_refuses_a_directory_holding_checkpoints(tmp_path, anny_asset):
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.train import run
    cfg, ds = tiny_config(), BatchDataset(anny_asset, 4, 64, seed=4)
    run(cfg, ds, tmp_path, steps=1, ckpt_every=0, asset=anny_asset, progress=False)
    before = (tmp_path / "checkpoints" / "latest.json").read_text()
    with pytest.raises(ValueError, match="already holds a run's checkpoints; pass --resume"):
        run(cfg, ds, tmp_path, steps=1, ckpt_every=0, asset=anny_asset, progress=False)
    assert (tmp_path / "checkpoints" / "latest.json").read_text() == before


@pytest.mark.slow
@requires_anny
def test_overfit_fixed_batch_pa_mpjpe_below_15mm(tmp_path, anny_asset):
    """The real loop (train.run) on 8 fixed samples, then the eval path on the same samples."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.checkpoint import load_model
    from d2a_edge.training.evaluate import predict
    from d2a_edge.training.train import run
    cfg = tiny_config(model={"mask_ratio": 0.0},
                      optim={"lr": 1e-3, "warmup_steps": 5, "weight_decay": 0.0},
                      train={"batch_size": 8, "seed": 0})
    ds = BatchDataset(anny_asset, 8, 64, seed=0)
    summary = run(cfg, ds, tmp_path, steps=80, ckpt_every=0, asset=anny_asset, progress=False)
    assert summary["step"] == 80 and np.isfinite(summary["losses"]["total"])
    model = load_model(tmp_path, asset=anny_asset)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    res = predict(model, loader, "cpu", progress=False)
    print("overfit PA-MPJPE (mm):", res["pa_mpjpe"].mean(), "MPJPE:", res["mpjpe"].mean())
    assert res["pa_mpjpe"].mean() < 15.0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 rendered samples at 64 px from the data engine (needs EGL)."""
    from d2a_edge.training.data.shards import GenerateConfig, generate
    out = tmp_path_factory.mktemp("shards")
    try:
        generate(GenerateConfig(split="id", num=16, out=str(out), size=64, shard_size=16))
    except (RuntimeError, OSError, ImportError) as e:
        pytest.skip(f"cannot render shards here: {e}")
    return out


def _train_cmd(cfg_path, data, out, steps, *extra):
    return [str(BIN / "d2a-train"), str(cfg_path), "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--threads", "1", *extra]


@pytest.mark.slow
@requires_anny
def test_torchrun_ddp_two_ranks_identical_weights(tmp_path, shards):
    from _batches import write_tiny_yaml
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "d2a_edge.training.train_cli", *_train_cmd(cfg, shards, out, 3)[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["step"] == 3
    assert all(np.isfinite(v) for v in summary["losses"].values())
    d = summary["rank_weight_digests"]
    assert len(d) == 2 and d[0] == d[1], d
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["seed"] == 0


DDP_NAN_SCRIPT = """
import contextlib, json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from _batches import make_batch, tiny_config
from d2a_edge.body import load_body
from d2a_edge.training import train as T
dist.init_process_group("gloo")
rank = dist.get_rank()
asset = load_body("anny")
cfg = tiny_config()
st = T.build_state(cfg, T.Dist(rank, 2, rank, torch.device("cpu")), 10, asset=asset)
b = make_batch(asset, 2, 64, seed=rank)
if rank == 1:  # a NaN label on one rank only
    b["transl"] = b["transl"].clone()
    b["transl"][0, 2] = float("nan")
before = {{k: v.detach().clone() for k, v in st.model.named_parameters()}}
first = T.train_step(st, b, cfg, contextlib.nullcontext)
unchanged = all(torch.equal(v.detach(), before[k]) for k, v in st.model.named_parameters())
skipped = st.nonfinite
second = T.train_step(st, make_batch(asset, 2, 64, seed=10 + rank), cfg, contextlib.nullcontext)
sys.stdout.write(json.dumps({{"rank": rank, "total": first["total"], "unchanged": unchanged,
                             "skipped": skipped, "second": second["total"],
                             "after": st.nonfinite}}) + "\\n")  # one write: lines stay whole
sys.stdout.flush()
dist.destroy_process_group()
"""


@pytest.mark.slow
@requires_anny
def test_ddp_ranks_skip_a_non_finite_step_together(tmp_path):
    """A NaN loss on one rank: both ranks still run the backward pass (no rank is left waiting
    in the all-reduce), both skip the update, and the next step trains on both."""
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_NAN_SCRIPT.format(tests=str(Path(__file__).parent)))
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    # each rank's object, even if the two ranks' lines came out joined on one line
    ranks = {r["rank"]: r for r in map(json.loads, re.findall(r"\{[^{}]*\}", p.stdout))}
    assert sorted(ranks) == [0, 1], p.stdout
    assert np.isfinite(ranks[0]["total"]) and not np.isfinite(ranks[1]["total"])
    for r in ranks.values():
        assert r["unchanged"] and r["skipped"] == 1, r
        assert np.isfinite(r["second"]) and r["after"] == 0, r


def _safetensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.mark.slow
@requires_anny
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, shards):
    from _batches import write_tiny_yaml
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml")
    steps = 5
    ref = subprocess.run(_train_cmd(cfg, shards, tmp_path / "ref", steps, "--ckpt-every", "2"),
                         capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cfg, shards, out, steps, "--ckpt-every", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(latest.read_text())["step"]
    assert 0 < killed_at < steps
    res = subprocess.run(_train_cmd(cfg, shards, out, steps, "--ckpt-every", "2", "--resume"),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at step {killed_at}" in res.stderr
    a = out / "checkpoints" / f"step_{steps:08d}"
    b = tmp_path / "ref" / "checkpoints" / f"step_{steps:08d}"
    for name in ("model.safetensors", "train_state.safetensors"):
        wa, wb = _safetensors(a / name), _safetensors(b / name)
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=f"{name}:{k}")


@requires_anny
def test_sigterm_and_ctrl_c_stop_with_a_checkpoint_that_resumes(tmp_path, shards):
    """SIGTERM (or SIGINT, Ctrl-C) to a running d2a-train: the step finishes, a checkpoint at
    that step is written, and it exits with 128 + the signal; --resume goes on from there."""
    from _batches import write_tiny_yaml
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml")
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / sig.name
        proc = subprocess.Popen(_train_cmd(cfg, shards, out, 500, "--ckpt-every", "1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = out / "checkpoints" / "step_00000001"
        deadline = time.time() + 240
        while not first.is_dir() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig.value, err[-3000:]
        stopped = int(re.search(rf"{sig.name}: stopping at step (\d+) of 500", err).group(1))
        assert 1 <= stopped < 500
        latest = json.loads((out / "checkpoints" / "latest.json").read_text())
        assert latest["step"] == stopped
    res = subprocess.run(_train_cmd(cfg, shards, out, stopped + 2, "--resume"),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at step {stopped}" in res.stderr
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == stopped + 2


@requires_anny
def test_sigterm_to_the_whole_process_group_with_loader_workers_still_checkpoints(tmp_path,
                                                                                  shards):
    """A scheduler (SLURM, `timeout`, systemd) signals the whole process group, loader workers
    included: the training process stops as for its own SIGTERM, whether the signal finds it
    in a step or waiting for the loader (it failed with "DataLoader worker ... is killed by
    signal: Terminated" and no checkpoint)."""
    from _batches import write_tiny_yaml
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml")
    out = tmp_path / "group"
    proc = subprocess.Popen(_train_cmd(cfg, shards, out, 500, "--ckpt-every", "1",
                                       "--workers", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    first = out / "checkpoints" / "step_00000001"
    deadline = time.time() + 240
    while not first.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM.value, err[-3000:]
    stopped = int(re.search(r"SIGTERM: stopping at step (\d+) of 500", err).group(1))
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == stopped


@requires_anny
def test_resume_without_the_flags_keeps_the_stopped_runs_settings(tmp_path, shards):
    """A run of --steps 6 --batch-size 2 --seed 5 --ckpt-every 2, stopped, then --resume alone:
    it keeps that schedule, batch size, seed and interval (it warned "--batch-size 2 -> 4" and
    re-fitted the schedule to the config's 20,000 steps: 13 hours in a walkthrough, past this
    test's time limit here)."""
    from _batches import write_tiny_yaml
    cfg = write_tiny_yaml(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    base = [str(BIN / "d2a-train"), str(cfg), "--data", str(shards), "--out", str(out),
            "--threads", "1"]
    first = subprocess.run(base + ["--steps", "6", "--batch-size", "2", "--seed", "5",
                                   "--ckpt-every", "2", "--stop-after", "0.001"],
                           capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert stopped < 6
    res = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "warning" not in res.stderr and "re-fits" not in res.stderr, res.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 6 and run["ckpt_every"] == 2
    assert run["config"]["train"]["batch_size"] == 2 and run["config"]["train"]["seed"] == 5
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 6


@requires_anny
def test_stop_after_then_resume_matches_uninterrupted_run(tmp_path, anny_asset, capsys):
    """--stop-after (e.g. the end of one lent GPU call): a checkpoint before the schedule ends,
    and --resume (the next call) continues that schedule to the same weights as one run."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.train import run
    cfg, ds, steps = tiny_config(), BatchDataset(anny_asset, 8, 64, seed=4), 4
    run(cfg, ds, tmp_path / "ref", steps=steps, ckpt_every=0, asset=anny_asset, progress=False)
    first = run(cfg, ds, tmp_path / "cut", steps=steps, ckpt_every=0, asset=anny_asset,
                progress=False, stop_after=1e-9)  # stops after its first step
    assert first["step"] == 1 and "stopping after 0 s at step 1 of 4" in capsys.readouterr().err
    assert ckpt.read_checkpoint(tmp_path / "cut")["meta"]["schedule_total"] == steps
    rest = run(cfg, ds, tmp_path / "cut", steps=steps, ckpt_every=0, asset=anny_asset,
               progress=False, resume=True)
    assert rest["step"] == steps
    a = ckpt.read_checkpoint(tmp_path / "cut")["weights"]
    b = ckpt.read_checkpoint(tmp_path / "ref")["weights"]
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="--stop-after needs seconds > 0"):
        run(cfg, ds, tmp_path / "bad", steps=1, asset=anny_asset, progress=False, stop_after=0)


@requires_anny
def test_evaluate_writes_json_markdown_and_png(tmp_path, anny_asset):
    import cv2
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.evaluate import evaluate_checkpoint
    from d2a_edge.training.train import run
    cfg = tiny_config(train={"batch_size": 4})
    ds = BatchDataset(anny_asset, 4, 64, seed=3)
    run(cfg, ds, tmp_path / "run", steps=1, ckpt_every=0, asset=anny_asset, progress=False)
    res = evaluate_checkpoint(tmp_path / "run", {"id": ds}, tmp_path / "eval", batch_size=4,
                              progress=False)
    m = res["id"]
    assert m["num_samples"] == 4 and m["pa_mpjpe"] <= m["mpjpe"] + 1e-6
    assert 0 <= m["pck3d_150"] <= 1 and m["pve"] > 0 and m["trans_err_cm"] > 0
    assert 0 < m["root_rot_deg"] <= 180
    js = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert js["step"] == 1 and set(js["splits"]) == {"id"}
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| id | 4 |" in md and "PA-MPJPE" in md and "orient. err (deg)" in md
    img = cv2.imread(str(tmp_path / "eval" / "calibration_id.png"))
    assert img is not None and img.shape == (480, 480, 3) and (img != 255).any()

    flip = evaluate_checkpoint(tmp_path / "run", {"id": ds}, tmp_path / "eval_flip",
                               batch_size=4, progress=False, flip=True)["id"]
    assert flip["num_samples"] == 4 and flip["mpjpe"] != m["mpjpe"]  # another prediction
    js = json.loads((tmp_path / "eval_flip" / "metrics.json").read_text())
    assert js["flip"] is True and "step 1, flip" in (tmp_path / "eval_flip" / "metrics.md"
                                                      ).read_text()

    # d2a-eval's default folder lies outside checkpoints/, which pruning deletes step by step
    from d2a_edge.training.evaluate import default_out
    assert default_out(tmp_path / "run") == tmp_path / "run" / "eval" / "step_00000001"
    # a dataset of another crop size is refused before anything is written
    with pytest.raises(ValueError, match="'big' has 96px crops"):
        evaluate_checkpoint(tmp_path / "run", {"id": ds, "big": BatchDataset(anny_asset, 2, 96)},
                            tmp_path / "eval_mixed", batch_size=4, progress=False)
    assert not (tmp_path / "eval_mixed").exists()


def test_flip_averaged_is_the_sdk_flip_and_mirror_equivariant(anny_asset):
    """d2a-eval --flip (``FlipAveraged``): the mirrored crop gets the mirrored prediction, as
    the SDK's flip does (both average through ``d2a_edge.flip``)."""
    from _batches import make_batch, tiny_config
    from d2a_edge.training.evaluate import FlipAveraged
    from d2a_edge.training.model import build_model
    torch.manual_seed(0)
    model = build_model(tiny_config().model, anny_asset).eval()
    with torch.no_grad():  # the heads start at the rest pose whatever the image: make them see
        for head in (model.joint_head, model.shape_head, model.camera_head):
            for w in head.parameters():
                w.add_(torch.randn_like(w) * 0.05)
    f = FlipAveraged(model, anny_asset.mirror_joints())
    b = make_batch(anny_asset, 2, 64, seed=7)
    with torch.no_grad():
        a = f(b["image"], b["bbox_info"])
        m = f(torch.flip(b["image"], [-1]), b["bbox_info"] * torch.tensor([-1.0, 1.0, 1.0]))
        plain = model.forward_head(model.forward_features(b["image"]), b["bbox_info"])
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    perm = torch.as_tensor(anny_asset.mirror_joints())
    torch.testing.assert_close((M @ m["rotmats"] @ M)[:, perm], a["rotmats"], atol=1e-5, rtol=0)
    torch.testing.assert_close(m["translation"] * M.diagonal(), a["translation"], atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(m["betas"], a["betas"], atol=1e-6, rtol=0)
    assert not torch.allclose(plain["rotmats"], a["rotmats"], atol=1e-4)  # it did average


def test_ema_tracks_weights_with_decay():
    from d2a_edge.training.train import EMA
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    net(torch.randn(4, 2))  # a training forward: BatchNorm counts a step (an integer buffer)
    ema.update()
    torch.testing.assert_close(ema.state_dict()["0.weight"], torch.full((2, 2), 0.1))
    assert int(ema.state_dict()["1.num_batches_tracked"]) == 1  # integers are copied
    # load_state_dict copies into the same tensors, so the EMA keeps following (resume)
    net.load_state_dict({k: torch.ones_like(v) if v.is_floating_point() else v
                         for k, v in net.state_dict().items()})
    ema.update()
    torch.testing.assert_close(ema.state_dict()["0.weight"], torch.full((2, 2), 0.19))


@requires_anny
def test_ema_weights_are_saved_and_used_by_load_model(tmp_path, anny_asset):
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.train import run
    cfg = tiny_config(optim={"ema_decay": 0.5, "warmup_steps": 1})
    ds = BatchDataset(anny_asset, 4, 64, seed=4)
    run(cfg, ds, tmp_path, steps=2, ckpt_every=0, asset=anny_asset, progress=False)
    w = ckpt.read_checkpoint(tmp_path)["weights"]
    ema, raw = ckpt.split_weights(w, "ema"), ckpt.split_weights(w, "model")
    assert set(ema) == set(raw) and any(not torch.equal(ema[k], raw[k]) for k in raw)
    m = ckpt.load_model(tmp_path, asset=anny_asset)
    k = next(k for k in raw if not torch.equal(ema[k], raw[k]) and raw[k].is_floating_point())
    torch.testing.assert_close(m.state_dict()[k], ema[k])
    m_raw = ckpt.load_model(tmp_path, asset=anny_asset, use_ema=False)
    torch.testing.assert_close(m_raw.state_dict()[k], raw[k])


def test_cli_errors_are_clear(tmp_path):
    p = subprocess.run([str(BIN / "d2a-eval"), str(tmp_path), "--data", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "d2a-eval: error" in p.stderr
    p = subprocess.run([str(BIN / "d2a-train"), "no-such-config", "--data", str(tmp_path),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "built-in configs" in p.stderr


@requires_anny
def test_weights_only_copy_init_and_echo(tmp_path, anny_asset):
    """save_weights_only keeps the EMA weights and cannot --resume; --init starts from them;
    data echoing draws its extra steps from the fresh batches."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.feed import EchoBuffer
    from d2a_edge.training.train import run
    cfg = tiny_config(optim={"ema_decay": 0.5, "warmup_steps": 1})
    ds = BatchDataset(anny_asset, 4, 64, seed=4)
    run(cfg, ds, tmp_path / "a", steps=2, ckpt_every=0, asset=anny_asset, progress=False)
    slim = ckpt.save_weights_only(tmp_path / "a", tmp_path / "slim")
    w_full, w_slim = (ckpt.read_checkpoint(p)["weights"] for p in (tmp_path / "a", slim))
    assert not any(k.startswith("ema.") for k in w_slim)
    for k, v in ckpt.split_weights(w_full, "ema").items():
        torch.testing.assert_close(w_slim[f"model.{k}"], v)
    with pytest.raises(ckpt.CheckpointError, match="train_state.safetensors is missing"):
        ckpt.read_checkpoint(slim, with_train_state=True)

    summary = run(cfg, ds, tmp_path / "b", steps=3, ckpt_every=0, asset=anny_asset,
                  progress=False, init=str(slim), echo=2)
    assert summary["step"] == 3
    assert json.loads((tmp_path / "b" / "run.json").read_text())["echo"] == 2
    # fresh batches at steps 0 and 2, an echo at step 1
    assert summary["samples_per_s"] * summary["seconds"] == pytest.approx(2 * 4, rel=1e-6)
    # resuming at an echo step (the buffer is gone) fetches a fresh batch instead
    summary = run(cfg, ds, tmp_path / "b", steps=4, resume=True, ckpt_every=0, asset=anny_asset,
                  progress=False, echo=2)
    assert summary["step"] == 4
    assert summary["samples_per_s"] * summary["seconds"] == pytest.approx(4, rel=1e-6)

    buf = EchoBuffer(seed=0)
    batches = [{"x": torch.arange(4) + 10 * i} for i in range(3)]
    for b in batches:
        buf.add(b)
    drawn = buf.draw(step=5, size=4)["x"]
    assert len(drawn) == 4 and set(drawn.tolist()) <= set(torch.cat([b["x"] for b in batches]).tolist())
    assert torch.equal(drawn, buf.draw(step=5, size=4)["x"])  # seeded by the step
    with pytest.raises(ValueError, match="echo must be >= 1"):
        run(cfg, ds, tmp_path / "c", steps=1, asset=anny_asset, progress=False, echo=0)


def test_time_budget_fits_the_schedule_then_stops(monkeypatch):
    """Steps 10..40 take 0.5 s each and 25 s have passed at step 40, so a 100 s budget leaves
    room for 150 more steps (190 in all); past the budget the loop is told to stop."""
    from d2a_edge.training import schedule as T
    from d2a_edge.training.distributed import Dist
    clock = {"now": 0.0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock["now"])
    calib, d = T.Calibration(start=0, budget=100.0, t0=0.0), Dist()
    total = 10_000
    for step in range(1, 41):
        clock["now"] = 5.0 + 0.5 * step
        new_total, stop = calib.after_step(step, total, d)
        assert not stop
        total = new_total
    assert total == 40 + int((100.0 - 25.0) / 0.5)  # 190
    clock["now"] = 100.5
    assert calib.after_step(41, total, d) == (total, True)


@pytest.mark.parametrize("slow", [range(1, 41), range(200, 10_000)],
                         ids=["busy-while-first-timed", "busy-later"])
def test_time_budget_refits_when_the_speed_changes(monkeypatch, slow):
    """Steps take 0.5 s, or 2 s while another job shares the cores (during the first timing, or
    from step 200 on). The re-fits follow the speed, so the schedule runs to its end and ends
    on the 300 s budget (one fit at step 40 ended at 135 s, or ran past the budget)."""
    from d2a_edge.training import schedule as T
    from d2a_edge.training.distributed import Dist
    clock = {"now": 0.0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock["now"])
    calib, d = T.Calibration(start=0, budget=300.0, t0=0.0), Dist()
    step, total, stop = 0, 10_000, False
    while step < total and not stop:
        step += 1
        clock["now"] += 2.0 if step in slow else 0.5
        total, stop = calib.after_step(step, total, d)
    assert not stop and step == total
    assert 0.97 * 300 <= clock["now"] <= 300


@requires_anny
def test_compile_falls_back_to_eager_only_on_the_compiling_step(tmp_path, anny_asset,
                                                                 monkeypatch, capsys):
    """--compile: a failure while compiling (the first step) leaves the same training as eager
    mode; a failure at a later step is not hidden."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.train import run
    cfg = tiny_config()
    ds = BatchDataset(anny_asset, 4, 64, seed=4)
    ref = run(cfg, ds, tmp_path / "ref", steps=2, ckpt_every=0, asset=anny_asset, progress=False)

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper
        def __init__(self, module, fail_at):
            super().__init__()
            self.module, self.fail_at, self.calls = module, fail_at, 0

        def forward(self, batch):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("backend exploded")
            return self.module(batch)

    monkeypatch.setattr(torch, "compile", lambda m: Compiled(m, fail_at=1))
    got = run(cfg, ds, tmp_path / "got", steps=2, ckpt_every=0, asset=anny_asset,
              progress=False, compile=True)
    assert "torch.compile failed (RuntimeError: backend exploded)" in capsys.readouterr().err
    assert got["step"] == 2 and got["rank_weight_digests"] == ref["rank_weight_digests"]
    monkeypatch.setattr(torch, "compile", lambda m: Compiled(m, fail_at=2))
    with pytest.raises(RuntimeError, match="backend exploded"):
        run(cfg, ds, tmp_path / "late", steps=2, ckpt_every=0, asset=anny_asset, progress=False,
            compile=True)


@requires_anny
def test_non_finite_loss_skips_the_update_and_gives_up_after_a_run(anny_asset, capsys):
    """A NaN label: the step counts (LR schedule, data order) but no weight, optimizer or EMA
    state changes (BatchNorm's batch statistics do: the forward ran); MAX_NONFINITE such steps
    in a row stop training; a finite step resets the count."""
    import contextlib

    from _batches import make_batch, tiny_config
    from d2a_edge.training import train as T
    cfg = tiny_config(optim={"ema_decay": 0.5})
    st = T.build_state(cfg, T.Dist(), total_steps=20, asset=anny_asset)
    good = make_batch(anny_asset, 2, 64, seed=5)
    bad = {**good, "transl": good["transl"].clone()}
    bad["transl"][0, 2] = float("nan")
    before = {k: v.detach().clone() for k, v in st.model.named_parameters()}
    ema_before = {k: st.ema.state_dict()[k].clone() for k in before}
    out = T.train_step(st, bad, cfg, contextlib.nullcontext)
    assert not np.isfinite(out["total"]) and st.step == 1 and st.nonfinite == 1
    assert "non-finite loss at step 0, update skipped" in capsys.readouterr().err
    for k, v in st.model.named_parameters():
        torch.testing.assert_close(v.detach(), before[k], rtol=0, atol=0)
        torch.testing.assert_close(st.ema.state_dict()[k], ema_before[k], rtol=0, atol=0)
    assert not st.optimizer.state  # AdamW never stepped
    out = T.train_step(st, good, cfg, contextlib.nullcontext)
    assert np.isfinite(out["total"]) and np.isfinite(out["grad_norm"]) and st.nonfinite == 0
    assert any(not torch.equal(v.detach(), before[k]) for k, v in st.model.named_parameters())
    for _ in range(T.MAX_NONFINITE - 1):
        T.train_step(st, bad, cfg, contextlib.nullcontext)
    with pytest.raises(RuntimeError, match="10 non-finite losses in a row"):
        T.train_step(st, bad, cfg, contextlib.nullcontext)


def test_spawned_rendering_workers_skip_the_interpreter_teardown(tmp_path, monkeypatch):
    """make_loader's spawned workers leave with os._exit, as forked ones do: the atexit handlers
    registered before worker_init_fn (here one that writes a marker file) never run. The
    control loader without it shows that they otherwise do. The data is the same."""
    from _exit_marker import Numbers
    from d2a_edge.training.feed import leave_like_a_forked_worker
    monkeypatch.setenv("D2A_EXIT_MARKER", str(tmp_path / "teardown"))
    monkeypatch.setenv("D2A_EXIT_MARKER_PARENT", str(os.getpid()))

    def load(init, name):
        monkeypatch.setenv("D2A_EXIT_MARKER", str(tmp_path / name))
        loader = torch.utils.data.DataLoader(Numbers(), batch_size=4, num_workers=1,
                                             multiprocessing_context="spawn",
                                             worker_init_fn=init)
        return torch.cat(list(loader)).tolist()  # the workers are joined at the end

    assert load(None, "control") == list(range(8))
    assert len(list(tmp_path.glob("control.*"))) == 1
    assert load(leave_like_a_forked_worker, "fixed") == list(range(8))
    assert list(tmp_path.glob("fixed.*")) == []


def test_cli_rejects_counts_out_of_range(capsys):
    """Usage errors before any work (--batch-size 0 and --threads 0 silently fell back to the
    config's values; a negative budget stopped at once)."""
    from d2a_edge.training.train_cli import main
    for args, msg in ((["--batch-size", "0"], "--batch-size: must be >= 1"),
                      (["--threads", "0"], "--threads: must be >= 1"),
                      (["--steps", "-3"], "--steps: must be >= 1"),
                      (["--workers", "-1"], "--workers: must be >= 0"),
                      (["--time-budget", "0"], "--time-budget must be > 0"),
                      (["--stop-after", "-1"], "--stop-after must be > 0")):
        with pytest.raises(SystemExit) as e:
            main(["edge-s", "--on-the-fly", "--out", "unused", *args])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # was: a FileNotFoundError traceback
        main(["edge-s", "--data", "/no/such/dataset", "--out", "unused"])
    assert "d2a-train: error:" in str(e.value.code) and "/no/such/dataset" in str(e.value.code)
    with pytest.raises(SystemExit) as e:  # a SPIN npz is read by SpinNpzDataset, not trained on
        main(["edge-s", "--data", "/some/train.npz", "--out", "unused"])
    assert "SpinNpzDataset" in str(e.value.code) and "not trained on" in str(e.value.code)


@requires_anny
def test_channels_last_trains_like_the_default_layout_and_resumes(tmp_path, anny_asset):
    """train.channels_last (d2a-train --channels-last): the conv weights are channels-last and
    the losses of three steps match the default layout up to float rounding; a resumed run's
    AdamW moments get the weights' layout back (a checkpoint stores them contiguous)."""
    import contextlib

    from _batches import BatchDataset, make_batch, tiny_config
    from d2a_edge.training import train as T
    batch = make_batch(anny_asset, 2, 64, seed=5)
    losses = []
    for channels_last in (False, True):
        cfg = tiny_config(train={"channels_last": channels_last})
        st = T.build_state(cfg, T.Dist(), total_steps=5, asset=anny_asset)
        convs = [p for p in st.model.parameters() if p.dim() == 4]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert convs and all(p.is_contiguous(memory_format=fmt) for p in convs)
        losses.append([T.train_step(st, batch, cfg, contextlib.nullcontext)["total"]
                       for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][2] != losses[0][0]  # the steps trained

    cfg = tiny_config(train={"channels_last": True})
    T.run(cfg, BatchDataset(anny_asset, 4, 64, seed=4), tmp_path, steps=2, ckpt_every=0,
          asset=anny_asset, progress=False)
    st = T.build_state(cfg, T.Dist(), total_steps=3, asset=anny_asset)
    T.resume_state(st, tmp_path, T.Dist(), cfg)
    moments = [st.optimizer.state[p]["exp_avg"] for p in st.model.parameters() if p.dim() == 4]
    assert moments and all(m.is_contiguous(memory_format=torch.channels_last) for m in moments)
    T.train_step(st, batch, cfg, contextlib.nullcontext)


def test_freeze_keeps_the_named_modules_fixed_and_resumes_only_alike(tmp_path, anny_asset):
    """train.freeze (d2a-train --freeze backbone depth_net): after training steps the frozen
    modules' weights and batch-norm statistics are unchanged, the rest has trained, and the
    optimizer holds only the trained parameters. A resume with another --freeze, and a module
    the model lacks, are clear errors."""
    import contextlib

    from _batches import BatchDataset, make_batch, tiny_config
    from d2a_edge.training import train as T
    cfg = tiny_config(train={"freeze": ["backbone", "depth_net"]})
    st = T.build_state(cfg, T.Dist(), total_steps=5, asset=anny_asset)
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    batch = make_batch(anny_asset, 2, 64, seed=5)
    for _ in range(2):
        T.train_step(st, batch, cfg, contextlib.nullcontext)
    after = st.model.state_dict()
    frozen = [k for k in before if k.startswith(("backbone.", "depth_net."))]
    assert any(k.endswith("running_mean") for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    for k in ("encoder.img_layers.0.attn_s.q.weight", "decoder.layers.0.mlp.0.weight"):
        assert not torch.equal(before[k], after[k]), k
    optimized = {id(p) for g in st.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimized for p in st.model.backbone.parameters())
    assert all(id(p) in optimized for p in st.model.encoder.parameters())

    T.run(cfg, BatchDataset(anny_asset, 4, 64, seed=4), tmp_path, steps=2, ckpt_every=0,
          asset=anny_asset, progress=False)
    other = T.build_state(tiny_config(), T.Dist(), total_steps=3, asset=anny_asset)
    with pytest.raises(ValueError, match=r"train.freeze \['backbone', 'depth_net'\].*"
                                         r"resume with the same --freeze"):
        T.resume_state(other, tmp_path, T.Dist(), tiny_config())
    T.resume_state(T.build_state(cfg, T.Dist(), total_steps=3, asset=anny_asset), tmp_path,
                   T.Dist(), cfg)
    # another model config: one clear line (it was 286 lines of load_state_dict mismatches)
    wide = tiny_config(model={"encoder": {"mlp_ratio": 4.0}})
    with pytest.raises(ValueError, match="whose model differs.*resume with the same config"):
        T.resume_state(T.build_state(wide, T.Dist(), total_steps=3, asset=anny_asset),
                       tmp_path, T.Dist(), wide)
    with pytest.raises(ValueError, match="no module 'backbon'.*'backbone'"):
        T.build_state(tiny_config(train={"freeze": ["backbon"]}), T.Dist(), total_steps=3,
                      asset=anny_asset)


def test_time_budget_never_raises_the_step_count(monkeypatch):
    """A budget far larger than the schedule needs: the fit keeps the total given."""
    from d2a_edge.training import schedule as T
    from d2a_edge.training.distributed import Dist
    clock = {"now": 0.0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock["now"])
    calib, d, total = T.Calibration(start=0, budget=1e6, t0=0.0), Dist(), 500
    for step in range(1, 41):
        clock["now"] = 0.1 * step
        total, stop = calib.after_step(step, total, d)
        assert not stop
    assert total == 500


def test_eval_metrics_of_a_perfect_and_a_displaced_prediction(anny_asset):
    """``evaluate.predict`` with a stand-in model that returns the ground truth moved by 5 cm
    and its root turned by 30 degrees in place of the truth: root-relative errors are 0
    (MPJPE, PA-MPJPE, PVE), the translation error is 5 cm, the orientation error 30 degrees."""
    from _batches import make_batch
    from d2a_edge.body.lbs_torch import BodyLayer
    from d2a_edge.body.rotations import rodrigues
    from d2a_edge.training.evaluate import predict
    b = make_batch(anny_asset, 3, 64, seed=5)
    body = BodyLayer(anny_asset)
    shift = torch.tensor([0.03, 0.0, 0.04])

    class Stand:
        def __init__(self):
            self.body = body

        def __call__(self, image, info):
            verts, joints = body(b["rotmats"], b["betas"], b["transl"])
            rot = b["rotmats"].clone()
            rot[:, 0] = rot[:, 0] @ torch.as_tensor(rodrigues(np.array([0.0, np.radians(30), 0.0])),
                                                   dtype=rot.dtype)
            return {"joints3d": joints + shift, "vertices": verts + shift,
                    "translation": b["transl"] + shift, "rotmats": rot,
                    "joint_mu": b["joints3d"] - b["transl"][:, None],
                    "joint_sigma": torch.full((3, anny_asset.num_joints, 3), 0.01)}

    r = predict(Stand(), [b], "cpu", progress=False)
    for k in ("mpjpe", "pa_mpjpe", "pve"):
        np.testing.assert_allclose(r[k], 0.0, atol=1e-2, err_msg=k)
    np.testing.assert_allclose(r["trans_err_cm"], 5.0, atol=1e-4)
    np.testing.assert_allclose(r["root_rot_deg"], 30.0, atol=1e-2)
    np.testing.assert_allclose(r["pck3d_150"], 1.0)
    np.testing.assert_allclose(r["mu_err"], 0.0, atol=1e-3)


def test_a_damaged_train_state_is_caught_before_resuming(tmp_path, anny_asset):
    """--resume reads train_state.safetensors: a flipped byte in it (same size) must fail the
    sha256 check, so latest_intact passes over that checkpoint instead of resuming from it."""
    from _batches import tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training.train import Dist, build_state, save
    cfg = tiny_config()
    st = build_state(cfg, Dist(), 10, anny_asset)
    st.step = 3
    path = save(st, cfg, tmp_path, Dist())
    f = path / "train_state.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    ckpt.read_checkpoint(tmp_path)  # the weights alone are fine
    with pytest.raises(ckpt.CheckpointError, match="train_state.safetensors is corrupt"):
        ckpt.verify_checkpoint(tmp_path, with_train_state=True)
    found, skipped = ckpt.latest_intact(tmp_path)
    assert found is None and "sha256 mismatch" in skipped[0]


def test_gradients_are_clipped_and_the_ema_follows_the_updated_weights(anny_asset):
    """train_step: the gradients the optimizer steps on are clipped to optim.grad_clip (all of
    them, the RLE flow's too), and the EMA averages in the weights after this step's update."""
    import contextlib

    from _batches import make_batch, tiny_config
    from d2a_edge.training import train as T
    clip, decay = 1e-3, 0.5
    cfg = tiny_config(optim={"grad_clip": clip, "ema_decay": decay, "warmup_steps": 0})
    st = T.build_state(cfg, T.Dist(), total_steps=10, asset=anny_asset)
    before = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
    out = T.train_step(st, make_batch(anny_asset, 2, 64, seed=5), cfg, contextlib.nullcontext)
    assert out["grad_norm"] > 10 * clip  # the reported norm is the one before clipping
    grads = [p.grad for g in st.optimizer.param_groups for p in g["params"] if p.grad is not None]
    assert any(p.grad is not None for p in st.loss.parameters())  # the flow is optimised too
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert float(total) <= clip * (1 + 1e-3)
    after = st.model.state_dict()
    moved = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(st.ema.state_dict()[k],
                                   decay * before[k] + (1 - decay) * after[k])


def test_init_starts_the_model_and_the_ema_from_the_ema_weights(tmp_path, anny_asset, monkeypatch):
    """--init CHECKPOINT takes its EMA weights (not the raw ones) for the model and the EMA;
    --init BUNDLE puts the recovered weights into the EMA too (left alone, the EMA would keep
    averaging in the random initial weights it was built with)."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training import recover
    from d2a_edge.training import train as T
    cfg = tiny_config(optim={"ema_decay": 0.5, "warmup_steps": 1})
    T.run(cfg, BatchDataset(anny_asset, 4, 64, seed=4), tmp_path / "a", steps=2, ckpt_every=0,
          asset=anny_asset, progress=False)
    ema = ckpt.split_weights(ckpt.read_checkpoint(tmp_path / "a")["weights"], "ema")
    cfg_b = tiny_config(optim={"ema_decay": 0.9}, train={"seed": 123})
    st = T.build_state(cfg_b, T.Dist(), total_steps=5, asset=anny_asset)
    T.init_weights(st, str(tmp_path / "a"), T.Dist())
    for k, v in ema.items():
        torch.testing.assert_close(st.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(st.ema.state_dict()[k], v, rtol=0, atol=0, msg=k)

    src = T.build_state(cfg, T.Dist(), total_steps=5, asset=anny_asset).model  # seed 0 weights
    st = T.build_state(cfg_b, T.Dist(), total_steps=5, asset=anny_asset)
    monkeypatch.setattr(recover, "is_bundle", lambda path: True)
    monkeypatch.setattr(recover, "recover", lambda path, progress=None: (src, cfg, {}))
    monkeypatch.setattr(recover, "loss_state", lambda path: None)
    monkeypatch.setattr(recover, "print_report", lambda *a, **k: None)
    T.init_weights(st, "bundle", T.Dist())
    for k, v in src.state_dict().items():
        torch.testing.assert_close(st.ema.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_step_sampler_reshuffles_every_epoch():
    """T5: each epoch is a new permutation of the whole dataset (seeded by seed and epoch)."""
    from d2a_edge.training.feed import StepSampler
    n, bs = 12, 4  # 3 steps per epoch
    it = iter(StepSampler(n, bs, 0, 1, seed=5, start=0))
    epochs = [sum((next(it) for _ in range(3)), []) for _ in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(n))  # every sample once per epoch
    assert len({tuple(o) for o in epochs}) == 4  # a different order every epoch
    # and the order is a function of (seed, epoch): a sampler started in epoch 2 agrees
    it2 = iter(StepSampler(n, bs, 0, 1, seed=5, start=6))
    assert sum((next(it2) for _ in range(3)), []) == epochs[2]


def test_echo_draws_differ_from_step_to_step():
    """T8: the echo draw is seeded by the step: the same step draws the same rows, consecutive
    steps draw different ones."""
    from d2a_edge.training.feed import EchoBuffer
    buf = EchoBuffer(seed=0)
    for i in range(4):
        buf.add({"x": torch.arange(4) + 10 * i})
    draws = [tuple(buf.draw(step=s, size=4)["x"].tolist()) for s in range(5, 10)]
    assert draws[0] == tuple(buf.draw(step=5, size=4)["x"].tolist())
    assert len(set(draws)) == len(draws)
    assert len({frozenset(d) for d in draws}) > 1  # not just reordered: other samples too


def test_on_the_fly_splits_each_get_their_own_seed():
    """T6: on-the-fly split k is seeded train.seed + k, so two shares of the same split (e.g.
    ``--on-the-fly id ood ood``) render different samples instead of the same ones twice."""
    import argparse

    from _batches import tiny_config
    from d2a_edge.training.data.engine import sample_rng
    from d2a_edge.training.feed import build_dataset
    cfg = tiny_config(train={"seed": 7})
    args = argparse.Namespace(data=None, on_the_fly=["id", "ood", "ood"], on_the_fly_size=30)
    ds = build_dataset(args, cfg)  # nothing renders until a sample is read
    parts = ds.datasets
    assert [(p.split, p.seed, len(p)) for p in parts] == [("id", 7, 10), ("ood", 8, 10),
                                                          ("ood", 9, 10)]
    first = [sample_rng(p.seed, p.split, 0).random(4).tolist() for p in parts]
    assert first[1] != first[2]  # the two OOD shares draw different samples


class _Indexed(torch.utils.data.Dataset):
    """Samples that only say which they are (the training step is replaced below)."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "idx": torch.tensor(i)}


@requires_anny
@pytest.mark.parametrize("stop", [3, 4])  # interrupted at an echo step / at a fresh step
def test_resume_with_echo_continues_the_data_order(tmp_path, anny_asset, monkeypatch, stop):
    """T4: with data echoing (a fresh batch every ``echo`` steps) a resumed run fetches the
    same fresh batches at the same steps as an uninterrupted one (the loader restarts at
    fresh batch ``step // echo``). The optimisation step is replaced by a recorder: only the
    data order is under test."""
    from _batches import tiny_config
    from d2a_edge.training import train as T
    log = []

    def record(st, batch, cfg, amp):
        log.append((st.step, tuple(batch["idx"].tolist())))
        st.step += 1
        return {"total": 0.0}

    monkeypatch.setattr(T, "train_step", record)
    cfg = tiny_config()
    kw = dict(ckpt_every=0, asset=anny_asset, progress=False, echo=2)
    T.run(cfg, _Indexed(), tmp_path / "full", steps=8, **kw)
    full = dict(log)
    log.clear()
    T.run(cfg, _Indexed(), tmp_path / "cut", steps=stop, **kw)
    T.run(cfg, _Indexed(), tmp_path / "cut", steps=8, resume=True, **kw)
    resumed = dict(log)
    assert sorted(resumed) == list(range(8))
    fresh = [s for s in range(stop, 8) if s % 2 == 0]  # (echo draws start from an empty buffer)
    assert [resumed[s] for s in fresh] == [full[s] for s in fresh]
    assert len({full[s] for s in range(0, 8, 2)}) == 4  # the fresh batches are all different


class _FailsAt(_Indexed):
    """From the ``bad``-th sample read on (in this process): a lost shard file (OSError), or
    with ``die`` the worker process ends at once, as when the OOM killer takes it."""

    def __init__(self, bad: int, die: bool = False):
        self.bad, self.die, self.reads = bad, die, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.bad:
            if self.die and torch.utils.data.get_worker_info() is not None:
                os._exit(1)
            raise OSError(f"shard file for sample {i} vanished")
        return super().__getitem__(i)


@requires_anny
@pytest.mark.parametrize("workers,die", [(0, False), (1, True)])
def test_a_failing_loader_keeps_the_steps_done(tmp_path, anny_asset, monkeypatch, workers, die):
    """A batch that cannot be fetched (a lost shard file; a loader worker killed) stopped the
    run with the steps since the last checkpoint lost; now the run saves a checkpoint at the
    step it reached and says so, and --resume continues from it."""
    from _batches import tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training import train as T

    def record(st, batch, cfg, amp):
        st.step += 1
        return {"total": 0.0}

    monkeypatch.setattr(T, "train_step", record)
    cfg = tiny_config(train={"batch_size": 2, "seed": 0})
    kw = dict(ckpt_every=0, asset=anny_asset, progress=False, workers=workers)
    with pytest.raises(RuntimeError, match="data loader failed at step") as e:
        T.run(cfg, _FailsAt(6, die), tmp_path, steps=8, **kw)
    # the batches before the failing one: all of them (a lost file), or some (a worker's death
    # is noticed while the batches it had made are still being received)
    step = int(re.search(r"failed at step (\d+)", str(e.value)).group(1))
    assert step == 3 or (die and 0 < step < 3), str(e.value)
    assert f"saved a checkpoint at step {step}: fix the cause and --resume" in str(e.value)
    start, _ = ckpt.latest_intact(tmp_path)
    assert start is not None and start.name == f"step_{step:08d}"
    assert T.run(cfg, _Indexed(), tmp_path, steps=8, resume=True, **kw)["step"] == 8


@requires_anny
def test_resume_applies_a_new_lr_and_refuses_what_is_no_run(tmp_path, anny_asset, capsys):
    """--resume --lr: the optimizer went on at the checkpoint's lr (its scheduler restored the
    old peak) while run.json recorded the new one; now the schedule goes on with the new peak.
    A run at or past --steps says there is nothing to train (it said it 're-fits the schedule').
    --out holding a bundle's or a dataset's manifest.json is refused (training wrote into it
    and d2a-eval then read the old bundle)."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import train as T
    from d2a_edge.training.resume import checkpoint_to_resume
    from d2a_edge.training.schedule import lr_factor
    cfg, ds = tiny_config(optim={"lr": 3e-4}), BatchDataset(anny_asset, 4, 64, seed=4)
    T.run(cfg, ds, tmp_path / "r", steps=2, ckpt_every=0, asset=anny_asset, progress=False)
    new = tiny_config(optim={"lr": 1e-3})
    st = T.build_state(new, T.Dist(), total_steps=6, asset=anny_asset)
    T.resume_state(st, tmp_path / "r", T.Dist(), new)
    assert "--lr 0.0003 -> 0.001" in capsys.readouterr().err
    assert st.step == 2 and st.scheduler.base_lrs == [1e-3]
    for _ in range(2):  # the lr of the next step, then after a scheduler step
        want = 1e-3 * lr_factor(st.scheduler.last_epoch, 6, new.optim)
        assert st.optimizer.param_groups[0]["lr"] == pytest.approx(want)
        assert st.scheduler.get_last_lr()[0] == pytest.approx(want)
        st.scheduler.step()
    T.run(cfg, ds, tmp_path / "r", steps=2, resume=True, ckpt_every=0, asset=anny_asset,
          progress=False)
    assert "at step 2, at or past --steps 2: nothing to train" in capsys.readouterr().err
    for manifest in ({"format": "d2a-edge-synthetic"}, {"manifest_version": 1}):
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match="holds a manifest.json.*choose another --out"):
            checkpoint_to_resume(tmp_path / "m", resume=False)


@requires_anny
def test_init_from_another_model_and_eval_without_latest_json_are_clear(tmp_path, anny_asset):
    """--init from a checkpoint of another model printed PyTorch's 286 lines of mismatched
    tensors; now one line. A run whose latest.json is gone still names its newest checkpoint
    (d2a-eval said 'no checkpoint at RUN'). A dataset passed as a model says so (it said
    'manifest_version None ... re-export the model')."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.bundle import BundleError, load_bundle
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training import train as T
    from d2a_edge.training.resume import init_weights
    cfg = tiny_config()
    T.run(cfg, BatchDataset(anny_asset, 4, 64, seed=4), tmp_path / "r", steps=2, ckpt_every=1,
          asset=anny_asset, progress=False)
    wide = tiny_config(model={"encoder": {"mlp_ratio": 4.0}})
    st = T.build_state(wide, T.Dist(), total_steps=3, asset=anny_asset)
    with pytest.raises(ValueError, match=r"^--init .*config 'edge-s'.* do not fit this run's "
                                         r"model \(.*\); --init needs") as e:
        init_weights(st, str(tmp_path / "r"), T.Dist())
    assert "\n" not in str(e.value)
    (tmp_path / "r" / "checkpoints" / "latest.json").unlink()
    assert ckpt.resolve_checkpoint(tmp_path / "r").name == "step_00000002"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({"format": "d2a-edge-synthetic"}))
    with pytest.raises(BundleError, match="is a synthetic dataset .*not a model bundle"):
        load_bundle(tmp_path / "d")
