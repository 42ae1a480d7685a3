"""Which parameter each weight of an exported ONNX graph holds, found by a probe export.

A probe copy of the model, whose parameters hold distinct integer codes (every BatchNorm set to
exactly the identity), goes through the same export as the bundle. Each weight of the probe
graph then names, value by value, the parameter and element it holds, whatever reshapes,
transposes or gathers the exporter and the simplifier applied. A Conv whose BatchNorm was
folded into it is found the same way (an identity BatchNorm folds to nothing). This is step 1
of ``training.recover``; ``copy_mapped`` is step 2's copy.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from d2a_edge.training.checkpoint import CheckpointError
from d2a_edge.training.inference import FusedGraph

CODE_FIRST, CODE_LIMIT = 2 ** 22, 2 ** 24  # integers here are exact in float32, and far above
# the graph's own integer constants (shapes, indices)


class RecoveryError(CheckpointError):
    """The bundle cannot be turned back into training weights (other version, corrupt file)."""


def _folded_pairs(model: nn.Module, size: int) -> dict[str, str]:
    """``{batchnorm name: conv name}`` for every BatchNorm whose input is a convolution's output
    (found by running the model once and comparing tensors, not by naming conventions)."""
    produced, pairs, hooks = {}, {}, []
    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, args, out: produced.__setitem__(id(out), names[mod])))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: pairs.__setitem__(names[mod], produced.get(id(args[0])))))
    try:
        with torch.no_grad():
            FusedGraph(model)(torch.rand(1, 3, size, size), torch.zeros(1, 3))
    finally:
        for h in hooks:
            h.remove()
    lone = [bn for bn, conv in pairs.items() if conv is None]
    if lone:
        raise RecoveryError(f"BatchNorm layers not fed by a convolution: {lone[:5]}")
    return pairs


def identity_batchnorms(model: nn.Module) -> None:
    """Every BatchNorm computes exactly x (eval mode), so that folding it changes no weight."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            var = torch.tensor(1.0, dtype=torch.float32) - torch.tensor(m.eps, dtype=torch.float32)
            if torch.sqrt(var + torch.tensor(m.eps, dtype=torch.float32)) != 1.0:
                raise RecoveryError(f"cannot make BatchNorm(eps={m.eps}) an exact identity")
            with torch.no_grad():
                m.running_mean.zero_(), m.running_var.fill_(var.item())
                m.weight.fill_(1.0), m.bias.zero_()


def _coded_parameters(model: nn.Module, skip: set[str]) -> list[tuple[str, int, int]]:
    """Fill every parameter but ``skip`` with distinct integers; returns (name, first, numel)."""
    table, code = [], CODE_FIRST
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in skip or not p.dtype.is_floating_point:
                continue
            p.copy_(torch.arange(code, code + p.numel(), dtype=torch.float64).reshape(p.shape))
            table.append((name, code, p.numel()))
            code += p.numel()
    if code >= CODE_LIMIT:
        raise RecoveryError(f"{code} parameters are too many to code exactly in float32")
    return table


def _export_probe(model: nn.Module, size: int, batch: int | None, opset: int, tmp: Path) -> Path:
    from d2a_edge.export.pipeline import ExportRequest, export_fp32
    return export_fp32(FusedGraph(model), tmp, size, ExportRequest(out=tmp, batch=batch,
                                                                    opset=opset))


def read_graph(path) -> tuple[dict, dict]:
    """``(by slot, by name)``: the graph's float initializers, keyed by the node input that reads
    them, ``(node name, input index)``, and by their own names. Slots are what two exports of the
    same code share: the simplifier renames initializers, and merges equal ones."""
    import onnx
    from onnx import numpy_helper
    try:
        g = onnx.load(str(path)).graph
    except Exception as e:  # protobuf's DecodeError, OSError, ...
        raise RecoveryError(f"{path} is not a readable ONNX graph ({e})") from e
    by_name = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    by_name = {k: v for k, v in by_name.items() if v.dtype == np.float32 and v.size}
    by_slot = {(n.name, i): by_name[x] for n in g.node for i, x in enumerate(n.input)
               if x in by_name}
    return by_slot, by_name


def weight_map(model: nn.Module, size: int, batch: int | None, opset: int):
    """How the export lays out ``model``'s parameters: ``(probe slots, mapping, folded)``.

    ``mapping[slot] = (param, flat index array)``: the initializer read at ``slot`` holds those
    elements of the parameter. ``folded[bn] = (conv, bias slot)`` where the export folded
    BatchNorm ``bn`` into convolution ``conv``. Slots that read no parameter (constants,
    buffers, index tables) are absent from ``mapping``.
    """
    probe = copy.deepcopy(model).eval()
    size = int(size)
    pairs = _folded_pairs(probe, size)
    identity_batchnorms(probe)
    # BatchNorm weights stay 1 (the fold multiplies by them); their biases are coded, so that
    # each folded Conv's bias, which is then the BatchNorm's bias, names its BatchNorm
    table = _coded_parameters(probe, {f"{bn}.weight" for bn in pairs})
    firsts = np.array([t[1] for t in table], np.int64)
    end = table[-1][1] + table[-1][2]
    with tempfile.TemporaryDirectory() as tmp:
        slots, _ = read_graph(_export_probe(probe, size, batch, opset, Path(tmp)))
    mapping = {}
    for slot, w in slots.items():
        flat = w.reshape(-1).astype(np.float64)
        if not (np.all(flat >= CODE_FIRST) and np.all(flat < end)
                and np.all(flat == np.round(flat))):
            continue
        codes = flat.astype(np.int64)
        k = np.searchsorted(firsts, codes, side="right") - 1
        if np.any(k != k[0]):
            raise RecoveryError(f"the ONNX weight read by {slot[0]} mixes several parameters")
        pname, first, _ = table[k[0]]
        mapping[slot] = (pname, codes - first)
    by_param = {}
    for slot, (pname, _) in mapping.items():
        by_param.setdefault(pname, []).append(slot)
    folded = {}
    for bn, conv in pairs.items():
        bias = by_param.get(f"{bn}.bias", [])
        if len(bias) != 1 or f"{conv}.weight" not in by_param:
            raise RecoveryError(f"BatchNorm {bn} after {conv}: no folded Conv in the graph")
        folded[bn] = (conv, bias[0])
    return slots, mapping, folded


def copy_mapped(model: nn.Module, shipped: dict, mapping: dict) -> set[str]:
    """Copy the bundle's weights ``shipped`` (by slot) into ``model`` through ``mapping``
    (``weight_map``); returns the names of the parameters it set, each in full."""
    params = dict(model.named_parameters())
    done: dict[str, np.ndarray] = {}
    for slot, (pname, idx) in mapping.items():
        flat = done.setdefault(pname, np.full(params[pname].numel(), np.nan, np.float64))
        vals = shipped[slot].reshape(-1).astype(np.float64)
        if not np.isfinite(vals).all():
            raise RecoveryError(f"the graph's weights for {pname} hold NaN or inf: the model "
                                "diverged or the file is damaged; export again from a good "
                                "checkpoint")
        seen = ~np.isnan(flat[idx])
        if np.any(np.abs(flat[idx][seen] - vals[seen]) > 1e-6 * (1 + np.abs(vals[seen]))):
            raise RecoveryError(f"ONNX weights disagree about {pname} (corrupt bundle?)")
        flat[idx] = vals
    with torch.no_grad():
        for pname, flat in done.items():
            if np.isnan(flat).any():
                raise RecoveryError(f"the graph holds only part of parameter {pname}")
            params[pname].copy_(torch.from_numpy(flat).reshape(params[pname].shape))
    return set(done)
