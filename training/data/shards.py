"""Shard writer: ``DIR/manifest.json`` + ``DIR/shard_NNNNN/<key>.npy`` (no pickle, mmap-able).

A shard is written to ``shard_NNNNN.partial/`` and renamed when all its files are on disk; the
manifest (rewritten atomically after every shard) marks it ``complete``. Rerunning the same
command resumes: complete shards whose files check out are left untouched, the rest are
regenerated. Samples are seeded per index and rendered in spawned single-BLAS-thread workers,
so the bytes do not depend on the worker count.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

import numpy as np

from d2a_edge.body import BodyAsset, load_body
from d2a_edge.training.data.appearance import Backgrounds
from d2a_edge.training.data.engine import SCHEMA_KEYS, SPLITS, SampleGenerator, SceneConfig

MANIFEST = "manifest.json"
FORMAT, VERSION = "d2a-edge-synthetic", 1
ENGINE_VERSION = 4  # bump whenever the same seed renders different samples (guards resume)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """What ``d2a-data generate`` builds (everything that changes the bytes is in here)."""

    split: str
    num: int
    out: str
    size: int = 192
    seed: int = 0
    shard_size: int = 256
    workers: int = 1
    backgrounds: str | None = None
    body: str = "anny"
    all_ages: bool = False

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {sorted(SPLITS)}, got {self.split!r}")
        for name, low in (("num", 1), ("size", 16), ("shard_size", 1), ("workers", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, "
                                 f"got {getattr(self, name)}")

    def identity(self, asset: BodyAsset) -> dict:
        """The manifest's ``config``: the fields that decide the dataset's content."""
        return dict(engine_version=ENGINE_VERSION, split=self.split, num_samples=self.num,
                    image_size=self.size, seed=self.seed,
                    shard_size=self.shard_size, backgrounds=self.backgrounds,
                    body=asset.name, body_hash=body_hash(asset), all_ages=self.all_ages)


def body_hash(asset: BodyAsset) -> str:
    """Short SHA-256 over the arrays that shape the renders."""
    h = hashlib.sha256()
    for a in (asset.v_template, asset.faces, asset.shapedirs, asset.j_template,
              asset.skin_weights):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def load_asset(cfg: GenerateConfig) -> BodyAsset:
    """The body asset named by the config (``--all-ages`` needs an all-ages Anny build)."""
    if cfg.all_ages:
        if cfg.body != "anny":
            raise ValueError("--all-ages applies to the Anny body only; your --body is "
                             f"{cfg.body!r}, whose shape space is what it is")
        return load_body("anny", all_ages=True)
    return load_body(cfg.body)


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def prepare_out(out: str | os.PathLike) -> Path:
    """Create ``out`` and check it is writable, or raise an actionable RuntimeError."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RuntimeError(f"cannot write to output directory {out} ({e.strerror or e}); "
                           "choose a writable --out") from e
    return out


def read_manifest(root: str | os.PathLike) -> dict:
    """The parsed ``manifest.json`` of a dataset directory, checked for format and version."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a directory written by "
                                "`d2a-data generate`?")
    try:
        man = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt ({e})") from e
    if not isinstance(man, dict):
        raise ValueError(f"{path} is corrupt (a {type(man).__name__}, not a manifest)")
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise ValueError(f"{path}: format {man.get('format')!r} v{man.get('version')}, expected "
                         f"{FORMAT!r} v{VERSION}")
    return man


def write_manifest(root: Path, man: dict) -> None:
    """Atomic rewrite (temp file + rename)."""
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(man, indent=1, sort_keys=True))
    os.replace(tmp, root / MANIFEST)


def _new_manifest(cfg: GenerateConfig, identity: dict) -> dict:
    shards = [dict(name=shard_name(i), start=start, count=min(cfg.shard_size, cfg.num - start),
                   complete=False)
              for i, start in enumerate(range(0, cfg.num, cfg.shard_size))]
    return dict(format=FORMAT, version=VERSION, config=identity, schema={}, shards=shards)


def shard_ok(root: Path, entry: dict, schema: dict) -> bool:
    """True when a shard is marked complete and every key's file has the expected shape."""
    if not entry.get("complete") or not schema:
        return False
    for key, spec in schema.items():
        path = root / entry["name"] / f"{key}.npy"
        if not path.is_file():
            return False
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:
            return False
        if list(arr.shape) != [entry["count"], *spec["shape"]] or str(arr.dtype) != spec["dtype"]:
            return False
    return True


