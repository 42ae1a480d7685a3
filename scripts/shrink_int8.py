"""Store the float weights of a bundle's INT8 graph as fp16, in place, and verify it again.

    python scripts/shrink_int8.py BUNDLE [--val-samples 256]

``d2a-export`` does this itself since ``export/onnx_tools.store_weights_fp16`` (the weights the
INT8 graph keeps in float: attention, MLPs, heads, small convs; ONNX Runtime casts them back to
fp32 when it loads the graph). This script brings a bundle exported before that to the same
form without exporting it again, so that its fp32 graph stays byte for byte what it was.

The parity of ``model_int8.onnx`` is measured as ``d2a-export`` measures it (256 ID validation
renders, seed 99001) against the bundle's weights recovered from its fp32 graph
(``training.recover``), before and after, and the manifest's entry (bytes, sha256, parity) is
rewritten. Needs the ``[train,export]`` extras.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    import onnx

    from d2a_edge.body import file_sha256
    from d2a_edge.bundle import load_bundle
    from d2a_edge.export import verify
    from d2a_edge.export.manifest import write_manifest
    from d2a_edge.export.onnx_tools import store_weights_fp16
    from d2a_edge.export.pipeline import VALIDATION_SEEDS, measure
    from d2a_edge.training import recover
    from d2a_edge.training.inference import FusedGraph

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--val-samples", type=int, default=256)
    args = p.parse_args(argv)
    b = load_bundle(args.bundle)
    int8 = b.artifact("int8", "onnx")
    if int8 is None:
        sys.exit(f"shrink_int8: {b.root} has no INT8 ONNX graph")
    graph = onnx.load(str(int8))
    if any(n.op_type == "Cast" and n.name.endswith("_fp16_cast") for n in graph.graph.node):
        sys.exit(f"shrink_int8: {int8} already stores its float weights as fp16")
    model, _, _ = recover.recover(b.root, progress=print)
    fused = FusedGraph(model)
    images, info, labels = verify.validation_set(b.asset, args.val_samples, b.image_size,
                                                 seed=VALIDATION_SEEDS["id"])
    data = (images, info, labels, verify.run_torch(fused, images, info))
    tmp = int8.with_name(f".{int8.name}.partial")
    onnx.save(store_weights_fp16(graph), str(tmp))
    try:
        before = measure(fused, b.asset, int8, "int8", data)
        after = measure(fused, b.asset, tmp, "int8", data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for label, path, r in (("before", int8, before), ("after", tmp, after)):
        print(f"{label}: {path.stat().st_size / 1e6:.2f} MB, PA-MPJPE delta "
              f"{r['pa_mpjpe_delta_mm']:+.2f} mm, MPJPE delta {r['mpjpe_delta_mm']:+.2f} mm, "
              f"mean vertex {r['mean_vertex_error_mm']:.2f} mm, max vertex "
              f"{r['max_vertex_error_mm']:.1f} mm ({r['samples']} crops)")
    os.replace(tmp, int8)
    entry = b.manifest["artifacts"]["int8"]
    entry.update(bytes=int8.stat().st_size, sha256=file_sha256(int8),
                 parity={**after, "reference": "PyTorch fp32 of the weights recovered from "
                                               f"{b.artifact('fp32', 'onnx').name}"})
    write_manifest(b.manifest, b.root)
    print(f"wrote {int8} and {Path(b.root) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
