"""Training weights back from an exported bundle, so that training can go on from a shipped model.

A bundle holds the fused fp32 ONNX graph, not the training checkpoint. ``recover`` rebuilds the
PyTorch model from it:

1. **Map every ONNX weight to the parameters it came from**, and every BatchNorm to the Conv
   it was folded into, by a probe export of integer-coded parameters (``graph_map.py``).
2. **Copy the bundle's weights through that map.** A folded convolution keeps the folded weight
   and bias; its BatchNorm gets running statistics and an affine measured on rendered crops, so
   that in eval mode it adds the folded bias and is otherwise the identity (exact), and in
   training mode, where BatchNorm uses the batch's statistics, it does about the same.
   Decoder layer 0, which sees only the constant queries, was folded into two constants; it
   is re-parameterised exactly (``_unfold_queries``).
3. **Check**: the recovered model against ONNX Runtime on the bundle, on rendered crops.

The parts that exist only for training (silhouette decoder, mask token, coarse-vertex head, the
RLE flow) are not in the graph: they keep a fresh initialisation, and the report lists them.

**Training extras.** A bundle exported since ``training_extras`` also holds
``training_extras.safetensors`` (about 1.1 MB for edge-s): the BatchNorms' affines and
statistics, decoder layer 0 and its queries, the training-only parameters and the loss's state.
With it, step 2 sets those tensors and divides each folded convolution by its BatchNorm's scale
instead of refitting, so the recovery gives back the exported weights (to float rounding) and
nothing starts fresh. The check of step 3 is the same.

``python -m d2a_edge.training.recover BUNDLE --out RUN`` writes a weights-only checkpoint that
``d2a-train --init RUN`` starts from (``d2a-train --init BUNDLE`` does the same in one step).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from d2a_edge.body import file_sha256
from d2a_edge.bundle import BundleError, load_bundle
from d2a_edge.training.checkpoint import CheckpointError, write_weights_only
from d2a_edge.training.graph_map import RecoveryError, copy_mapped, identity_batchnorms, \
    read_graph, weight_map
from d2a_edge.training.inference import OUTPUT_NAMES, FusedGraph

EXTRAS_FILE = "training_extras.safetensors"  # in a bundle: see ``training_extras``
MAX_VERTEX_ERROR_M = 1e-4  # the recovered model must reproduce the graph (export's fp32 parity)
QUERIES_X = "/decoder/layers.0/Add_output_0"  # the export folds decoder layer 0's self-attention
QUERIES_Q = "/decoder/layers.0/attn_c/Mul_output_0"  # and cross-attention queries into constants


def is_bundle(path) -> bool:
    return (Path(path) / "manifest.json").is_file() and not (Path(path) / "meta.json").is_file()


def has_fresh_parts(init) -> bool:
    """Whether ``--init`` ``init`` leaves training-only parts fresh: a bundle without training
    extras, or a checkpoint that ``save_recovered`` wrote from one."""
    from d2a_edge.training.checkpoint import resolve_checkpoint
    if is_bundle(init):
        try:
            b = load_bundle(init)
            return read_extras(b) is None or bool(b.manifest["training_extras"].get("untrained"))
        except (BundleError, RecoveryError):
            return True
    try:
        meta = json.loads((resolve_checkpoint(init) / "meta.json").read_text())
        return "recovered_from" in meta and not meta["recovered_from"].get("training_extras")
    except (CheckpointError, OSError, ValueError):
        return False


def graph_parameters(model: nn.Module, size: int) -> set[str]:
    """The parameters the fused inference graph depends on (a non-zero gradient)."""
    m = copy.deepcopy(model).eval()
    dev = next(m.parameters()).device
    outs = FusedGraph(m)(torch.rand(2, 3, size, size, device=dev),
                         torch.tensor([[0.0, 0.0, 0.5]] * 2, device=dev))
    sum(o.double().square().sum() for o in outs).backward()
    return {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _unfold_queries(model: nn.Module, shipped: dict) -> set[str]:
    """Decoder layer 0 on the constant queries, which the export folded into two constants:
    the queries after self-attention ``X`` and the scaled cross-attention queries. An exact
    re-parameterisation: ``queries = X`` with the self-attention's output projection at zero,
    and the query projection (``norm_q`` at identity) solved by least squares from
    ``layer_norm(X)``, which determines it (more queries than channels)."""
    if QUERIES_X not in shipped or QUERIES_Q not in shipped:
        raise RecoveryError(f"the graph lacks the folded decoder queries ({QUERIES_X})")
    layer = model.decoder.layers[0]
    x = torch.tensor(shipped[QUERIES_X][0], dtype=torch.float64)  # (Q, D)
    qh = torch.tensor(shipped[QUERIES_Q][0], dtype=torch.float64)  # (heads, Q, D/heads)
    h, n, dh = qh.shape
    q = qh.transpose(0, 1).reshape(n, h * dh) / dh ** -0.25  # SDPA's scale, split over q and k
    z = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=layer.norm_q.eps)
    a = torch.cat([z, torch.ones(n, 1, dtype=z.dtype)], 1)
    sol = torch.linalg.lstsq(a, q, driver="gelsd").solution  # (D + 1, D)
    fit = (a @ sol - q).abs().max().item()
    if fit > 1e-4 * (1 + q.abs().max().item()):
        raise RecoveryError(f"the folded decoder queries do not fit a query projection ({fit:.2e})")
    with torch.no_grad():
        model.queries.copy_(x.unsqueeze(0))
        layer.attn_s.out.weight.zero_(), layer.attn_s.out.bias.zero_()
        layer.norm_q.weight.fill_(1.0), layer.norm_q.bias.zero_()
        layer.attn_c.q.weight.copy_(sol[:-1].T), layer.attn_c.q.bias.copy_(sol[-1])
    return UNFOLDED


UNFOLDED = {"queries"} | {f"decoder.layers.0.{n}" for n in (  # what _unfold_queries sets
    "attn_s.out.weight", "attn_s.out.bias", "norm_q.weight", "norm_q.bias", "attn_c.q.weight",
    "attn_c.q.bias", "norm_s.weight", "norm_s.bias", "attn_s.q.weight", "attn_s.q.bias",
    "attn_s.kv.weight", "attn_s.kv.bias")}


def _fit_batchnorms(model: nn.Module, folded: dict, shipped: dict, images, info) -> None:
    """Each folded BatchNorm: eval output = input + folded bias, exactly; its running statistics
    (and the matching affine) are those of its input on ``images``, so that training mode, which
    normalises by the batch's statistics, computes about the same."""
    mods = dict(model.named_modules())
    stats, hooks = {}, []

    def record(name):
        def hook(mod, args):
            x = args[0].detach().double()
            s = stats.setdefault(name, [0, 0.0, 0.0])
            s[0] += x.numel() // x.shape[1]
            s[1] = s[1] + x.sum((0, 2, 3))
            s[2] = s[2] + (x * x).sum((0, 2, 3))
        return hook

    identity_batchnorms(model)  # every BatchNorm is folded (``weight_map`` checks)
    for bn, (_, bias) in folded.items():
        with torch.no_grad():
            mods[bn].bias.copy_(torch.tensor(shipped[bias]))
        hooks.append(mods[bn].register_forward_pre_hook(record(bn)))
    graph = FusedGraph(model)
    try:
        with torch.no_grad():
            for i in range(0, len(images), 32):
                graph(torch.from_numpy(images[i:i + 32]), torch.from_numpy(info[i:i + 32]))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for bn, (_, bias) in folded.items():
            n, s1, s2 = stats[bn]
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp_min(0.0)
            m = mods[bn]
            std = torch.sqrt(var + m.eps)
            m.running_mean.copy_(mean), m.running_var.copy_(var)
            m.weight.copy_(std)
            m.bias.copy_(mean + torch.tensor(shipped[bias], dtype=torch.float64))


