"""The paper's three ablations at an equal budget: full edge-s vs -depth, -RLE, -silhouette/mask.

    python -m d2a_edge.training.ablation --data TRAIN_SHARDS [MORE_SHARDS] --eval-data ID_SHARDS \\
        [--eval-data OOD_SHARDS] --steps 20000 --out runs/ablation [--doc docs/ablation.md]

Each config is trained by ``d2a-train`` (a subprocess; same seed, steps and batch size; rerunning
the command resumes unfinished runs) into ``OUT/<config>/`` and evaluated by ``d2a-eval`` into
``OUT/<config>/eval/``. The results go to ``OUT/ablation.json``, merged with those already there
after each config (a rerun of some configs keeps the others' rows), and the Markdown table (one
row per config and split) to ``--doc`` (default ``OUT/ablation.md``). A config already in the
record is not trained again; after Ctrl-C, rerunning the same command goes on, and a config's
train time adds up over the calls that trained it (``OUT/<config>/ablation_train_seconds.txt``).
Rows made (or configs begun) with other --steps, --seed, --batch-size, --data or --eval-data are
not merged: the command stops before training (exit 2); use another --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from d2a_edge._cli import at_least

ABLATIONS = {  # config -> what it removes
    "edge-s": "nothing (full model)",
    "edge-s-depth": "depth branch (pseudo-depth, depth tokens, cross-attention)",
    "edge-s-rle": "RLE (plain L1 on joints)",
    "edge-s-sil-mask": "silhouette decoder + masked token modeling",
}


FLAGS = {"steps": "--steps", "seed": "--seed", "batch_size": "--batch-size", "data": "--data",
         "eval_data": "--eval-data"}  # the settings that every row of one table shares


def settings(args) -> dict:
    """This run's budget and data (folders resolved), stored with each row as ``settings``."""
    return {"steps": args.steps, "seed": args.seed, "batch_size": args.batch_size,
            "data": [str(Path(d).resolve()) for d in args.data],
            "eval_data": [str(Path(d).resolve()) for d in args.eval_data]}


def _flags(s: dict, keys: list[str]) -> str:
    """``--steps 2 --seed 0``: the command-line form of ``keys`` of settings ``s``."""
    out = []
    for k in keys:
        v = s.get(k)
        if v is None:
            out.append(f"{FLAGS[k]} (the config's)")
        elif k == "eval_data":
            out += [f"--eval-data {d}" for d in v]
        else:
            out.append(f"{FLAGS[k]} {' '.join(v) if isinstance(v, list) else v}")
    return " ".join(out)


STARTED = "ablation_settings.json"  # in OUT/<config>/: the settings its training started with


def started(out: Path, done: dict[str, dict]) -> dict[str, dict]:
    """The configs whose training began in ``out`` but has no row in ``done`` (interrupted),
    as rows holding only the ``settings`` they began with."""
    return {c: {"settings": json.loads(f.read_text())} for c in ABLATIONS
            if c not in done and (f := out / c / STARTED).is_file()}


