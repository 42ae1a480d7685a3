"""How far a lower-precision graph moves the outputs from the fp32 graph (ONNX Runtime CPU).

    .venv/bin/python bench/precision_drift.py DATA_DIR --precision int8|fp16|fp16-input|8bit-noise
        [--num 256] [--model BUNDLE]

Runs the bundle's fp32 graph and the ``--precision`` graph (default bundle: the bundled edge-s)
on the first N crops of DATA_DIR, one at a time, and prints percentiles of the translation
difference and of the root-relative vertex difference (meshes skinned at the root), in mm.
A third row takes the root (whole-body) rotation from the fp32 graph, leaving the articulation's
drift: where it is much smaller than the second, the lower precision turned whole bodies.

Two noise floors run the fp32 graph itself on a slightly changed input instead:
``fp16-input`` rounds the input image to fp16 (what the first layer of an fp16 graph sees), and
``8bit-noise`` adds uniform noise of ±½ of one 8-bit grey level (seed 0), smaller than any
camera's. They show how much of a lower-precision graph's drift the fp32 model would show anyway.
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


PERTURB = {
    "fp16-input": lambda x: x.astype(np.float16).astype(np.float32),
    "8bit-noise": lambda x: (x + np.random.default_rng(0).uniform(-0.5, 0.5, x.shape) / 255)
    .astype(np.float32),
}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--precision", required=True, choices=("int8", "fp16", *PERTURB))
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    bundle, ds = load_bundle(args.model), ShardDataset(args.data)
    fp32 = bundle.artifact("fp32", "onnx")
    path = fp32 if args.precision in PERTURB else bundle.artifact(args.precision, "onnx")
    if path is None:
        raise SystemExit(f"no {args.precision} ONNX graph in {bundle.root}")
    n = min(args.num, len(ds))
    imgs = np.stack([ds[i]["image"].numpy() for i in range(n)])
    info = np.stack([ds[i]["bbox_info"].numpy() for i in range(n)])
    ref = run_graph(fp32, imgs, info)
    low = run_graph(path, PERTURB.get(args.precision, lambda x: x)(imgs), info)
    body, root = BodyModel(bundle.asset), np.zeros((n, 3), np.float32)
    v_ref, v_low = (body(o["pose"].astype(np.float32), o["shape"].astype(np.float32), root)[0]
                    for o in (ref, low))
    turned = low["pose"].astype(np.float32)  # the low graph's pose with fp32's root rotation
    turned[:, 0] = ref["pose"][:, 0]
    v_art = body(turned, low["shape"].astype(np.float32), root)[0]
    rows = {"translation": np.linalg.norm(low["translation"] - ref["translation"], axis=-1),
            "root-relative vertex": np.linalg.norm(v_low - v_ref, axis=-1).max(1),
            "root-relative vertex, fp32 root rotation": np.linalg.norm(v_art - v_ref,
                                                                       axis=-1).max(1)}
    what = f"fp32 on {args.precision}" if args.precision in PERTURB else args.precision
    print(f"{what} vs fp32 on {n} crops of {args.data} (fp32 depths "
          f"{ref['translation'][:, 2].min():.1f}..{ref['translation'][:, 2].max():.1f} m)")
    print("| difference (mm) | median | p90 | p99 | max |\n|---|---|---|---|---|")
    for name, d in rows.items():
        q = np.percentile(d * 1000, [50, 90, 99, 100])
        print(f"| {name} (per crop{', worst vertex' if 'vertex' in name else ''}) | "
              + " | ".join(f"{v:.2f}" for v in q) + " |")


if __name__ == "__main__":
    main()
