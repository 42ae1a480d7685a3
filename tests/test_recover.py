"""Training weights recovered from an exported bundle (training.recover, --init BUNDLE)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import has_module, requires_anny, requires_torch

pytestmark = [requires_torch, requires_anny,
              pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime")]

TRAINING_ONLY = ("silhouette.", "mask_token", "vertex_head.")


@pytest.fixture(scope="module")
def exported_with_extras(anny_asset, tmp_path_factory):
    """A tiny D2A-HMR as after training (every weight non-zero, BatchNorms with their own
    statistics and affines), its loss's state (the RLE flow, perturbed too) and its fp32
    bundle, training extras included: ``(model, bundle folder, loss state)``."""
    from _batches import tiny_config
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    from d2a_edge.training.losses import D2ALoss
    from d2a_edge.training.model import build_model
    torch.manual_seed(3)
    cfg = tiny_config()
    model = build_model(cfg.model, anny_asset)
    loss = D2ALoss(cfg.loss, model.body)
    with torch.no_grad():
        for p in list(model.parameters()) + list(loss.parameters()):
            p.add_(0.02 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.3), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0.0, 0.2)
    out = tmp_path_factory.mktemp("tiny_bundle_extras")
    export_bundle(model.eval(), anny_asset, ExportRequest(out=out, val_samples=4),
                  name="tiny-recover", progress=lambda *a: None, loss_state=loss.state_dict())
    return model, out, loss.state_dict()


@pytest.fixture(scope="module")
def exported(exported_with_extras, tmp_path_factory):
    """The same bundle without its training extras, as one exported before them (the shipped
    edge-s): ``(model, bundle folder)``."""
    model, src, _ = exported_with_extras
    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    shutil.copytree(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / manifest.pop("training_extras")["file"]).unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return model, out


@pytest.fixture(scope="module")
def recovered(exported):
    from d2a_edge.training.recover import recover
    return recover(exported[1], samples=8, seed=7, progress=lambda *a: None)


def _outputs(model, images, info, batchnorm_training: bool = False):
    """The fused graph's outputs (eval mode; with ``batchnorm_training`` the BatchNorms use the
    batch's statistics)."""
    from d2a_edge.training.inference import FusedGraph
    graph = FusedGraph(model)  # sets eval mode
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train(batchnorm_training)
    try:
        with torch.no_grad():
            return [o.numpy() for o in graph(torch.from_numpy(images), torch.from_numpy(info))]
    finally:
        model.eval()


def test_recovered_model_computes_what_the_original_did(exported, recovered, anny_asset):
    original, _ = exported
    model, cfg, report = recovered
    assert cfg.model == original.cfg
    assert report["parameters_copied"] > 100 and report["batchnorms_refitted"] > 10
    assert max(report["max_abs_error"].values()) < 1e-4, report["max_abs_error"]
    from d2a_edge.export import verify
    images, info, _ = verify.validation_set(anny_asset, 6, 64, seed=123, split="ood")
    for a, b in zip(_outputs(original.eval(), images, info), _outputs(model, images, info)):
        np.testing.assert_allclose(b, a, atol=1e-4)
    # what is not in the graph is training-only, and that is all that is freshly initialised
    assert report["fresh_parameters"]
    assert all(n.startswith(TRAINING_ONLY) for n in report["fresh_parameters"])


def test_weights_are_the_originals_where_the_graph_keeps_them(exported, recovered):
    """Parameters outside folded BatchNorms, their convolutions and decoder layer 0 (which
    the export folds into constants) come back unchanged."""
    original, _ = exported
    model, _, report = recovered
    got = dict(model.named_parameters())
    convs = {n for n, m in original.named_modules() if isinstance(m, torch.nn.Conv2d)}
    bns = {n for n, m in original.named_modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    checked = 0
    for name, p in original.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if (owner in convs or owner in bns or name == "queries"
                or name.startswith(("decoder.layers.0.", *TRAINING_ONLY))):
            continue
        torch.testing.assert_close(got[name], p, rtol=0, atol=1e-7, msg=name)
        checked += 1
    assert checked > 50


def test_batchnorms_in_training_mode_compute_what_eval_does_on_their_fit_batch(
        exported, recovered, anny_asset):
    """Each refitted BatchNorm's running statistics are those of its input on the fit crops,
    so in training mode (batch statistics) on exactly those crops it computes what eval does;
    the decoder's dropout is 0 and the mask only acts in forward_features' training branch."""
    import copy

    from d2a_edge.training.recover import fit_crops
    model = copy.deepcopy(recovered[0])  # training mode moves the running statistics
    images, info = fit_crops(anny_asset, 64, 8, 7)
    ref = _outputs(model, images, info)
    got = _outputs(model, images, info, batchnorm_training=True)
    assert all(m.training is False for m in model.modules())
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, atol=2e-4)


