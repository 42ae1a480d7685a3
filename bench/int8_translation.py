"""How far the INT8 graph moves the predicted translation from the fp32 graph (ONNX Runtime CPU).

    .venv/bin/python bench/int8_translation.py DATA_DIR [--num 256] [--model BUNDLE]

Runs both graphs of the bundle (default: the bundled edge-s) on the first N crops of DATA_DIR,
one at a time, and prints percentiles of |t_int8 - t_fp32| in mm.
"""
import argparse

import numpy as np
import onnxruntime as ort

from d2a_edge.bundle import load_bundle
from d2a_edge.training.data.dataset import ShardDataset


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    bundle, ds = load_bundle(args.model), ShardDataset(args.data)
    n = min(args.num, len(ds))
    imgs = np.stack([ds[i]["image"].numpy() for i in range(n)])
    info = np.stack([ds[i]["bbox_info"].numpy() for i in range(n)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    t = {}
    for prec in ("fp32", "int8"):
        s = ort.InferenceSession(str(bundle.artifact(prec, "onnx")), so,
                                 providers=["CPUExecutionProvider"])
        ins = [i.name for i in s.get_inputs()]
        names = [o.name for o in s.get_outputs()]
        k = names.index("translation")
        t[prec] = np.concatenate([s.run(None, {ins[0]: imgs[i:i + 1], ins[1]: info[i:i + 1]})[k]
                                  for i in range(n)])
    d = np.linalg.norm(t["int8"] - t["fp32"], axis=-1) * 1000
    q = np.percentile(d, [50, 90, 99, 100])
    print(f"{n} crops of {args.data}: |t_int8 - t_fp32| median {q[0]:.1f} mm, p90 {q[1]:.1f}, "
          f"p99 {q[2]:.1f}, max {q[3]:.1f} (fp32 depths {t['fp32'][:, 2].min():.1f}.."
          f"{t['fp32'][:, 2].max():.1f} m)")


if __name__ == "__main__":
    main()