def mismatch(earlier: dict[str, dict], now: dict, record: Path) -> str | None:
    """The error when rows of ``record`` (or configs begun there) were made with other settings
    than ``now``; else None."""
    stale = [c for c, r in earlier.items() if r.get("settings") != now]
    if not stale:
        return None
    old = earlier[stale[0]].get("settings")
    if old is None:
        was = "written by an older d2a-ablation, which did not record their settings"
    else:
        keys = [k for k in FLAGS if old.get(k) != now[k]]
        was = f"trained with {_flags(old, keys)}, not this run's {_flags(now, keys)}"
    return (f"{record.parent} holds {', '.join(stale)} {was}; an equal-budget table needs the "
            "same settings for every config: use another --out, or the earlier settings")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(cmd: list[str]) -> None:
    """``subprocess.run(cmd, check=True)``, except that on Ctrl-C it waits for the child (which
    got the SIGINT too, and d2a-train writes a checkpoint first); ``run`` killed it after 0.25 s."""
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # a second Ctrl-C stops both at once
        raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def train(config: str, args) -> float:
    """Train (or resume) one config; returns its train seconds over all calls, interrupted ones
    included, summed in ``OUT/<config>/ablation_train_seconds.txt``."""
    out = Path(args.out) / config
    cmd = [_bin("d2a-train"), config, "--data", *args.data, "--out", str(out),
           "--steps", str(args.steps), "--seed", str(args.seed), "--resume"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.device:
        cmd += ["--device", args.device]
    spent = out / "ablation_train_seconds.txt"
    total = float(spent.read_text()) if spent.is_file() else 0.0
    out.mkdir(parents=True, exist_ok=True)
    (out / STARTED).write_text(json.dumps(settings(args)))  # checked if it is interrupted
    t0 = time.perf_counter()
    try:
        _run(cmd)
    finally:
        total += time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        spent.write_text(f"{total:.3f}\n")
    return total


def train_and_eval(config: str, args) -> dict:
    """Train (or resume) one config, evaluate it; returns eval metrics + train seconds."""
    train_s = train(config, args)
    out = Path(args.out) / config
    eval_dir = out / "eval"
    ecmd = [_bin("d2a-eval"), str(out), "--out", str(eval_dir)]
    for d in args.eval_data:
        ecmd += ["--data", d]
    if args.device:
        ecmd += ["--device", args.device]
    _run(ecmd)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    return {"config": config, "train_seconds": train_s, **metrics}


def save(rows: dict[str, dict], args, record: Path, doc: Path) -> None:
    """Write the record (JSON) and the table (Markdown), each whole or not at all."""
    results = [rows[c] for c in ABLATIONS if c in rows]
    for path, text in ((record, json.dumps(results, indent=1)), (doc, markdown(results, args))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def markdown(results: list[dict], args) -> str:
    lines = ["# Ablation (equal budget)", "",
             f"Same seed ({args.seed}), {args.steps} steps each, training data "
             f"{', '.join(f'`{d}`' for d in args.data)}; "
             f"written by `python -m d2a_edge.training.ablation`.", "",
             "| config | removed | split | MPJPE (mm) | PA-MPJPE (mm) | PVE (mm) | "
             "transl. err (cm) | PCK3D@150 | train time (min) |", "|" + "---|" * 9]
    for r in results:
        for split, m in r["splits"].items():
            lines.append(f"| {r['config']} | {ABLATIONS[r['config']]} | {split} | "
                         f"{m['mpjpe']:.1f} | {m['pa_mpjpe']:.1f} | {m['pve']:.1f} | "
                         f"{m['trans_err_cm']:.1f} | {m['pck3d_150']:.3f} | "
                         f"{r['train_seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="d2a-ablation", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", nargs="+", required=True,
                   help="training shards (d2a-data generate; several are concatenated)")
    p.add_argument("--eval-data", action="append", required=True, help="evaluation shards")
    p.add_argument("--out", required=True, help="directory for the four runs")
    p.add_argument("--steps", type=at_least(1), required=True, help="training steps per config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=at_least(1), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--configs", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    p.add_argument("--doc", default=None, help="Markdown table to write (default OUT/ablation.md)")
    args = p.parse_args(argv)
    from d2a_edge.training.data.shards import read_manifest
    for d in [*args.data, *args.eval_data]:  # all of them before any training
        try:
            read_manifest(d)
        except (OSError, ValueError) as e:
            sys.exit(f"d2a-ablation: error: {e}")
    record = Path(args.out) / "ablation.json"
    earlier = {r["config"]: r for r in json.loads(record.read_text())} if record.is_file() else {}
    now = settings(args)
    if error := mismatch({**earlier, **started(Path(args.out), earlier)}, now, record):
        print(f"d2a-ablation: error: {error}", file=sys.stderr)
        sys.exit(2)
    doc = Path(args.doc) if args.doc else Path(args.out) / "ablation.md"
    todo = [c for c in args.configs if c not in earlier]
    if len(todo) < len(args.configs):
        print(f"d2a-ablation: {', '.join(c for c in args.configs if c not in todo)}: done "
              f"already ({record}), kept", file=sys.stderr)
    try:
        for config in tqdm(todo, desc="ablation", unit="config"):
            earlier[config] = {**train_and_eval(config, args), "settings": now}
            save(earlier, args, record, doc)  # a later Ctrl-C or failure keeps this one
    except KeyboardInterrupt:
        print("d2a-ablation: interrupted; rerun the same command to go on", file=sys.stderr)
        sys.exit(130)
    except subprocess.CalledProcessError as e:
        what = " ".join(e.cmd[:2])
        if e.returncode in (130, 143):  # d2a-train stopped by SIGINT/SIGTERM, with a checkpoint
            print(f"d2a-ablation: {what} was interrupted; rerun the same command to go on",
                  file=sys.stderr)
            sys.exit(e.returncode)
        sys.exit(f"d2a-ablation: error: {what} failed with exit code {e.returncode}")
    save(earlier, args, record, doc)
    print(doc.read_text())


if __name__ == "__main__":
    main()
