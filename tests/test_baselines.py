"""The mean-pose baseline: zero error on rest-pose people, positive otherwise."""
import numpy as np
from conftest import requires_torch

pytestmark = requires_torch


def test_mean_pose_baseline(tmp_path, anny_asset):
    from d2a_edge.body import BodyModel
    from d2a_edge.training.baselines import mean_pose_errors

    class Reader:  # the two ShardReader methods mean_pose_errors uses
        def __init__(self, kp3d):
            self.kp = kp3d

        def __len__(self):
            return len(self.kp)

        def sample(self, i):
            return {"kp3d": self.kp[i]}

    v, j = BodyModel(anny_asset).rest(2)
    rest = anny_asset.keypoints(j, v, 17) + np.array([0.1, 0.2, 3.0])
    assert mean_pose_errors(Reader(rest), anny_asset)["pa_mpjpe_mm"] < 1e-6
    bent = rest.copy()
    bent[:, 13] += [0.0, 0.3, 0.0]  # move a wrist by 30 cm
    e = mean_pose_errors(Reader(bent), anny_asset)
    assert abs(e["mpjpe_mm"] - 300 / 17) < 1e-6 and e["pa_mpjpe_mm"] > 1.0
