"""Does keeping part of the network in fp32 bring the FP16 graph within 1 mm of fp32? Not a test.

    .venv/bin/python bench/fp16_keep_fp32.py BUNDLE [--num 64]

Converts BUNDLE's fp32 ONNX graph to FP16 several times (``onnx_tools.to_fp16``, as d2a-export
does), each time keeping one group of modules (by ONNX node name: the heads with the graph's
top-level arithmetic, the transformer, the CNNs: ResNet, depth net and the depth tokens'
convolutions) in fp32, and prints each variant's
max and mean vertex difference from the fp32 graph on --num labelled validation crops
(ONNX Runtime CPU, the same crops and report as ``d2a-export``).
"""
import argparse
import tempfile
from pathlib import Path

import onnx

from d2a_edge.body import load_body_asset
from d2a_edge.bundle import load_bundle
from d2a_edge.export import onnx_tools, verify
from d2a_edge.training.inference import OUTPUT_NAMES as NAMES
CNNS = ("backbone", "depth_net", "depth_backbone")  # ResNet, depth net, depth-token convs
TRANSFORMER = ("encoder", "decoder", "pos")


def module_of(node_name: str) -> str:
    parts = node_name.strip("/").split("/")
    return parts[0] if len(parts) > 1 else "(top level)"


def variants(modules: set[str]) -> dict[str, set[str]]:
    heads = {m for m in modules if not m.startswith(CNNS + TRANSFORMER)}
    trans = {m for m in modules if m.startswith(TRANSFORMER)}
    cnns = {m for m in modules if m.startswith(CNNS)}
    return {"all fp16": set(), "heads and top-level ops fp32": heads,
            "heads, top-level ops + transformer fp32": heads | trans,
            "ResNet fp32": {"backbone"}, "depth net fp32": {"depth_net", "depth_backbone"},
            "all CNNs fp32": cnns, "all but ResNet fp32": modules - {"backbone"}}


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
    ref = verify.run_onnx(onnx_tools.ort_session(src), images, info, NAMES)
    modules = {module_of(n.name) for n in fp32.graph.node}
    print(f"FP16 variants vs fp32 on {args.num} validation crops (ONNX Runtime CPU)")
    print("| kept in fp32 | nodes | max vertex mm | mean vertex mm | max translation mm |")
    print("|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp(prefix="fp16_keep_"))
    for name, keep in variants(modules).items():
        block = [n.name for n in fp32.graph.node if module_of(n.name) in keep]
        path = onnx_tools.to_fp16(src, tmp / "model_fp16.onnx", keep_fp32=block)
        got = verify.run_onnx(onnx_tools.ort_session(path), images, info, NAMES)
        r = verify.compare(asset, NAMES, ref, got, labels)
        print(f"| {name} | {len(block)} | {r['max_vertex_error_mm']:.2f} | "
              f"{r['mean_vertex_error_mm']:.2f} | {r['max_abs_error']['translation'] * 1000:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