def test_cli_writes_a_checkpoint_that_loads_and_d2a_train_inits_from_a_bundle(
        exported, recovered, tmp_path, capsys, anny_asset, monkeypatch):
    import functools

    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training import recover as R
    from d2a_edge.training.train import TrainModule, run
    main = R.main
    assert main([str(exported[1]), "--out", str(tmp_path / "init"), "--samples", "8",
                 "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorms refitted on 8 crops" in out and "max |torch - onnxruntime|" in out
    meta = ckpt.read_checkpoint(tmp_path / "init")["meta"]
    assert meta["weights_only"] and meta["recovered_from"]["model"] == "tiny-recover"
    loaded = ckpt.load_model(tmp_path / "init", asset=anny_asset)
    for k, v in recovered[0].state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)
    # d2a-train --init BUNDLE recovers the weights itself (fewer crops here, for time)
    monkeypatch.setattr(R, "recover", functools.partial(R.recover, samples=8, seed=7))
    cfg = tiny_config(optim={"warmup_steps": 1})
    seen = {}
    monkeypatch.setattr(TrainModule, "forward", _spy_on_first_step(seen, TrainModule.forward))
    summary = run(cfg, BatchDataset(anny_asset, 4, 64, seed=4), tmp_path / "run", steps=2,
                  ckpt_every=0, asset=anny_asset, progress=False, init=str(exported[1]))
    assert summary["step"] == 2 and np.isfinite(summary["losses"]["total"])
    for k, v in recovered[0].state_dict().items():  # the weights the first step started from
        torch.testing.assert_close(seen["weights"][k], v, rtol=0, atol=1e-6, msg=k)
    assert "recovered tiny-recover" in capsys.readouterr().err


def _spy_on_first_step(seen: dict, forward):
    def spy(self, *args, **kwargs):
        seen.setdefault("weights", {k: v.detach().clone()
                                    for k, v in self.model.state_dict().items()})
        seen.setdefault("loss", {k: v.detach().clone() for k, v in self.loss.state_dict().items()})
        return forward(self, *args, **kwargs)
    return spy


def test_bad_bundles_are_clear_errors(exported, tmp_path, capsys):
    from d2a_edge.training.recover import RecoveryError, main, recover
    src = exported[1]

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    with pytest.raises(RecoveryError, match="no manifest.json"):
        recover(tmp_path / "nowhere", samples=2, progress=lambda *a: None)
    corrupt = copy("corrupt")
    (corrupt / "model_fp32.onnx").write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(RecoveryError, match="does not match the manifest's size and sha256"):
        recover(corrupt, samples=2, progress=lambda *a: None)
    unhashed = copy("unhashed")  # a manifest without sizes and hashes: the graph reader finds it
    (unhashed / "model_fp32.onnx").write_bytes(b"\x08\x07 not a protobuf")
    m = json.loads((unhashed / "manifest.json").read_text())
    for key in ("bytes", "sha256"):
        del m["artifacts"]["fp32"][key]
    (unhashed / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecoveryError, match="not a readable ONNX graph"):
        recover(unhashed, samples=2, progress=lambda *a: None)
    gone = copy("gone")
    (gone / "model_fp32.onnx").unlink()
    with pytest.raises(RecoveryError, match="model_fp32.onnx, but the file is missing"):
        recover(gone, samples=2, progress=lambda *a: None)
    m["artifacts"]["fp16"] = m["artifacts"].pop("fp32")  # a bundle without an fp32 graph
    (gone / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecoveryError, match="no fp32 ONNX graph"):
        recover(gone, samples=2, progress=lambda *a: None)
    other = copy("other")  # the manifest claims another architecture than the graph holds
    m = json.loads((other / "manifest.json").read_text())
    m["config"]["encoder"]["mlp_ratio"] = 4.0
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecoveryError, match="another version of the model code or config"):
        recover(other, samples=2, progress=lambda *a: None)
    diverged = copy("diverged")  # a NaN weight, the manifest's hash updated to match: it was
    # "the graph holds only part of parameter ...", as if the export had lost a piece
    import hashlib

    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(diverged / "model_fp32.onnx"))
    init = next(i for i in g.graph.initializer if numpy_helper.to_array(i).size > 100)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[3] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(g, str(diverged / "model_fp32.onnx"))
    m = json.loads((diverged / "manifest.json").read_text())
    data = (diverged / "model_fp32.onnx").read_bytes()
    m["artifacts"]["fp32"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (diverged / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RecoveryError, match="hold NaN or inf: the model diverged"):
        recover(diverged, samples=2, progress=lambda *a: None)
    assert main([str(unhashed), "--out", str(tmp_path / "x")]) == 2
    assert "not a readable ONNX graph" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_d2a_export_and_d2a_eval_take_a_bundle(exported, tmp_path, anny_asset, capsys):
    """A bundle re-exports (another precision or batch, without the training checkpoint) to
    a graph that computes what the original did, and evaluates like a checkpoint."""
    from _batches import BatchDataset
    from d2a_edge.export import onnx_tools, verify
    from d2a_edge.export.cli import main as export_main
    from d2a_edge.training.evaluate import evaluate_checkpoint
    from d2a_edge.training.inference import OUTPUT_NAMES
    src = exported[1]
    assert export_main([str(src), "--out", str(tmp_path / "re"), "--val-samples", "4"]) == 0
    assert "recover: mapping the export" in capsys.readouterr().err
    images, info, _ = verify.validation_set(anny_asset, 4, 64, seed=321, split="id")
    a, b = (verify.run_onnx(onnx_tools.ort_session(d / "model_fp32.onnx"), images, info,
                            OUTPUT_NAMES) for d in (src, tmp_path / "re"))
    for name, x, y in zip(OUTPUT_NAMES, a, b):
        np.testing.assert_allclose(y, x, atol=1e-4, err_msg=name)
    manifest = json.loads((tmp_path / "re" / "manifest.json").read_text())
    assert manifest["source_checkpoint"] == str(Path(src).resolve())
    # backend="torch" runs the exported source (here the bundle src, its weights recovered)
    from d2a_edge import MeshRecoverer
    by_torch = MeshRecoverer(tmp_path / "re", backend="torch", device="cpu").backend
    assert by_torch.name == "torch"
    got = by_torch.run(images, info)
    for name, x in zip(OUTPUT_NAMES, b):
        np.testing.assert_allclose(got[name], x, atol=1e-3, err_msg=name)
    # src has no training extras, so its training-only parts came back freshly initialised:
    # the new bundle's extras leave them out and name them, and training from it knows them
    # as fresh (they were marked trained, and --warm-fresh refused the bundle)
    from safetensors.numpy import load_file
    from d2a_edge.training import recover as R
    untrained = manifest["training_extras"]["untrained"]
    assert untrained and any(n.startswith("silhouette.") for n in untrained)
    extras = load_file(str(tmp_path / "re" / manifest["training_extras"]["file"]))
    assert not {f"model.{n}" for n in untrained} & set(extras)
    assert R.has_fresh_parts(tmp_path / "re")
    _, _, report = R.recover(tmp_path / "re", samples=4, seed=7, progress=lambda *a: None)
    assert report["fresh_parameters"] == untrained

    res = evaluate_checkpoint(src, {"id": BatchDataset(anny_asset, 4, 64, seed=3)},
                              tmp_path / "eval", batch_size=4, progress=False)
    assert res["id"]["num_samples"] == 4 and np.isfinite(res["id"]["pa_mpjpe"])
    js = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert js["checkpoint"] == str(src) and js["step"] == 0


def test_warm_fresh_trains_only_the_fresh_parts_first(exported, recovered, tmp_path, anny_asset,
                                                      monkeypatch):
    """With --init BUNDLE, the first --warm-fresh steps leave every recovered parameter as it
    was and train the fresh training-only parts; after them (here across a --resume) all train.
    A trained checkpoint has no fresh parts, so --warm-fresh with it is an error."""
    import functools

    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training import recover as R
    from d2a_edge.training.train import run
    monkeypatch.setattr(R, "recover", functools.partial(R.recover, samples=8, seed=7))
    cfg = tiny_config(optim={"warmup_steps": 1})
    ds = BatchDataset(anny_asset, 4, 64, seed=4)
    start = {n: p.detach().clone() for n, p in recovered[0].named_parameters()}
    graph = R.graph_parameters(recovered[0], 64)

    def weights():
        return ckpt.split_weights(ckpt.read_checkpoint(tmp_path / "r")["weights"], "model")

    run(cfg, ds, tmp_path / "r", steps=2, ckpt_every=0, asset=anny_asset, progress=False,
        init=str(exported[1]), warm_fresh=2)
    w = weights()
    for n in graph:
        torch.testing.assert_close(w[n], start[n], rtol=0, atol=0, msg=n)
    moved = [n for n in start if n not in graph and not torch.equal(w[n], start[n])]
    assert any(n.startswith("silhouette.") for n in moved), moved
    run(cfg, ds, tmp_path / "r", steps=3, ckpt_every=0, asset=anny_asset, progress=False,
        init=str(exported[1]), warm_fresh=2, resume=True)
    w = weights()
    assert sum(not torch.equal(w[n], start[n]) for n in graph) > len(graph) // 2

    # a checkpoint written by recover has the same fresh parts; a trained one has none
    R.save_recovered(*recovered, tmp_path / "ck")
    assert R.has_fresh_parts(tmp_path / "ck") and not R.has_fresh_parts(tmp_path / "r")
    from d2a_edge.training import train as T
    monkeypatch.setattr(T, "build_state", lambda *a, **k: pytest.fail("checked too late"))
    with pytest.raises(ValueError, match="--warm-fresh 1: needs .* --init BUNDLE"):
        run(cfg, ds, tmp_path / "x", steps=1, ckpt_every=0, asset=anny_asset, progress=False,
            init=str(tmp_path / "r"), warm_fresh=1)  # before the model is built (or recovered)


def test_training_extras_give_back_the_exported_model_and_loss(exported_with_extras, tmp_path,
                                                               anny_asset, monkeypatch):
    """A bundle with training extras recovers every tensor of the exported model (BatchNorm
    statistics, decoder layer 0, training-only parts) to float rounding, and the loss's RLE
    flow; nothing starts fresh, so --warm-fresh refuses it and d2a-train --init starts from
    exactly those weights."""
    import functools

    from _batches import BatchDataset, tiny_config
    from d2a_edge.training import checkpoint as ckpt
    from d2a_edge.training import recover as R
    from d2a_edge.training.train import TrainModule, run
    original, bundle, loss = exported_with_extras
    model, _, report = R.recover(bundle, samples=8, seed=7, progress=lambda *a: None)
    assert report["fresh_parameters"] == [] and report["batchnorms_refitted"] == 0
    assert report["training_extras"] > 50 and max(report["max_abs_error"].values()) < 1e-4
    got = model.state_dict()
    for k, v in original.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in R.loss_state(bundle).items():
        torch.testing.assert_close(v, loss[k], rtol=0, atol=0, msg=k)
    assert not R.has_fresh_parts(bundle)
    assert R.main([str(bundle), "--out", str(tmp_path / "init"), "--samples", "8"]) == 0
    w = ckpt.read_checkpoint(tmp_path / "init")["weights"]
    assert set(ckpt.split_weights(w, "loss")) == set(loss) and not R.has_fresh_parts(
        tmp_path / "init")

    monkeypatch.setattr(R, "recover", functools.partial(R.recover, samples=8, seed=7))
    seen = {}
    monkeypatch.setattr(TrainModule, "forward", _spy_on_first_step(seen, TrainModule.forward))
    ds = BatchDataset(anny_asset, 4, 64, seed=4)
    cfg = tiny_config(optim={"warmup_steps": 1})
    run(cfg, ds, tmp_path / "run", steps=1, ckpt_every=0, asset=anny_asset, progress=False,
        init=str(bundle))
    for k, v in original.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(seen["weights"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in loss.items():
        torch.testing.assert_close(seen["loss"][k], v, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="--warm-fresh 1: needs .* --init BUNDLE"):
        run(cfg, ds, tmp_path / "x", steps=1, ckpt_every=0, asset=anny_asset, progress=False,
            init=str(bundle), warm_fresh=1)


def test_training_extras_that_do_not_match_are_a_clear_error(exported_with_extras, tmp_path):
    """Extras from another export (their hash, or the graph's, differs from the manifest) are
    an error; a bundle whose extras file was deleted recovers the old way."""
    from d2a_edge.training.recover import RecoveryError, recover
    _, src, _ = exported_with_extras
    other = tmp_path / "other"
    shutil.copytree(src, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["training_extras"]["graph_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecoveryError, match="does not match .* delete it and its manifest"):
        recover(other, samples=2, progress=lambda *a: None)
    (other / manifest["training_extras"]["file"]).unlink()
    _, _, report = recover(other, samples=4, progress=lambda *a: None)
    assert report["training_extras"] is None and report["fresh_parameters"]
