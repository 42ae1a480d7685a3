"""Parity of exported graphs against PyTorch: max abs error per output, vertex error, MPJPE delta;
and the calibration of the predicted joint σ.

Validation crops come from the synthetic data engine with labels, so accuracy deltas
(MPJPE / PA-MPJPE vs the ground truth) are measured, not just output differences.
"""
from __future__ import annotations

import numpy as np

from d2a_edge.body import BodyModel
from d2a_edge.training.metrics import calibration_bins, mpjpe, pa_mpjpe, root_align


def validation_set(asset, n: int, image_size: int, seed: int = 99_001, split: str = "id"):
    """(images (n,3,s,s) f32 0..1, bbox_info (n,3), labels dict) rendered by the data engine."""
    from d2a_edge.camera import bbox_info
    from d2a_edge.training.data.engine import SampleGenerator, SceneConfig

    gen = SampleGenerator(asset, SceneConfig.for_split(split, image_size))
    s = gen.generate(seed, range(n))
    images = s["image"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    info = bbox_info(s["crop_box"], s["K"]).astype(np.float32)
    return np.ascontiguousarray(images), info, s


def run_torch(module, images: np.ndarray, info: np.ndarray, batch: int = 32,
              half: bool = False) -> list[np.ndarray]:
    """Outputs of the fused torch module, in its output order (fp32 numpy). ``half`` runs a
    half-precision copy; the module itself is left as it was."""
    import copy

    import torch

    outs = []
    m = copy.deepcopy(module).half() if half else module.float()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x, b = torch.from_numpy(images[i:i + batch]), torch.from_numpy(info[i:i + batch])
            if half:
                x = x.half()
            outs.append([o.float().numpy() for o in m(x, b)])
    return [np.concatenate(parts) for parts in zip(*outs)]


def cpu_description() -> str:
    """This CPU's model name and whether it has VNNI (the int8 dot-product instructions): ONNX
    Runtime's INT8 kernels take another path without them (uint8 x int8 products summed in
    saturating 16-bit pairs), so the INT8 graph's error depends on the CPU. The shipped edge-s
    INT8 graph, the same 256 validation crops and ONNX Runtime 1.32: worst vertex 825 mm (mean
    25.2 mm) on the CPU it was exported on, which was not recorded (S8S8 was slower than U8S8
    there, as without VNNI); 94 mm (mean 13.8 mm) on an AMD EPYC with AVX-512 VNNI."""
    import platform
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return f"{name}, {'VNNI: ' + ' '.join(vnni) if vnni else 'no VNNI'}" if flags else name


def run_onnx(session, images: np.ndarray, info: np.ndarray, names, batch: int = 32):
    """Outputs of an ONNX Runtime session, ``batch`` crops a run; a graph with a fixed batch
    takes chunks of its batch, the last padded (``fixed_batch_chunks``)."""
    from d2a_edge.backends import fixed_batch_chunks

    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    outs = [[o[:rows] for o in session.run(list(names), {"image": x, "bbox_info": b})]
            for x, b, rows in fixed_batch_chunks(images, info, step)]
    return [np.concatenate(parts) for parts in zip(*outs)]


def mesh_from_outputs(asset, outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pose, shape, transl = outs[0], outs[1], outs[2]
    return BodyModel(asset)(pose.astype(np.float64), shape.astype(np.float64),
                            transl.astype(np.float64))


def keypoint_errors(asset, outs, labels) -> dict[str, float]:
    """MPJPE / PA-MPJPE (mm) of the 17 keypoints, root-aligned, against the labels."""
    verts, joints = mesh_from_outputs(asset, outs)
    kp = asset.keypoints(joints, verts, 17)
    gt = labels["kp3d"].astype(np.float64)
    pred = root_align(kp, kp[:, 0])
    return {"mpjpe_mm": float(mpjpe(pred, root_align(gt, gt[:, 0])).mean()),
            "pa_mpjpe_mm": float(pa_mpjpe(kp, gt).mean())}


def compare(asset, names, ref: list[np.ndarray], got: list[np.ndarray], labels) -> dict:
    """Report of ``got`` (an exported graph) against ``ref`` (PyTorch fp32)."""
    v_ref, _ = mesh_from_outputs(asset, ref)
    v_got, _ = mesh_from_outputs(asset, got)
    e_ref, e_got = keypoint_errors(asset, ref, labels), keypoint_errors(asset, got, labels)
    return {
        "max_abs_error": {n: float(np.abs(a - b).max()) for n, a, b in zip(names, ref, got)},
        "max_vertex_error_mm": float(np.linalg.norm(v_ref - v_got, axis=-1).max() * 1000),
        "mean_vertex_error_mm": float(np.linalg.norm(v_ref - v_got, axis=-1).mean() * 1000),
        "mpjpe_mm": e_got["mpjpe_mm"], "pa_mpjpe_mm": e_got["pa_mpjpe_mm"],
        "mpjpe_delta_mm": e_got["mpjpe_mm"] - e_ref["mpjpe_mm"],
        "pa_mpjpe_delta_mm": e_got["pa_mpjpe_mm"] - e_ref["pa_mpjpe_mm"],
        "samples": int(len(ref[0])),
    }


def joint_sigma_and_error(asset, outs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per joint except the pelvis, (N, J-1) each, metres: the predicted σ (the norm of the
    per-axis σ, as ``HumanMesh.joint_sigma``) and the actual error of the skinned joint
    relative to the pelvis (``HumanMesh.joints3d``'s pelvis-relative error)."""
    _, joints = mesh_from_outputs(asset, outs)
    gt = labels["joints3d"].astype(np.float64)
    err = np.linalg.norm((joints - joints[:, :1]) - (gt - gt[:, :1]), axis=-1)
    sigma = np.linalg.norm(outs[3].astype(np.float64).reshape(len(joints), -1, 3), axis=-1)
    return sigma[:, 1:], err[:, 1:]


CALIBRATION_P = (0.25, 4.0)  # fit_sigma_calibration keeps a fitted exponent in this range


def fit_sigma_calibration(sigma: np.ndarray, error: np.ndarray, bins: int = 10) -> dict:
    """``{"a", "p"}`` with error ≈ a · σ^p (metres): a least-squares line in log-log space
    through the mean σ and mean error of each σ decile (``calibration_bins``). With fewer than
    three usable deciles, or a fitted p outside ``CALIBRATION_P``, it is a plain scale: p = 1,
    a = mean error / mean σ. (A briefly trained model's σ barely varies, and the line through
    its deciles gave 4.45e204 · σ^193.8, NaN once applied.)"""
    sigma, error = np.asarray(sigma, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    b = calibration_bins(sigma, error, bins)
    s = np.array([r["sigma"] for r in b])
    e = np.array([r["error"] for r in b])
    ok = (s > 0) & (e > 0)
    if ok.sum() >= 3 and np.ptp(np.log(s[ok])) > 0:
        p, log_a = np.polyfit(np.log(s[ok]), np.log(e[ok]), 1)
        if CALIBRATION_P[0] <= p <= CALIBRATION_P[1]:
            return {"a": float(np.exp(log_a)), "p": float(p)}
    return {"a": float(error.mean() / max(sigma.mean(), 1e-12)), "p": 1.0}
