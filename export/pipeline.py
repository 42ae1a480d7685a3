"""``export_bundle``: checkpoint -> fused ONNX (fp32) -> FP16 / INT8 Q/DQ -> TensorRT, verified.

Everything is written into a staging folder inside ``out`` and moved into place only when all
requested artifacts exist and verify; ``manifest.json`` comes last. A failure removes the staging
folder, so nothing is left that looks valid. One function per format (STYLE: no god method).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from d2a_edge.body import file_sha256, save_body_asset
from d2a_edge.bundle import calibrated_sigma
from d2a_edge.export import onnx_tools, verify
from d2a_edge.export.manifest import build_manifest, write_manifest
from d2a_edge.export.tensorrt_build import TensorRTUnavailable
from d2a_edge.training import recover
from d2a_edge.training.inference import OUTPUT_NAMES, FusedGraph

# what each format accepts (STYLE 9: validate from a table, fail loudly)
FORMATS = {"onnx": {"fp32", "fp16", "int8"}, "trt": {"fp32", "fp16", "int8"},
           "torch-trt": {"fp32", "fp16"}}
VALIDATION_SEEDS = {"id": 99_001, "ood": 99_002}  # parity: ID; σ calibration: both


@dataclasses.dataclass
class ExportRequest:
    out: Path
    fmt: str = "onnx"
    fp16: bool = False
    int8: bool = False
    calib: str | None = None  # N synthetic crops, or a folder of images
    batch: int | None = 1  # None = dynamic batch
    opset: int = 17
    val_samples: int = 64

    def precisions(self) -> list[str]:
        p = ["fp32"] + (["fp16"] if self.fp16 else []) + (["int8"] if self.int8 else [])
        bad = [x for x in p if x not in FORMATS.get(self.fmt, set())]
        if self.fmt not in FORMATS:
            raise ValueError(f"--format {self.fmt!r} not in {sorted(FORMATS)}")
        if bad:
            raise ValueError(f"--format {self.fmt} cannot produce {bad} "
                             f"(it accepts {sorted(FORMATS[self.fmt])})")
        if self.int8 and not self.calib:
            raise ValueError("--int8 needs calibration data: --calib N (synthetic crops) or "
                             "--calib DIR (a folder of your images)")
        if self.int8 and str(self.calib).isdigit() and int(self.calib) < 1:
            raise ValueError(f"--calib {self.calib}: at least 1 calibration crop is needed")
        if self.int8 and not str(self.calib).isdigit() and not Path(self.calib).exists():
            raise ValueError(f"--calib {self.calib}: neither a number of synthetic crops nor "
                             "an existing folder or video of your images")
        if self.int8 and str(self.calib).isdigit() and Path(self.calib).exists():
            raise ValueError(f"--calib {self.calib}: both a number of synthetic crops and a "
                             f"folder here; write ./{self.calib} for the folder")
        if self.fmt == "torch-trt" and self.batch is None:  # export_torch_trt traces one batch
            raise ValueError("--format torch-trt compiles a fixed batch: use --batch N, not "
                             "--dynamic")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"--batch must be >= 1 (or --dynamic), got {self.batch}")
        if self.val_samples < 1:
            raise ValueError(f"--val-samples must be >= 1 (the parity report needs crops), "
                             f"got {self.val_samples}")
        return p


def calibration_batches(calib: str, asset, size: int, batch: int | None = 1):
    """(image (b,3,s,s), bbox_info (b,3)) pairs from N synthetic crops or a folder (or video)
    of images, whole frames as crops; b is the graph's fixed batch (1 for a dynamic one), and
    the last batch is filled up with the first crops again."""
    if str(calib).isdigit():
        images, info, _ = verify.validation_set(asset, int(calib), size, seed=77_003)
    else:
        from d2a_edge.imageio import open_source
        from d2a_edge.recoverer import default_intrinsics, make_crops
        crops = []
        for _, frame in open_source(calib):
            H, W = frame.shape[:2]
            crops.append(make_crops(frame, np.array([[0, 0, W, H]], np.float32),
                                    default_intrinsics(W, H), size))
        if not crops:
            raise ValueError(f"--calib {calib}: no readable image in it")
        images = np.concatenate([c[0] for c in crops])
        info = np.concatenate([c[2] for c in crops])
    b = batch or 1
    fill = -len(images) % b
    images = np.concatenate([images, np.resize(images, (fill, *images.shape[1:]))])
    info = np.concatenate([info, np.resize(info, (fill, *info.shape[1:]))])
    return [(images[i:i + b], info[i:i + b]) for i in range(0, len(images), b)]


def export_fp32(graph, stage: Path, size: int, req: ExportRequest) -> Path:
    path = onnx_tools.export_onnx(graph, stage / "model_fp32.onnx", size, OUTPUT_NAMES,
                                  req.batch, req.opset)
    return onnx_tools.simplify(path)


def export_fp16(fp32: Path, stage: Path) -> Path:
    return onnx_tools.to_fp16(fp32, stage / "model_fp16.onnx")


def export_int8(fp32: Path, stage: Path, calibration: list, symmetric: bool) -> Path:
    """``model_int8.onnx`` (U8S8, for ONNX Runtime) or ``model_int8_sym.onnx`` (S8S8, the
    input of the TensorRT INT8 plan: TensorRT takes only zero-point-0 quantization)."""
    name = "model_int8_sym.onnx" if symmetric else "model_int8.onnx"
    return onnx_tools.to_int8_qdq(fp32, stage / name, calibration, symmetric=symmetric)


def export_trt(onnx_path: Path, stage: Path, precision: str, size: int, req) -> Path:
    from d2a_edge.export.tensorrt_build import build_engine
    # a fixed batch is a static dimension: TensorRT needs min = opt = max for it
    rng = (req.batch,) * 3 if req.batch else (1, 8, 64)
    return build_engine(onnx_path, stage / f"model_{precision}.plan", precision, size, rng,
                        timing_cache=stage / "timing.cache")


def measure(graph, asset, path: Path, precision: str, data) -> dict:
    """Parity of one ONNX artifact vs PyTorch fp32 (ONNX Runtime, CPU)."""
    images, info, labels, ref = data
    try:
        got = verify.run_onnx(onnx_tools.ort_session(path), images, info, OUTPUT_NAMES)
        where = f"onnxruntime CPU ({verify.cpu_description()})"
    except Exception as e:  # ORT CPU lacks some fp16 kernels: measure PyTorch half instead
        if precision != "fp16":
            raise
        got = verify.run_torch(graph, images, info, half=True)
        where = f"PyTorch fp16 (ONNX Runtime CPU could not run the fp16 graph: {str(e)[:120]})"
    return {**verify.compare(asset, OUTPUT_NAMES, ref, got, labels), "measured_with": where}


def previous_export(out: Path) -> set[str]:
    """The files that an earlier export listed in ``out/manifest.json`` (export_bundle removes
    those it does not write again); a ValueError when ``out`` holds a training run or a
    manifest.json that is not a bundle's, which the export would overwrite."""
    if ((out / "checkpoints").is_dir() or (out / "meta.json").is_file()
            or (out / "latest.json").is_file() or any(out.glob("step_*/meta.json"))):
        raise ValueError(f"--out {out} holds a training run or checkpoint; export into another "
                         "folder")
    path = out / "manifest.json"
    if not path.exists():
        return set()
    try:
        old = json.loads(path.read_text())
        if not {"manifest_version", "outputs", "artifacts"} <= set(old):
            raise ValueError("it lacks manifest_version, outputs or artifacts")
        files = {a["file"] for a in old["artifacts"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--out {out} holds a manifest.json that is not a d2a-edge bundle's "
                         f"({e}); export into another folder") from None
    return {f for f in files if isinstance(f, str) and Path(f).name == f}  # names, not paths


def export_bundle(model, asset, req: ExportRequest, name: str = "d2a-hmr",
                  checkpoint: Path | None = None, progress=print,
                  loss_state: dict | None = None, untrained: list[str] | tuple = ()) -> dict:
    """Write a verified bundle for ``model`` (a D2AHMR built on body ``asset``) into
    ``req.out``; returns the manifest (with the parity report per artifact). The bundle also
    holds ``training_extras.safetensors`` (``training.recover.training_extras``, with
    ``loss_state``, the loss's RLE flow, when given), so that training can go on from it
    exactly; the SDK does not read it. ``untrained``: model tensors that were never trained
    (a model recovered from a bundle without extras); they are left out of the extras and
    listed in the manifest, so that training from the bundle knows them as fresh."""
    precisions = req.precisions()
    graph = FusedGraph(model)
    size = model.cfg.image_size
    out = Path(req.out)
    created = not out.exists()
    earlier = set() if created else previous_export(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".d2a-export-staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        report, trt_error = _export_into(graph, asset, size, stage, req, precisions, name,
                                         checkpoint, progress, loss_state, untrained)
        written = sorted(stage.iterdir(), key=lambda f: f.name == "manifest.json")
        names = {f.name for f in written}
        # the old manifest goes first: a stop while the files move leaves no manifest (not a
        # bundle) rather than one naming files half replaced
        (out / "manifest.json").unlink(missing_ok=True)
        for f in written[:-1]:
            f.replace(out / f.name)
        for old in earlier - names:  # an earlier export's graphs and plans this one did not make
            (out / old).unlink(missing_ok=True)
        written[-1].replace(out / written[-1].name)  # manifest.json last
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):  # a failed export leaves no empty --out behind
            out.rmdir()
    if trt_error is not None:
        trt_error.manifest = report  # the verified ONNX bundle stays in place
        raise trt_error
    return report


