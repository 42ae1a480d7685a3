"""Training checkpoints and --resume, in process: save, read and prune; damaged checkpoints;
--stop-after; --init and weights-only copies; resuming with echo, channels-last or --freeze; a
failing data loader."""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_anny, requires_torch

pytestmark = [requires_torch, pytest.mark.usefixtures("torch_one_thread")]
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


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


def test_a_new_run_refuses_a_directory_holding_checkpoints(tmp_path, anny_asset):
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.train import run
    cfg, ds = tiny_config(), BatchDataset(anny_asset, 4, 64, seed=4)
    run(cfg, ds, tmp_path, steps=1, ckpt_every=0, asset=anny_asset, progress=False)
    before = (tmp_path / "checkpoints" / "latest.json").read_text()
    with pytest.raises(ValueError, match="already holds a run's checkpoints; pass --resume"):
        run(cfg, ds, tmp_path, steps=1, ckpt_every=0, asset=anny_asset, progress=False)
    assert (tmp_path / "checkpoints" / "latest.json").read_text() == before


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


@requires_anny
def test_cpu_bf16_autocast_trains_close_to_fp32(anny_asset):
    """optim.amp_cpu (d2a-train --cpu-bf16): the CPU step runs under bf16 autocast (its losses
    differ from fp32 ones, so autocast is on) yet stay within bf16 rounding of them over three
    steps; the weights and optimizer state stay fp32 and no fp16 GradScaler is used."""
    from _batches import make_batch, tiny_config
    from d2a_edge.training import train as T
    from d2a_edge.training.train_cli import _parser, config_overrides
    args = _parser().parse_args(["edge-s", "--on-the-fly", "--out", "x", "--cpu-bf16"])
    assert config_overrides(args)["optim"] == {"amp_cpu": True}
    plain = _parser().parse_args(["edge-s", "--on-the-fly", "--out", "x"])
    assert config_overrides(plain)["optim"] == {}
    batch = make_batch(anny_asset, 2, 64, seed=5)
    losses = []
    for bf16 in (False, True):
        cfg = tiny_config(optim={"amp_cpu": bf16})
        dev = torch.device("cpu")
        assert T.amp_dtype(dev, cfg.optim) == (torch.bfloat16 if bf16 else None)
        amp, fp16 = T.autocast_for(dev, cfg.optim)
        assert not fp16
        st = T.build_state(cfg, T.Dist(), total_steps=5, asset=anny_asset)
        losses.append([T.train_step(st, batch, cfg, amp)["total"] for _ in range(3)])
        assert all(p.dtype == torch.float32 for p in st.model.parameters())
        assert not st.scaler.is_enabled()
    assert losses[1] != losses[0]
    np.testing.assert_allclose(losses[1], losses[0], rtol=0.05)
    assert all(np.isfinite(losses[1])) and losses[1][2] != losses[1][0]


def test_cpu_speed_hint_names_the_flags_a_cpu_run_lacks(monkeypatch):
    """d2a-train on a CPU with native bf16 suggests --cpu-bf16 / --channels-last when they are
    off; on a GPU, with both on, or on a CPU without bf16 it says nothing."""
    from _batches import tiny_config
    from d2a_edge.training.train_cli import cpu_speed_hint
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plain, both = tiny_config(), tiny_config(optim={"amp_cpu": True},
                                             train={"channels_last": True})
    assert "--cpu-bf16 --channels-last" in cpu_speed_hint("cpu", plain)
    hint = cpu_speed_hint("auto", tiny_config(train={"channels_last": True}))
    assert "--cpu-bf16" in hint and "--channels-last" not in hint
    assert cpu_speed_hint("cpu", both) is None
    assert cpu_speed_hint("cuda", plain) is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cpu_speed_hint("cpu", plain) is None


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


def test_a_stop_signal_that_ended_the_loaders_workers_is_a_stop_not_a_failure():
    """A SIGTERM to the whole process group kills the loader's workers too; the main process
    then reads a reset socket (ConnectionResetError, an OSError: seen in a CI-like run under
    load, exit 1 and "the data loader failed") or torch's RuntimeError. With the signal
    received, either one is the signal's stop (a None batch); without it, a failure."""
    from types import SimpleNamespace

    from d2a_edge.training import train as T

    def loop(error, received):
        def fail():
            raise error
            yield
        return SimpleNamespace(st=SimpleNamespace(step=4), echoes=None, echo=1, it=fail(),
                               interrupt=SimpleNamespace(received=received),
                               loader_failed=lambda e: ValueError(f"failed: {e}"),
                               d=SimpleNamespace(device=torch.device("cpu")))

    for error in (ConnectionResetError(104, "Connection reset by peer"),
                  RuntimeError("DataLoader worker (pid 7) exited unexpectedly")):
        assert T.Loop.next_batch(loop(error, "SIGTERM")) is None
        with pytest.raises(ValueError, match="failed: "):
            T.Loop.next_batch(loop(error, None))


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


@pytest.mark.parametrize("resume", [False, True])
def test_resume_refuses_an_out_holding_a_manifest_too(tmp_path, resume):
    """`d2a-train --resume --out BUNDLE` is refused as well: otherwise it finds no checkpoint,
    starts at step 0 and writes the run into the bundle (or dataset) directory."""
    from d2a_edge.training.resume import checkpoint_to_resume
    (tmp_path / "manifest.json").write_text(json.dumps({"manifest_version": 1}))
    with pytest.raises(ValueError, match="holds a manifest.json.*choose another --out"):
        checkpoint_to_resume(tmp_path, resume=resume)


@requires_anny
def test_resume_with_fewer_steps_than_done_says_nothing_to_train(tmp_path, anny_asset, capsys):
    """A run at step 2 resumed with --steps 1 says there is nothing to train, not that the
    schedule 're-fits to 1 from here' (then did nothing)."""
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import train as T
    cfg, ds = tiny_config(), BatchDataset(anny_asset, 4, 64, seed=4)
    kw = dict(ckpt_every=0, asset=anny_asset, progress=False)
    T.run(cfg, ds, tmp_path, steps=2, **kw)
    capsys.readouterr()
    T.run(cfg, ds, tmp_path, steps=1, resume=True, **kw)
    err = capsys.readouterr().err
    assert "at step 2, at or past --steps 1: nothing to train" in err and "re-fits" not in err