def fit_crops(asset, size: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rendered crops ``recover`` fits the BatchNorms on: half ID, half OOD (images
    ``(n, 3, s, s)`` in 0..1, ``bbox_info (n, 3)``)."""
    from d2a_edge.export import verify
    split = [("id", samples - samples // 2), ("ood", samples // 2)]
    data = [verify.validation_set(asset, n, size, seed=seed + i, split=s)
            for i, (s, n) in enumerate(split) if n]
    return np.concatenate([d[0] for d in data]), np.concatenate([d[1] for d in data])


def _bundle_model(b, seed: int):
    """``(Config, freshly initialised D2AHMR)`` of bundle ``b``: the training config of its
    name where this checkout has one (``edge-s`` otherwise), with the bundle's model config."""
    from d2a_edge.training.config import config_from_dict, config_to_dict, load_config
    from d2a_edge.training.model import build_model
    try:
        cfg = load_config(b.name)
    except ValueError:  # not a built-in config
        cfg = load_config("edge-s")
    cfg = config_from_dict({**config_to_dict(cfg), "name": b.name,
                            "model": b.manifest["config"]})
    with torch.random.fork_rng():  # the training-only parts: seeded, the caller's RNG untouched
        torch.manual_seed(seed)
        return cfg, build_model(cfg.model, b.asset).eval()


def _parity(model: nn.Module, asset, onnx_path: Path, images, info) -> dict[str, float]:
    """Max |torch - ONNX Runtime| per output, and of the skinned vertices (``vertices_m``)."""
    from d2a_edge.export import onnx_tools, verify
    ref = verify.run_onnx(onnx_tools.ort_session(onnx_path), images, info, OUTPUT_NAMES)
    got = verify.run_torch(FusedGraph(model), images, info)
    parity = {n: float(np.abs(r - g).max()) for n, r, g in zip(OUTPUT_NAMES, ref, got)}
    verts = verify.mesh_from_outputs(asset, ref)[0], verify.mesh_from_outputs(asset, got)[0]
    parity["vertices_m"] = float(np.abs(verts[0] - verts[1]).max())
    if not parity["vertices_m"] <= MAX_VERTEX_ERROR_M:
        raise RecoveryError(f"the recovered weights do not reproduce {onnx_path}: vertices "
                            f"differ by up to {parity['vertices_m'] * 1000:.3f} mm")
    return parity


def training_extras(model: nn.Module, size: int, loss_state: dict | None = None,
                    untrained: Iterable[str] = ()) -> dict:
    """What a bundle's graph cannot give back exactly, for ``EXTRAS_FILE``: every BatchNorm's
    affine and statistics (the export folds them into convolutions), decoder layer 0 and its
    queries (folded into constants), the training-only parameters (not in the graph), and the
    loss's state (the RLE flow) when given. About 1.1 MB for edge-s. ``untrained``: model
    tensors left out because they were never trained (a model recovered from a bundle without
    extras: its training-only parts are a fresh initialisation, and must stay known as such)."""
    state = model.state_dict()
    names = {f"{n}.{k}" for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for k in ("weight", "bias", "running_mean", "running_var")}
    graph = graph_parameters(model, size)
    names |= UNFOLDED | {n for n, _ in model.named_parameters() if n not in graph}
    names -= set(untrained)
    out = {f"model.{n}": state[n].detach().float().contiguous().clone()
           for n in sorted(names) if n in state}
    out.update({f"loss.{k}": v.detach().contiguous().clone()
                for k, v in (loss_state or {}).items()})
    return out


def fp32_graph(b) -> Path | None:
    """Bundle ``b``'s fp32 ONNX graph (None if it lists none); a listed graph that is missing
    or differs from the manifest's sha256 is a ``RecoveryError``."""
    try:
        return b.artifact("fp32", "onnx")
    except BundleError as e:
        raise RecoveryError(str(e)) from e


def graph_sha256(b, onnx_path: Path) -> str:
    """The sha256 of ``fp32_graph(b)``: the manifest's, which ``artifact`` has checked the file
    against, or (an older manifest without one) the file's own."""
    return b.manifest["artifacts"]["fp32"].get("sha256") or file_sha256(onnx_path)


def read_extras(b) -> dict | None:
    """Bundle ``b``'s training extras (``training_extras``), or None when it has none (a
    bundle exported before them, or one whose extras file was deleted to save space). Raises
    ``RecoveryError`` when the file does not match the manifest or its fp32 graph."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    entry = b.manifest.get("training_extras")
    path = b.root / entry["file"] if entry else None
    if path is None or not path.is_file():
        return None
    onnx_path = fp32_graph(b)
    if file_sha256(path) != entry["sha256"] or (
            onnx_path is not None and graph_sha256(b, onnx_path) != entry["graph_sha256"]):
        raise RecoveryError(f"{path} does not match {b.root / 'manifest.json'} or its fp32 "
                            "graph (a file from another export?); delete it and its manifest "
                            "entry to recover without it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise RecoveryError(f"{path} is not readable ({e})") from e


def loss_state(path) -> dict | None:
    """The loss's state (the RLE flow) of a checkpoint, or of a bundle with training extras;
    None when there is none."""
    from d2a_edge.training.checkpoint import read_checkpoint, split_weights
    if is_bundle(path):
        try:
            extras = read_extras(load_bundle(path))
        except BundleError as e:
            raise RecoveryError(str(e)) from e
        return {k[len("loss."):]: v for k, v in extras.items() if k.startswith("loss.")} \
            if extras else None
    return split_weights(read_checkpoint(path)["weights"], "loss") or None


def _apply_extras(model: nn.Module, extras: dict, folded: dict) -> None:
    """Set the extras' tensors and undo each BatchNorm's fold from its convolution (the conv
    holds the folded weight ``W * scale``, ``scale = weight / sqrt(running_var + eps)``)."""
    state = {k[len("model."):]: v for k, v in extras.items() if k.startswith("model.")}
    unexpected = sorted(set(state) - set(model.state_dict()))
    if unexpected:
        raise RecoveryError(f"the training extras hold tensors this model lacks: {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for bn, (conv, _) in folded.items():
            m, c = mods[bn], mods[conv]
            scale = m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)
            c.weight.copy_(c.weight.double() / scale.view(-1, *[1] * (c.weight.dim() - 1)))


def recover(bundle_dir, samples: int = 128, seed: int = 55_001, progress=print):
    """``(model (D2AHMR, eval mode), Config, report)`` from the bundle in ``bundle_dir``."""

    missing = [m for m in ("onnx", "onnxslim", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise RecoveryError(f"recovering weights from a bundle re-runs the export: install "
                            f"{' '.join(missing)} (pip install 'd2a-edge[export]')")
    try:
        b = load_bundle(bundle_dir)
    except BundleError as e:
        raise RecoveryError(str(e)) from e
    onnx_path = fp32_graph(b)
    if onnx_path is None:
        raise RecoveryError(f"{b.root} has no fp32 ONNX graph to recover weights from")
    cfg, model = _bundle_model(b, seed)
    shape = b.manifest["inputs"]["image"]["shape"]
    batch = shape[0] if isinstance(shape[0], int) else None
    shipped, shipped_names = read_graph(onnx_path)
    progress(f"recover: mapping the export of {b.name} (a probe export, ~10 s)")
    probe, mapping, folded = weight_map(model, b.image_size, batch,
                                        int(b.manifest.get("opset", 17)))
    if {k: v.shape for k, v in probe.items()} != {k: v.shape for k, v in shipped.items()}:
        raise RecoveryError(f"{onnx_path} was exported by another version of the model code "
                            f"or config: its weights do not match this checkout's export of "
                            f"{b.name}")
    copied = copy_mapped(model, shipped, mapping)
    unfolded = _unfold_queries(model, shipped_names)
    bn_names = {f"{bn}.{p}" for bn in folded for p in ("weight", "bias")}
    lost = sorted(graph_parameters(model, b.image_size) - copied - unfolded - bn_names)
    if lost:
        raise RecoveryError(f"the graph's weights do not give back {lost[:5]} "
                            f"({len(lost)} parameters)")
    progress(f"recover: rendering {samples} crops for the BatchNorm statistics and the check")
    images, info = fit_crops(b.asset, b.image_size, samples, seed)
    extras = read_extras(b)
    if extras is None:
        _fit_batchnorms(model, folded, shipped, images, info)
    else:
        _apply_extras(model, extras, folded)
    parity = _parity(model.eval(), b.asset, onnx_path, images, info)
    restored = {k[len("model."):] for k in extras or {} if k.startswith("model.")}
    fresh = sorted(n for n, _ in model.named_parameters()
                   if n not in copied | bn_names | unfolded | restored)
    report = {"bundle": str(b.root), "model": b.name, "onnx": onnx_path.name,
              "onnx_sha256": graph_sha256(b, onnx_path), "parameters_copied": len(copied),
              "batchnorms_refitted": 0 if extras else len(folded),
              "training_extras": len(restored) if extras else None,
              "loss_in_extras": any(k.startswith("loss.") for k in extras or {}),
              "fresh_parameters": fresh, "samples": samples, "seed": seed,
              "max_abs_error": parity}
    return model, cfg, report


def save_recovered(model: nn.Module, cfg, report: dict, out, loss: dict | None = None) -> Path:
    """A weights-only checkpoint (``RUN/checkpoints/step_00000000``) for ``d2a-train --init``,
    ``d2a-eval`` and ``d2a-export``, with the loss's state when given (``loss_state``);
    written atomically."""
    from d2a_edge.training.config import config_to_dict
    weights = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    weights.update({f"loss.{k}": v.detach().contiguous() for k, v in (loss or {}).items()})
    meta = {"step": 0, "config": config_to_dict(cfg), "seed": report["seed"],
            "body": cfg.model.body, "body_name": model.body.asset_name,
            "recovered_from": report}
    return write_weights_only(weights, meta, out, "step_00000000")


def print_report(report: dict, file=None) -> None:
    err = report["max_abs_error"]
    how = (f"{report['training_extras']} tensors from the bundle's training extras"
           if report.get("training_extras") else
           f"{report['batchnorms_refitted']} BatchNorms refitted on {report['samples']} crops")
    print(f"recovered {report['model']} from {report['bundle']}/{report['onnx']}: "
          f"{report['parameters_copied']} parameters copied, {how}", file=file)
    print("max |torch - onnxruntime| on those crops: "
          + ", ".join(f"{k} {v:.2e}" for k, v in err.items()), file=file)
    fresh = report["fresh_parameters"]
    if report.get("training_extras"):
        print("from the training extras: the training-only parts" + (
            " and the loss's RLE flow" if report.get("loss_in_extras") else
            "; the loss's RLE flow starts fresh (the export had none)"), file=file)
        return
    roots = sorted({n.rsplit(".", 1)[0] for n in fresh})
    print(f"freshly initialised (training only, not in the graph: the loss's RLE flow, and "
          f"{len(fresh)} tensors of the model in "
          + (", ".join(roots[:8]) + (" ..." if len(roots) > 8 else "") if roots else "none")
          + ")", file=file)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m d2a_edge.training.recover",
                                description="Training weights from an exported model bundle "
                                            "(for d2a-train --init, d2a-eval, d2a-export).")
    p.add_argument("bundle", help="a bundle directory (manifest.json + model_fp32.onnx), e.g. "
                                  "d2a_edge/models/edge-s")
    p.add_argument("--out", required=True, help="run directory to write the checkpoint into")
    p.add_argument("--samples", type=int, default=128,
                   help="rendered crops for the BatchNorm statistics and the check (default 128)")
    p.add_argument("--seed", type=int, default=55_001)
    args = p.parse_args(argv)
    if args.samples < 2:
        p.error("--samples must be at least 2")
    try:
        model, cfg, report = recover(args.bundle, args.samples, args.seed,
                                     progress=lambda m: print(m, file=sys.stderr))
    except RecoveryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = save_recovered(model, cfg, report, args.out, loss_state(args.bundle))
    print_report(report)
    print(f"wrote {path}; start training from it with d2a-train CONFIG --init {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
