"""torch Datasets over the sample schema: memory-mapped shards and on-the-fly rendering.

Both return a dict of tensors: ``image`` (3, s, s) float32 in 0..1, ``mask`` (s, s) float32
0/1, every other schema key as float32 with the schema's shape, plus ``bbox_info`` (3,) (the
CLIFF camera input, ``d2a_edge.camera.bbox_info``) and ``index`` (int64).

With ``compact=True`` (the training loader's form) ``image`` and ``mask`` stay uint8 0..255 and
0/1: 294 instead of 741 KB per 192-px sample through the DataLoader's shared memory and pinned
copy. ``expand`` turns a compact batch into the float form above, on whatever device it is.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from d2a_edge.camera import bbox_info
from d2a_edge.training.data.engine import SCHEMA_KEYS, SampleGenerator, SceneConfig
from d2a_edge.training.data.realdata import SpinNpz
from d2a_edge.training.data.shards import ShardReader


def to_tensors(sample: dict[str, np.ndarray], index: int,
               compact: bool = False) -> dict[str, torch.Tensor]:
    """One numpy schema sample -> the Dataset's tensor dict (see the module docstring)."""
    out = {k: torch.from_numpy(np.array(sample[k], np.float32)) for k in SCHEMA_KEYS
           if k not in ("image", "mask")}
    image = torch.from_numpy(np.array(sample["image"], np.uint8))  # (s, s, 3)
    out["image"] = image.permute(2, 0, 1).contiguous()  # (3, s, s)
    out["mask"] = torch.from_numpy(np.array(sample["mask"], np.uint8))
    out["bbox_info"] = torch.from_numpy(bbox_info(sample["crop_box"], sample["K"]))
    out["index"] = torch.tensor(index, dtype=torch.int64)
    return out if compact else expand(out)


def expand(batch: dict) -> dict:
    """A batch (or sample) in the float form, whether it came compact or not (``to_tensors``):
    the same values as ``compact=False`` gives, computed where the tensors are."""
    out = dict(batch)
    if "image" in out and out["image"].dtype == torch.uint8:
        out["image"] = out["image"].float() / 255
    if "mask" in out and out["mask"].dtype == torch.uint8:  # (real-data batches have none)
        out["mask"] = out["mask"].float()
    return out


class ShardDataset(Dataset):
    """A directory written by ``d2a-data generate``; arrays are opened with ``mmap_mode="r"``."""

    def __init__(self, root: str | Path, compact: bool = False):
        self.reader = ShardReader(root)
        self.compact = compact
        self.root, self.split, self.manifest = self.reader.root, self.reader.split, self.reader.manifest

    def __len__(self) -> int:
        return len(self.reader)

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """The raw numpy sample ``index`` (schema dtypes, memory-mapped views)."""
        return self.reader.sample(index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return to_tensors(self.reader.sample(index), index, self.compact)


class OnTheFlyDataset(Dataset):
    """``size`` samples rendered on demand (sample i is identical to shard sample i of the
    same split and seed, up to float rounding in batched skinning).

    Each DataLoader worker creates its own generator and EGL context on first use.
    """

    def __init__(self, split: str, size: int, seed: int = 0, image_size: int = 192,
                 body: str = "anny", backgrounds: str | None = None, compact: bool = False):
        if size < 1:
            raise ValueError(f"size (number of samples) must be >= 1, got {size}")
        self.scene = SceneConfig.for_split(split, image_size, backgrounds)
        self.split, self.size, self.seed, self.body = split, size, seed, body
        self.compact = compact
        self._gen: SampleGenerator | None = None
        self._pid = -1  # the process that owns _gen (a forked DataLoader worker builds its own)

    def __len__(self) -> int:
        return self.size

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_gen"] = None
        return state

    def generate(self, indices: list[int]) -> dict[str, np.ndarray]:
        """The numpy samples ``indices``, stacked (one batched render pass)."""
        for index in indices:
            if not 0 <= index < self.size:
                raise IndexError(f"index {index} out of range for {self.size} samples")
        if self._gen is None or self._pid != os.getpid():
            from d2a_edge.body import load_body
            self._gen, self._pid = SampleGenerator(load_body(self.body), self.scene), os.getpid()
        return self._gen.generate(self.seed, list(indices))

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """The numpy sample ``index``."""
        return {k: v[0] for k, v in self.generate([index]).items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return to_tensors(self.sample(index), index, self.compact)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A DataLoader batch in one ``generate`` call (about 3x faster than one by one)."""
        batch = self.generate(indices)
        return [to_tensors({k: v[n] for k, v in batch.items()}, i, self.compact)
                for n, i in enumerate(indices)]


class ConcatOnTheFly(torch.utils.data.ConcatDataset):
    """``ConcatDataset`` of ``OnTheFlyDataset`` parts that keeps their batched ``__getitems__``
    (each part renders its share of a batch in one call; the batch keeps the sampler's order)."""

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        import bisect
        groups: dict[int, list[tuple[int, int]]] = {}
        for pos, i in enumerate(indices):
            part = bisect.bisect_right(self.cumulative_sizes, i)
            local = i - (self.cumulative_sizes[part - 1] if part else 0)
            groups.setdefault(part, []).append((pos, local))
        out: list = [None] * len(indices)
        for part, items in groups.items():
            samples = self.datasets[part].__getitems__([local for _, local in items])
            for (pos, _), sample in zip(items, samples):
                out[pos] = sample
        for pos, i in enumerate(indices):  # ``index`` is the position in the concatenation
            out[pos]["index"] = torch.tensor(i, dtype=torch.int64)
        return out


class SpinNpzDataset(Dataset):
    """Real data in the SPIN/HMR2 npz format (see ``realdata``): the keys of ``SpinNpz.sample``
    as float32 tensors, ``image`` as (3, s, s) in 0..1."""

    def __init__(self, npz_path: str | Path, img_dir: str | Path, image_size: int = 192):
        self.reader = SpinNpz(npz_path, img_dir, image_size)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.reader.sample(index)
        out = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in s.items() if k != "image"}
        out["image"] = torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 255
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out
