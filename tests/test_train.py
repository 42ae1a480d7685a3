"""Training: configs, the LR schedule, the step sampler and data echoing, the time budget,
train_step (EMA, gradient clipping, non-finite losses, torch.compile), overfitting and evaluation.
Checkpoints and --resume: test_train_resume.py; d2a-train and torchrun as processes:
test_train_cli.py."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_anny, requires_torch

pytestmark = [requires_torch, pytest.mark.usefixtures("torch_one_thread")]
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


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


def test_init_names_the_first_mismatched_tensor():
    """--init from another model's weights: the one-line error quotes the first mismatched
    tensor, not PyTorch's header 'Error(s) in loading state_dict for Linear:', which names
    nothing."""
    from d2a_edge.training.resume import _load_init
    with pytest.raises(ValueError, match=r"size mismatch for weight") as e:
        _load_init(torch.nn.Linear(2, 3), {"weight": torch.zeros(3, 3), "bias": torch.zeros(3)},
                   "ck", "edge-s")
    assert "Error(s) in loading" not in str(e.value) and "\n" not in str(e.value)


def test_resolve_checkpoint_falls_back_to_the_newest_step_with_a_meta_json(tmp_path):
    """latest.json gone and the newest step_* directory lacks its meta.json (a damaged copy):
    the newest one that has it is taken, not the broken one (which would then fail to read)."""
    from d2a_edge.training import checkpoint as ckpt
    for step in (1, 2):
        (tmp_path / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000001" / "meta.json").write_text("{}")
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000001"