def sigma_calibration(graph, asset, size, req, id_data, progress) -> dict:
    """``verify.fit_sigma_calibration`` on the validation crops of both splits: the ID crops
    already rendered for parity plus as many OOD crops, with the fp32 PyTorch outputs."""
    progress(f"[3/4] calibrating joint σ on {req.val_samples} ID + {req.val_samples} OOD crops")
    images, info, labels, ref = id_data
    sig, err = verify.joint_sigma_and_error(asset, ref, labels)
    o_images, o_info, o_labels = verify.validation_set(
        asset, req.val_samples, size, seed=VALIDATION_SEEDS["ood"], split="ood")
    o_sig, o_err = verify.joint_sigma_and_error(
        asset, verify.run_torch(graph, o_images, o_info), o_labels)
    sig, err = np.concatenate([sig, o_sig]), np.concatenate([err, o_err])
    cal = verify.fit_sigma_calibration(sig, err)
    scaled = calibrated_sigma(cal, sig)
    return {**cal, "fitted_on": f"{req.val_samples} ID + {req.val_samples} OOD validation "
                                f"renders (seeds {VALIDATION_SEEDS['id']}, "
                                f"{VALIDATION_SEEDS['ood']}): pelvis-relative error of "
                                "the skinned joints, by σ decile",
            "mean_error_over_mean_sigma": {"raw": float(err.mean() / sig.mean()),
                                           "calibrated": float(err.mean() / scaled.mean())}}


