"""Checkpoints without pickle: safetensors + JSON, written atomically.

Layout of one checkpoint (a directory, renamed into place in one step)::

    RUN/checkpoints/step_00000500/
        model.safetensors        model.* (D2A-HMR), loss.* (RLE flow), ema.* (if EMA is on)
        train_state.safetensors  optimizer tensors, RNG states; its metadata holds the JSON
                                 of optimizer param groups, scheduler, grad scaler, RNG
        meta.json                step, config, seed, body asset, sha256 of both files
    RUN/checkpoints/latest.json  {"step": 500, "path": "step_00000500"} (temp + os.replace)

Loading checks the sha256 sums, so a truncated or edited checkpoint fails with a clear
``CheckpointError`` instead of a half-restored run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from d2a_edge.body import file_sha256

FORMAT = "d2a-ckpt-1"
TRAIN_STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "step")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or from another format."""


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON of the torch / CUDA / numpy / python RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    js = {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
          "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    return tensors, js


def set_rng_state(tensors: dict[str, torch.Tensor], js: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    n = js["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = js["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{name}"] = v.contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], js: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in js["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": js["param_groups"]}


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model: torch.nn.Module,
                    loss: torch.nn.Module, optimizer, scheduler, scaler, ema=None,
                    meta: dict, keep: int = 3) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically; returns its path."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    for stale in root.glob(".tmp-step_*"):  # left by a run killed while saving (~57 MB each)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    weights = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    weights.update({f"loss.{k}": v.detach().contiguous() for k, v in loss.state_dict().items()})
    if ema is not None:
        weights.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
    save_file(weights, str(tmp / "model.safetensors"))
    opt_t, opt_js = _flatten_optimizer(optimizer.state_dict())
    rng_t, rng_js = rng_state()
    state_js = {"optimizer": opt_js, "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_js, "step": step}
    save_file({**opt_t, **rng_t}, str(tmp / "train_state.safetensors"),
              metadata={"json": json.dumps(state_js)})
    files = {f: file_sha256(tmp / f) for f in ("model.safetensors", "train_state.safetensors")}
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "step": step, "sha256": files,
                                               **meta}, indent=1))
    final = root / name
    if _intact(final, with_train_state=True):
        # The same step again (a --resume of a finished run, a stop signal right after a
        # scheduled save): it holds this very state. Deleting it first would leave latest.json
        # pointing at nothing if the process were killed in between.
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    _write_json_atomic(root / "latest.json", {"step": step, "path": name})
    # Keep the newest ``keep`` up to this one. Only earlier steps are removed: never the checkpoint
    # just written, even where a later-numbered one from another run shares the directory.
    earlier = sorted(p for p in root.glob("step_*") if p.name < name)
    for old in earlier[:max(len(earlier) - (keep - 1), 0)] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_weights_only(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A weights-only copy of checkpoint ``src`` in run directory ``dst`` (the EMA weights, when
    present, become ``model.*``; no optimizer state, so it cannot ``--resume``, only ``--init``,
    evaluate or export). About a third of the full checkpoint's size; returns its directory."""
    c = read_checkpoint(src)
    w = c["weights"]
    model = split_weights(w, "ema") or split_weights(w, "model")
    weights = {f"model.{k}": v for k, v in model.items()}
    weights.update({f"loss.{k}": v for k, v in split_weights(w, "loss").items()})
    return write_weights_only(weights, {**c["meta"], "source": str(c["dir"])}, dst,
                              c["dir"].name)


def write_weights_only(weights: dict[str, torch.Tensor], meta: dict, dst: str | os.PathLike,
                       name: str) -> Path:
    """Write a weights-only checkpoint ``dst/checkpoints/NAME`` atomically and point
    ``latest.json`` at it. ``meta`` must hold ``step`` and ``config``; the sha256 and the
    ``weights_only`` flag are added."""
    root = Path(dst) / "checkpoints"
    final = root / name
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"))
    meta = {**meta, "format": FORMAT, "weights_only": True,
            "sha256": {"model.safetensors": file_sha256(tmp / "model.safetensors")}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_json_atomic(root / "latest.json", {"step": meta["step"], "path": final.name})
    return final


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from itself, a run directory (-> latest, or the newest
    ``step_*`` when ``latest.json`` is gone) or its ``checkpoints/``."""
    p = Path(path)
    for latest in (p / "checkpoints" / "latest.json", p / "latest.json"):
        if latest.is_file():
            try:
                return latest.parent / str(json.loads(latest.read_text())["path"])
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{latest} is corrupt ({e}); pass a step_* directory "
                                      "(d2a-train --resume falls back to the newest intact one)"
                                      ) from e
    if p.is_file() and p.name in ("model.safetensors", "meta.json"):
        p = p.parent
    if (p / "meta.json").is_file():
        return p
    saved = sorted(q for q in (p / "checkpoints").glob("step_*") if (q / "meta.json").is_file())
    if saved:  # a run whose latest.json is gone: its newest checkpoint
        return saved[-1]
    raise CheckpointError(f"no checkpoint at {path}: expected a run directory with "
                          f"checkpoints/latest.json or a step_* directory with meta.json")


def read_checkpoint(path: str | os.PathLike, *, with_train_state: bool = False) -> dict:
    """Verified contents: ``meta``, ``weights`` (name -> tensor) and, if asked, ``state`` tensors
    and ``state_json``. Raises ``CheckpointError`` on any mismatch."""
    d, meta = verify_checkpoint(path, with_train_state)
    try:
        out = {"dir": d, "meta": meta, "weights": load_file(str(d / "model.safetensors"))}
        if with_train_state:
            from safetensors import safe_open
            with safe_open(str(d / "train_state.safetensors"), "pt") as f:
                out["state_json"] = json.loads(f.metadata()["json"])
            lacking = [k for k in TRAIN_STATE_KEYS if k not in out["state_json"]]
            if lacking:
                raise KeyError(f"the train state lacks {lacking}")
            out["state"] = load_file(str(d / "train_state.safetensors"))
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {d}: cannot be read ({e})") from e
    return out


def verify_checkpoint(path: str | os.PathLike, with_train_state: bool = False
                      ) -> tuple[Path, dict]:
    """(directory, meta) of the checkpoint at ``path`` after checking that meta.json is whole
    and every file matches its sha256; ``CheckpointError`` naming what is wrong."""
    d = resolve_checkpoint(path)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {d}: meta.json unreadable ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"checkpoint {d}: format {got!r}, expected {FORMAT!r}")
    names = ["model.safetensors"] + (["train_state.safetensors"] if with_train_state else [])
    if with_train_state and meta.get("weights_only"):
        raise CheckpointError(f"checkpoint {d}: train_state.safetensors is missing (a "
                              "weights-only checkpoint: start a run from it with --init)")
    hashes = meta.get("sha256")
    if not isinstance(hashes, dict) or not all(isinstance(hashes.get(f), str) for f in names):
        raise CheckpointError(f"checkpoint {d}: meta.json lacks the sha256 of {names}")
    for f in names:
        if not (d / f).is_file():
            raise CheckpointError(f"checkpoint {d}: {f} is missing")
        if file_sha256(d / f) != hashes[f]:
            raise CheckpointError(f"checkpoint {d}: {f} is corrupt (sha256 mismatch); "
                                  f"use an earlier step_* directory")
    return d, meta


def _intact(d: Path, with_train_state: bool) -> bool:
    """Whether ``d`` is a complete checkpoint whose files match its meta.json."""
    try:
        verify_checkpoint(d, with_train_state)
        return True
    except CheckpointError:
        return False


def latest_intact(run_dir: str | os.PathLike, with_train_state: bool = True
                  ) -> tuple[Path | None, list[str]]:
    """The checkpoint ``--resume`` continues from: the one ``latest.json`` names if it is
    intact, else the newest intact ``step_*`` (a latest.json lost or garbled by a kill or a
    disk fault, a damaged checkpoint). Returns (directory or None, why each newer one was
    passed over)."""
    root = Path(run_dir) / "checkpoints"
    candidates, skipped = [], []
    try:
        candidates.append(resolve_checkpoint(run_dir))
    except CheckpointError as e:
        if (root / "latest.json").exists():
            skipped.append(str(e))
    candidates += sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    for d in dict.fromkeys(candidates):
        try:
            verify_checkpoint(d, with_train_state)
            return d, skipped
        except CheckpointError as e:
            skipped.append(str(e))
    return None, skipped


def config_of(c: dict) -> dict:
    """The training config a ``read_checkpoint`` result was written with (CheckpointError if its
    meta.json has none)."""
    cfg = c["meta"].get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {c['dir']}: meta.json holds no training config")
    return cfg


def split_weights(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The ``prefix.*`` entries with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def restore_train_state(ckpt: dict, *, optimizer, scheduler, scaler) -> int:
    """Load optimizer / scheduler / scaler / RNG state from ``read_checkpoint(...,
    with_train_state=True)``; returns the step."""
    js, tensors = ckpt["state_json"], ckpt["state"]
    optimizer.load_state_dict(_unflatten_optimizer(tensors, js["optimizer"]))
    scheduler.load_state_dict(js["scheduler"])
    scaler.load_state_dict(js["scaler"])
    set_rng_state(tensors, js["rng"])
    return int(js["step"])


def load_model_config(path: str | os.PathLike, device: str | torch.device = "cpu",
                      use_ema: bool = True, asset=None):
    """``(D2AHMR in eval mode, Config, meta)`` from a checkpoint; EMA weights when present.

    ``asset`` defaults to the checkpoint config's ``model.body`` (``load_body``). An exported
    bundle (``d2a_edge/models/edge-s``) works too: its ONNX graph is turned back into weights
    (``training.recover``, about 20 s; the bundle's own body asset).
    """
    from d2a_edge.training.config import config_from_dict, config_to_dict
    from d2a_edge.training.model import build_model
    from d2a_edge.training import recover
    if recover.is_bundle(path):
        model, cfg, report = recover.recover(path, progress=lambda m: print(m, file=sys.stderr))
        meta = {"step": 0, "config": config_to_dict(cfg), "recovered_from": report}
        return model.to(device).eval(), cfg, meta
    c = read_checkpoint(path)
    cfg = config_from_dict(config_of(c))
    model = build_model(cfg.model, asset)
    weights = split_weights(c["weights"], "model")
    ema = split_weights(c["weights"], "ema")
    missing, unexpected = model.load_state_dict(ema if (use_ema and ema) else weights,
                                                strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {c['dir']} does not match its config {cfg.name!r}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), cfg, c["meta"]


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               use_ema: bool = True, asset=None):
    """The ``D2AHMR`` model of a checkpoint, in eval mode (see ``load_model_config``)."""
    return load_model_config(path, device, use_ema, asset)[0]
