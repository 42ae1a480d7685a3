"""``d2a-train --cuda-graph``: graphed steps train exactly like eager ones (GPU); clear errors
where graphs cannot run (CPU)."""
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_gpu, requires_torch

pytestmark = [requires_torch, pytest.mark.usefixtures("torch_one_thread")]
sys.path.insert(0, str(Path(__file__).parent))


def test_cuda_graph_needs_one_cuda_process(tmp_path, anny_asset):
    from _batches import BatchDataset, tiny_config
    from d2a_edge.training.train import run
    cfg, ds = tiny_config(), BatchDataset(anny_asset, 4, 64, seed=4)
    with pytest.raises(ValueError, match="--cuda-graph needs one CUDA process .* device cpu"):
        run(cfg, ds, tmp_path, steps=1, device="cpu", asset=anny_asset, progress=False,
            cuda_graph=True)
    assert not (tmp_path / "checkpoints").exists()  # nothing written


def _relative_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """|got - want| / |want| over all the tensors together (float64)."""
    g = torch.cat([x.detach().double().flatten() for x in got])
    w = torch.cat([x.detach().double().flatten() for x in want])
    return float((g - w).norm() / w.norm().clamp_min(1e-30))


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "autocast"])
def test_graphed_steps_match_eager_steps(anny_asset, amp):
    """Two states from the same seed, one eager and one graphed, on three different batches
    and then a smaller one (which the graphed state runs eagerly): the same losses and gradient
    norms at every step, the same weight changes and BatchNorm statistics at the end. Replaying
    stale inputs, losing the warm-up's BatchNorm updates or skipping the autocast would each
    break it. Tolerances allow for the GPU's non-deterministic atomics (whose noise AdamW turns
    into sign flips of single near-zero-gradient updates), hence norms over the whole model."""
    from _batches import make_batch, tiny_config
    from d2a_edge.training import train as T
    cfg = tiny_config(model={"mask_ratio": 0.0}, optim={"amp": amp})  # no random token mask
    dev = torch.device("cuda")
    batches = [{k: v.to(dev) for k, v in make_batch(anny_asset, n, 64, seed=s).items()}
               for s, n in enumerate((4, 4, 4, 2))]
    eager = T.build_state(cfg, T.Dist(device=dev), total_steps=10, asset=anny_asset)
    graphed = T.build_state(cfg, T.Dist(device=dev), total_steps=10, asset=anny_asset)
    start = [p.detach().clone() for p in eager.model.parameters()]
    assert T.graph_or_eager(graphed, batches[0], T.amp_dtype(dev, cfg.optim))
    assert not graphed.module.fits(batches[3]) and graphed.module.fits(batches[1])
    amp_ctx, _ = T.autocast_for(dev, cfg.optim)
    rtol = 1e-2 if amp else 1e-3
    totals = []
    for b in batches:
        a = T.train_step(eager, b, cfg, amp_ctx)
        g = T.train_step(graphed, b, cfg, contextlib.nullcontext)
        assert a.keys() == g.keys()
        for k in a:
            np.testing.assert_allclose(g[k], a[k], rtol=rtol, atol=1e-6, err_msg=k)
        totals.append(a["total"])
    assert len({round(t, 5) for t in totals}) == len(totals)  # the batches differ
    change = lambda st: [p - s for p, s in zip(st.model.parameters(), start)]  # noqa: E731
    assert _relative_difference(change(graphed), change(eager)) < 5 * rtol
    bn_stats = lambda st: [b for n, b in st.model.named_buffers() if "running_" in n]  # noqa
    assert bn_stats(eager) and _relative_difference(bn_stats(graphed), bn_stats(eager)) < rtol


def test_graphed_module_wiring_on_cpu(monkeypatch, anny_asset):
    """The wiring around the capture, without a GPU: ``make_graphed_callables`` replaced by its
    warm-up alone (eager calls, the callable returned as is). BatchNorm statistics are put back
    after the warm-up, the loss names map to the outputs, a batch of another shape takes the
    eager path, and the steps equal eager ones exactly. The capture itself is checked by the
    GPU test above."""
    from _batches import make_batch, tiny_config
    from d2a_edge.training import train as T

    def warm_up_only(func, sample, num_warmup_iters, allow_unused_input):
        for _ in range(num_warmup_iters):
            func(*sample)
        return func

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", warm_up_only)
    cfg = tiny_config(model={"mask_ratio": 0.0})
    batches = [make_batch(anny_asset, n, 64, seed=s) for s, n in enumerate((3, 3, 2))]
    eager = T.build_state(cfg, T.Dist(), total_steps=10, asset=anny_asset)
    wired = T.build_state(cfg, T.Dist(), total_steps=10, asset=anny_asset)
    train_module = wired.module
    before = [b.clone() for b in train_module.buffers()]
    assert T.graph_or_eager(wired, batches[0], None)
    for b, saved in zip(train_module.buffers(), before):
        torch.testing.assert_close(b, saved, rtol=0, atol=0)
    assert "total" in wired.module.names and not wired.module.fits(batches[2])
    for b in batches:
        a = T.train_step(eager, b, cfg, contextlib.nullcontext)
        g = T.train_step(wired, b, cfg, contextlib.nullcontext)
        assert g == a
    for p, q in zip(eager.model.parameters(), wired.model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_a_failing_capture_leaves_the_step_eager(monkeypatch, anny_asset, capsys):
    from _batches import make_batch, tiny_config
    from d2a_edge.training import train as T

    def fails(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fails)
    st = T.build_state(tiny_config(), T.Dist(), total_steps=2, asset=anny_asset)
    module = st.module
    assert not T.graph_or_eager(st, make_batch(anny_asset, 2, 64, seed=0), None)
    assert st.module is module
    assert "CUDA graph capture failed (RuntimeError: operation not permitted" in \
        capsys.readouterr().err
