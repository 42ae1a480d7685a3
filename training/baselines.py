"""The mean-pose baseline: every person predicted in the rest pose with the mean shape.

``python -m d2a_edge.training.baselines DIR [DIR ...]`` prints MPJPE / PA-MPJPE (mm, H36M-17
keypoints, pelvis-aligned, the same protocol as ``d2a-eval``) per dataset. A model must beat it
by a wide margin to be worth shipping (MODEL_CARD.md compares the two).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from d2a_edge.body import BodyModel, load_body
from d2a_edge.training import metrics as M
from d2a_edge.training.data.shards import ShardReader


def mean_pose_errors(reader: ShardReader, asset) -> dict[str, float]:
    """Errors of the rest pose / mean shape against the keypoints of every sample."""
    verts, joints = BodyModel(asset).rest(1)
    kp = asset.keypoints(joints, verts, 17)[0]
    kp = kp - kp[:1]
    gt = np.stack([reader.sample(i)["kp3d"] for i in range(len(reader))]).astype(np.float64)
    gt = gt - gt[:, :1]
    pred = np.broadcast_to(kp, gt.shape)
    return {"mpjpe_mm": float(M.mpjpe(pred, gt).mean()),
            "pa_mpjpe_mm": float(M.pa_mpjpe(pred, gt).mean()), "num_samples": len(gt)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m d2a_edge.training.baselines",
                                description=__doc__)
    p.add_argument("data", nargs="+", help="shard directories from `d2a-data generate`")
    p.add_argument("--body", default="anny")
    args = p.parse_args(argv)
    asset = load_body(args.body)
    out = {d: mean_pose_errors(ShardReader(d), asset) for d in args.data}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