def _export_into(graph, asset, size, stage, req, precisions, name, checkpoint, progress,
                 loss_state=None, untrained=()) -> dict:
    calibration = None
    if "int8" in precisions:  # first, so that unusable calibration data fails before the work
        progress(f"[1/4] INT8 calibration crops from {req.calib}")
        calibration = calibration_batches(req.calib, asset, size, req.batch)
    progress(f"[1/4] rendering {req.val_samples} labelled validation crops")
    images, info, labels = verify.validation_set(asset, req.val_samples, size,
                                                 seed=VALIDATION_SEEDS["id"])
    ref = verify.run_torch(graph, images, info)
    data = (images, info, labels, ref)
    progress("[2/4] fp32 ONNX (fused depth net + transformer + heads), simplified")
    files = {"fp32": export_fp32(graph, stage, size, req)}
    if "fp16" in precisions:
        progress("[2/4] fp16 mixed-precision ONNX (fp32 I/O)")
        files["fp16"] = export_fp16(files["fp32"], stage)
    if "int8" in precisions:
        progress(f"[2/4] int8 Q/DQ ONNX, calibrated on {req.calib}")
        files["int8"] = export_int8(files["fp32"], stage, calibration, symmetric=False)
        if req.fmt == "trt":
            files["int8-sym"] = export_int8(files["fp32"], stage, calibration, symmetric=True)
    progress("[3/4] verifying against PyTorch")
    artifacts = {}
    for p, path in files.items():
        artifacts[p] = {"file": path.name, "format": "onnx", "bytes": path.stat().st_size,
                        "sha256": file_sha256(path), "parity": measure(graph, asset, path, p, data)}
    cal = sigma_calibration(graph, asset, size, req, data, progress)
    save_body_asset(asset, stage / "body.npz")
    trt_error = None
    if req.fmt == "trt":
        progress("[4/4] TensorRT plans")
        try:
            sources = {p: path for p, path in files.items() if p != "int8-sym"}
            if "int8-sym" in files:  # TensorRT takes only zero-point-0 int8
                sources["int8"] = files["int8-sym"]
            for p, path in sources.items():
                plan = export_trt(path, stage, p, size, req)
                artifacts[f"{p}-trt"] = {"file": plan.name, "format": "trt",
                                         "bytes": plan.stat().st_size, "sha256": file_sha256(plan)}
        except TensorRTUnavailable as e:
            trt_error = e
    manifest = build_manifest(
        model_name=name, config=dataclasses.asdict(graph.model.cfg),
        image_size=size, batch=req.batch, output_shapes=graph.output_shapes(),
        body_file="body.npz", body_sha256=file_sha256(stage / "body.npz"),
        joint_names=list(asset.joint_names), artifacts=artifacts, opset=req.opset)
    if checkpoint is not None:
        manifest["source_checkpoint"] = str(Path(checkpoint).resolve())
    extras = stage / recover.EXTRAS_FILE
    save_file(recover.training_extras(graph.model, size, loss_state, untrained), str(extras))
    extras.chmod(0o644)  # safetensors writes 0600; the bundle's other files are 0644
    manifest["training_extras"] = {"file": extras.name, "bytes": extras.stat().st_size,
                                   "sha256": file_sha256(extras),
                                   "graph_sha256": file_sha256(files["fp32"])}
    if untrained:
        manifest["training_extras"]["untrained"] = sorted(untrained)
    manifest["sigma_calibration"] = cal
    sigma = ref[OUTPUT_NAMES.index("joint_sigma")]  # (N, J*3) or (N, J, 3), metres
    sigma = calibrated_sigma(cal, np.linalg.norm(sigma.reshape(len(sigma), -1, 3), axis=-1))
    manifest["sigma_reference_m"] = float(np.median(sigma.mean(-1)))
    write_manifest(manifest, stage)
    return manifest, trt_error