def write_shard(root: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as ``root/name/<key>.npy`` through a ``.partial`` directory."""
    tmp, final = root / (name + ".partial"), root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key in SCHEMA_KEYS:
        np.save(tmp / f"{key}.npy", np.ascontiguousarray(arrays[key]), allow_pickle=False)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


_WORKER: dict[str, object] = {}  # per worker process: the generator and output root


def _init_worker(cfg: GenerateConfig) -> None:
    """Pool initializer. It must not raise (a failed initializer breaks the pool, and its
    message is lost), so a failure is kept and re-raised by the first ``_work`` call."""
    try:
        scene = SceneConfig.for_split(cfg.split, cfg.size, cfg.backgrounds)
        _WORKER.update(gen=SampleGenerator(load_asset(cfg), scene), cfg=cfg, error=None)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        _WORKER.update(error=e)


def _work(entry: dict) -> tuple[dict, dict]:
    if _WORKER.get("error") is not None:
        raise _WORKER["error"]
    gen, cfg = _WORKER["gen"], _WORKER["cfg"]
    gen.timings.clear()
    arrays = gen.generate(cfg.seed, range(entry["start"], entry["start"] + entry["count"]))
    write_shard(Path(cfg.out), entry["name"], arrays)
    schema = {k: dict(shape=list(v.shape[1:]), dtype=str(v.dtype)) for k, v in arrays.items()}
    return entry, dict(schema=schema, timings=dict(gen.timings))


@contextlib.contextmanager
def _single_threaded_children():
    """Children inherit one BLAS thread each (the workers already use every core)."""
    keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def generate(cfg: GenerateConfig, on_shard: Callable[[dict], None] | None = None) -> dict:
    """Generate (or resume) the dataset; returns the final manifest.

    on_shard(entry) is called after each finished shard (the CLI advances its progress bar).
    """
    asset = load_asset(cfg)  # a bad --body or --backgrounds fails before --out is made
    Backgrounds(cfg.backgrounds)  # here, not in a worker
    root = prepare_out(cfg.out)
    identity = cfg.identity(asset)
    man = _new_manifest(cfg, identity)
    if (root / MANIFEST).exists():
        old = read_manifest(root)
        if old["config"] != identity:
            was = old["config"] if isinstance(old["config"], dict) else {}
            changed = ", ".join(f"{k} {was.get(k)!r} -> {identity.get(k)!r}"
                                for k in sorted(set(was) | set(identity))
                                if was.get(k) != identity.get(k))
            raise ValueError(f"{root} holds a dataset made with other settings ({changed}): use "
                             "another --out (or delete it) to start afresh")
        man = old
    todo = [e for e in man["shards"] if not shard_ok(root, e, man["schema"])]
    for e in todo:
        e["complete"] = False
    write_manifest(root, man)
    by_name = {e["name"]: e for e in man["shards"]}
    for entry, info in _run(cfg, todo):
        man["schema"] = info["schema"]
        by_name[entry["name"]]["complete"] = True
        write_manifest(root, man)
        if on_shard is not None:
            on_shard(dict(entry, timings=info["timings"]))
    return man


def _run(cfg: GenerateConfig, todo: list[dict]):
    """Yield (entry, info) per finished shard from a pool of spawned workers.

    Even ``--workers 1`` renders in a child: every worker runs single-threaded BLAS, so the
    bytes do not depend on the worker count or on the parent's thread settings. A worker that
    dies (killed, out of memory) is an error, not a hang: ``multiprocessing.Pool`` would wait
    for its shard forever, ``ProcessPoolExecutor`` reports it.
    """
    if not todo:
        return
    ctx = multiprocessing.get_context("spawn")
    with _single_threaded_children(), ProcessPoolExecutor(
            min(cfg.workers, len(todo)), ctx, _init_worker, (cfg,)) as pool:
        futures = [pool.submit(_work, e) for e in todo]
        try:
            for f in as_completed(futures):
                yield f.result()
        except BrokenProcessPool as e:
            raise RuntimeError("a rendering worker process died (killed, or out of memory?); "
                               "the finished shards are kept: rerun the same command to "
                               "resume") from e
        finally:
            for f in futures:
                f.cancel()


class ShardReader:
    """Numpy access to a finished dataset directory (torch-free; ``ShardDataset`` wraps it)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        man = read_manifest(self.root)
        done = [s for s in man["shards"] if s["complete"]]
        if len(done) != len(man["shards"]):
            raise ValueError(f"dataset {self.root} is incomplete ({len(done)} of "
                             f"{len(man['shards'])} shards): rerun the same `d2a-data generate` "
                             "command to finish it")
        self.manifest, self.shards = man, man["shards"]
        self.split = man["config"]["split"]
        self.starts = [s["start"] for s in self.shards]
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.manifest["config"]["num_samples"])

    def __getstate__(self):  # DataLoader workers re-open their own memory maps
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def arrays(self, k: int) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of shard ``k``: key -> (count, ...)."""
        if k not in self._open:
            d = self.root / self.shards[k]["name"]
            self._open[k] = {key: np.load(d / f"{key}.npy", mmap_mode="r", allow_pickle=False)
                             for key in SCHEMA_KEYS}
        return self._open[k]

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` as a dict of (memory-mapped) numpy arrays."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.starts, index) - 1
        arrays = self.arrays(k)
        return {key: arrays[key][index - self.starts[k]] for key in SCHEMA_KEYS}
