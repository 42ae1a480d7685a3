"""How far a lower-precision graph moves the outputs from the fp32 graph (ONNX Runtime CPU).

    .venv/bin/python bench/precision_drift.py DATA_DIR --precision int8|fp16 [--num 256]
        [--model BUNDLE]

Runs the bundle's fp32 graph and the ``--precision`` graph (default bundle: the bundled edge-s)
on the first N crops of DATA_DIR, one at a time, and prints percentiles of the translation
difference and of the root-relative vertex difference (meshes skinned at the root), in mm.
"""
import argparse

import numpy as np
import onnxruntime as ort

from d2a_edge.body import BodyModel
from d2a_edge.bundle import load_bundle
from d2a_edge.training.data.dataset import ShardDataset


def run_graph(path, imgs: np.ndarray, info: np.ndarray) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins = [i.name for i in s.get_inputs()]
    outs = [s.run(None, {ins[0]: imgs[i:i + 1], ins[1]: info[i:i + 1]}) for i in range(len(imgs))]
    return {o.name: np.concatenate([r[k] for r in outs]) for k, o in enumerate(s.get_outputs())}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--precision", required=True, choices=("int8", "fp16"))
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    bundle, ds = load_bundle(args.model), ShardDataset(args.data)
    path = bundle.artifact(args.precision, "onnx")
    if path is None:
        raise SystemExit(f"no {args.precision} ONNX graph in {bundle.root}")
    n = min(args.num, len(ds))
    imgs = np.stack([ds[i]["image"].numpy() for i in range(n)])
    info = np.stack([ds[i]["bbox_info"].numpy() for i in range(n)])
    ref, low = run_graph(bundle.artifact("fp32", "onnx"), imgs, info), run_graph(path, imgs, info)
    body, root = BodyModel(bundle.asset), np.zeros((n, 3), np.float32)
    v_ref, v_low = (body(o["pose"].astype(np.float32), o["shape"].astype(np.float32), root)[0]
                    for o in (ref, low))
    rows = {"translation": np.linalg.norm(low["translation"] - ref["translation"], axis=-1),
            "root-relative vertex": np.linalg.norm(v_low - v_ref, axis=-1).max(1)}
    print(f"{args.precision} vs fp32 on {n} crops of {args.data} (fp32 depths "
          f"{ref['translation'][:, 2].min():.1f}..{ref['translation'][:, 2].max():.1f} m)")
    print("| difference (mm) | median | p90 | p99 | max |\n|---|---|---|---|---|")
    for name, d in rows.items():
        q = np.percentile(d * 1000, [50, 90, 99, 100])
        print(f"| {name} (per crop{', worst vertex' if 'vertex' in name else ''}) | "
              + " | ".join(f"{v:.2f}" for v in q) + " |")


if __name__ == "__main__":
    main()
