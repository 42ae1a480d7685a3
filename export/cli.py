"""``d2a-export CHECKPOINT``: a verified model bundle for the SDK.

Writes into --out: model_fp32.onnx (+ model_fp16.onnx with --fp16, model_int8.onnx with --int8),
model_<precision>.plan with --format trt (and model_int8_sym.onnx, the zero-point-0 INT8 graph
TensorRT takes, with --int8 --format trt), body.npz (the body asset the model was trained with),
training_extras.safetensors (what training needs to go on from the bundle exactly; the SDK does
not read it) and manifest.json (I/O, normalisation, output shapes, body hash, joint names,
parity, versions). Graphs and plans of an earlier export in --out (those its manifest lists)
that this one does not write are removed. Then prints the parity report (ONNX Runtime vs
PyTorch on labelled synthetic crops: max abs error per output, max and mean vertex error,
MPJPE / PA-MPJPE and their deltas) and how to use the bundle.
A failed export leaves no file that looks valid; with --format trt and no TensorRT the verified
ONNX bundle stays, its report is printed and the command exits 3 (1 when TensorRT could not
build a plan). --out must be a new folder, an earlier bundle, or a folder without a
manifest.json that holds no training run or checkpoint; only the files an earlier bundle's
manifest lists are replaced or removed. Ctrl-C leaves no new bundle (exit 130).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _report(manifest: dict, out: Path) -> str:
    lines = [f"bundle: {out}", "| artifact | MB | measured with | max abs error per output | "
             "max vertex err mm | mean vertex err mm | MPJPE mm | MPJPE delta mm | PA-MPJPE mm "
             "| PA-MPJPE delta mm |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in manifest["artifacts"].items():
        p = a.get("parity")
        if p is None:
            lines.append(f"| {name} | {a['bytes'] / 1e6:.1f} | (TensorRT, not verified here) "
                         "| | | | | | | |")
            continue
        nan = float("nan")  # fields absent in older manifests
        per_output = ", ".join(f"{k} {v:.2g}" for k, v in p.get("max_abs_error", {}).items())
        lines.append(f"| {name} | {a['bytes'] / 1e6:.1f} | {p['measured_with']} | "
                     f"{per_output} | {p['max_vertex_error_mm']:.4f} | "
                     f"{p.get('mean_vertex_error_mm', nan):.4f} | {p['mpjpe_mm']:.1f} | "
                     f"{p.get('mpjpe_delta_mm', nan):+.2f} | {p['pa_mpjpe_mm']:.1f} | "
                     f"{p['pa_mpjpe_delta_mm']:+.2f} |")
    cal = manifest.get("sigma_calibration")
    if cal:
        r = cal["mean_error_over_mean_sigma"]
        lines += ["", f"joint σ calibration: σ' = {cal['a']:.3g} · σ^{cal['p']:.3f} (metres), "
                  f"fitted on {cal['fitted_on']}; mean error / mean σ: {r['raw']:.2f} raw, "
                  f"{r['calibrated']:.2f} calibrated"]
    onnx = [k for k, a in manifest["artifacts"].items()
            if a.get("format") == "onnx" and k in ("fp32", "fp16", "int8")]
    others = " / ".join(repr(k) for k in onnx if k != "fp32")
    lines += ["", "use it:", "    import cv2", "    from d2a_edge import MeshRecoverer",
              f"    rec = MeshRecoverer({str(out.resolve())!r}, precision='fp32')"
              + (f"  # or {others}" if others else ""),
              "    people = rec(cv2.imread('photo.jpg'))  # any BGR frame"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2a-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory (-> latest checkpoint), step_* directory, "
                                      "or an exported bundle such as d2a_edge/models/edge-s "
                                      "(its weights are recovered from its fp32 graph)")
    p.add_argument("--out", required=True, help="bundle directory (created)")
    p.add_argument("--fp16", action="store_true", help="also a mixed-precision FP16 graph")
    p.add_argument("--int8", action="store_true", help="also an INT8 Q/DQ graph (needs --calib)")
    p.add_argument("--calib", help="N synthetic calibration crops, or a folder of images")
    p.add_argument("--format", default="onnx", choices=["onnx", "trt", "torch-trt"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    g.add_argument("--dynamic", action="store_true", help="dynamic batch dimension")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--val-samples", type=int, default=256,
                   help="labelled synthetic crops for the parity report (and as many OOD "
                   "crops again for the joint σ calibration)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.calib is not None and not args.int8:
        print("d2a-export: warning: --calib is used only with --int8; ignored", file=sys.stderr)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"d2a-export: error: --out {args.out} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        from d2a_edge.export.pipeline import ExportRequest
        from d2a_edge.training.checkpoint import CheckpointError
    except ImportError as e:
        print(f"d2a-export: error: needs the [export] and [train] extras ({e})", file=sys.stderr)
        return 2
    from d2a_edge.export.tensorrt_build import TensorRTBuildError, TensorRTUnavailable
    req = ExportRequest(out=Path(args.out), fmt=args.format, fp16=args.fp16, int8=args.int8,
                        calib=args.calib, batch=None if args.dynamic else args.batch,
                        opset=args.opset, val_samples=args.val_samples)
    try:
        return _export(args, req)
    except TensorRTUnavailable as e:  # the verified ONNX bundle is in place: report it
        if e.manifest is not None:
            print(_report(e.manifest, Path(args.out)))
        print(f"d2a-export: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TensorRTBuildError) else 3
    except (ValueError, CheckpointError, OSError) as e:  # OSError: e.g. --out not writable
        if isinstance(e, OSError) and str(e.filename or "").startswith(str(args.out)):
            e = f"cannot write --out {args.out}: {e.strerror or e}"
        print(f"d2a-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the staging folder is gone; an earlier bundle in --out stays
        print(f"d2a-export: interrupted; {args.out} holds no new bundle", file=sys.stderr)
        return 130


def _export(args, req) -> int:
    """Check the request, load the checkpoint, export and verify; the exit code."""
    from d2a_edge.body import load_body
    from d2a_edge.export.pipeline import export_bundle
    from d2a_edge.export.tensorrt_build import TensorRTUnavailable, import_tensorrt
    from d2a_edge.training.checkpoint import load_model_config
    from d2a_edge.training.recover import loss_state
    req.precisions()
    if args.format == "torch-trt" and _torch_trt_unavailable():
        return 3
    model, cfg, meta = load_model_config(args.checkpoint)  # a bad checkpoint fails first
    if args.format == "trt":
        try:
            import_tensorrt()
        except TensorRTUnavailable:
            print("d2a-export: warning: TensorRT is not installed here: the ONNX bundle "
                  "is written and verified, then d2a-export exits 3", file=sys.stderr)
    asset = load_body(cfg.model.body)
    if args.format == "torch-trt":
        from d2a_edge.export.pipeline import previous_export
        from d2a_edge.export.torch_trt import export_torch_trt
        previous_export(Path(args.out))  # not into a run or a dataset
        path = export_torch_trt(model, Path(args.out), req)
        print(f"wrote {path} (torch.export program with TensorRT engines; load with "
              "torch.export.load, no training code needed) - not verified here")
        return 0
    manifest = export_bundle(model, asset, req, name=cfg.name, checkpoint=Path(args.checkpoint),
                             loss_state=loss_state(args.checkpoint),
                             untrained=meta.get("recovered_from", {}).get("fresh_parameters", ()))
    print(_report(manifest, Path(args.out)))
    return 0


def _torch_trt_unavailable() -> int:
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        print("d2a-export: error: --format torch-trt needs torch_tensorrt (pip install "
              "torch-tensorrt on a CUDA machine); nothing was written", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
