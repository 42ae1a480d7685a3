"""Does keeping part of the network in fp32 bring the FP16 graph within 1 mm of fp32? Not a test.

    .venv/bin/python bench/fp16_keep_fp32.py BUNDLE [--num 64]

Converts BUNDLE's fp32 ONNX graph to FP16 several times, each time keeping one group of
modules (by ONNX node name: heads, transformer, the CNNs) in fp32, and prints each variant's
max and mean vertex difference from the fp32 graph on --num labelled validation crops
(ONNX Runtime CPU, the same crops and report as ``d2a-export``).
"""
import argparse

import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import convert_float_to_float16

from d2a_edge.body import load_body_asset
from d2a_edge.bundle import load_bundle
from d2a_edge.export import verify

NAMES = ["pose", "shape", "translation", "joint_sigma"]
CNNS = ("backbone", "depth_net")
TRANSFORMER = ("encoder", "decoder", "depth_backbone", "pos")


def module_of(node_name: str) -> str:
    parts = node_name.strip("/").split("/")
    return parts[0] if len(parts) > 1 else "(top level)"


def variants(modules: set[str]) -> dict[str, set[str]]:
    heads = {m for m in modules if not m.startswith(CNNS + TRANSFORMER)}
    trans = {m for m in modules if m.startswith(TRANSFORMER)}
    cnns = {m for m in modules if m.startswith(CNNS)}
    return {"all fp16": set(), "heads fp32": heads, "heads + transformer fp32": heads | trans,
            "ResNet fp32": {"backbone"}, "depth net fp32": {"depth_net"}, "both CNNs fp32": cnns,
            "all but ResNet fp32": modules - {"backbone"}}


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?")
    p.add_argument("--num", type=int, default=64)
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    asset = load_body_asset(bundle.root / "body.npz")
    src = str(bundle.artifact("fp32", "onnx"))
    fp32 = onnx.load(src)
    images, info, labels = verify.validation_set(asset, args.num, bundle.image_size)
    ref = verify.run_onnx(session(fp32), images, info, NAMES)
    modules = {module_of(n.name) for n in fp32.graph.node}
    print(f"FP16 variants vs fp32 on {args.num} validation crops (ONNX Runtime CPU)")
    print("| kept in fp32 | nodes | max vertex mm | mean vertex mm | max translation mm |")
    print("|---|---|---|---|---|")
    for name, keep in variants(modules).items():
        block = [n.name for n in fp32.graph.node if module_of(n.name) in keep]
        model = convert_float_to_float16(onnx.load(src), keep_io_types=True,
                                         op_block_list=["Resize", "TopK", "NonMaxSuppression"],
                                         node_block_list=block)
        r = verify.compare(asset, NAMES, ref, verify.run_onnx(session(model), images, info, NAMES),
                           labels)
        print(f"| {name} | {len(block)} | {r['max_vertex_error_mm']:.2f} | "
              f"{r['mean_vertex_error_mm']:.2f} | {r['max_abs_error']['translation'] * 1000:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
