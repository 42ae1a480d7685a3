"""What lens distortion costs the SDK, and that undistorting the frame first removes it. Not a test.

    .venv/bin/python bench/distortion.py DATA_DIR [--num 128] [--k1 -0.3] [--k2 0.1]

The model assumes a pinhole camera. Each labelled crop of DATA_DIR is pasted back into its full
frame (its true K), and that frame is bent with OpenCV's radial distortion model (``--k1``,
``--k2``; the defaults are of the order of a wide-angle robot camera's). ``MeshRecoverer`` with
the true K then runs three ways:

1. ideal: the undistorted frame, the person's box (no lens at all; the reference);
2. raw: the distorted frame as it is, with the person's box in it (the box around the distorted
   crop outline): what a user gets who passes raw frames of such a lens;
3. undistorted: the distorted frame through ``cv2.undistort(frame, K, D)`` first, then as 1.

Prints MPJPE, PA-MPJPE (mm, H36M-17, pelvis-aligned) and the translation error (cm) of each,
over all frames and over the half whose person is farther from the image centre. A frame whose
bent box leaves the frame (a crop box far outside it, out of distribution) is skipped and
counted.
"""
import argparse

import cv2
import numpy as np

from d2a_edge.camera import uncrop
from d2a_edge.imageio import InputError
from d2a_edge.recoverer import MeshRecoverer, box_for_crop
from d2a_edge.training import metrics as M
from d2a_edge.training.data.shards import ShardReader


def distort_frame(frame: np.ndarray, K: np.ndarray, D: np.ndarray) -> np.ndarray:
    """``frame`` as a lens with distortion ``D`` would see it: each output pixel takes the
    ideal image's pixel that the lens bends onto it."""
    H, W = frame.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(W), np.arange(H)), -1).reshape(-1, 1, 2)
    ideal = cv2.undistortPoints(grid.astype(np.float32), K, D, P=K).reshape(H, W, 2)
    return cv2.remap(frame, ideal[..., 0], ideal[..., 1], cv2.INTER_LINEAR)


def distort_points(pts: np.ndarray, K: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Ideal pixel coordinates (N, 2) -> where the lens puts them (N, 2)."""
    rays = cv2.undistortPoints(pts.reshape(-1, 1, 2).astype(np.float32), K, None)  # K^-1
    xyz = np.concatenate([rays.reshape(-1, 2), np.ones((len(pts), 1))], 1)
    out, _ = cv2.projectPoints(xyz, np.zeros(3), np.zeros(3), K, D)
    return out.reshape(-1, 2)


def outline(box: np.ndarray, n: int = 32) -> np.ndarray:
    """Points (4n, 2) along the edges of ``box`` (x0, y0, x1, y1)."""
    t = np.linspace(0, 1, n, endpoint=False)
    x0, y0, x1, y1 = box
    return np.concatenate([np.stack([x0 + (x1 - x0) * t, np.full(n, y0)], 1),
                           np.stack([np.full(n, x1), y0 + (y1 - y0) * t], 1),
                           np.stack([x1 - (x1 - x0) * t, np.full(n, y1)], 1),
                           np.stack([np.full(n, x0), y1 - (y1 - y0) * t], 1)])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--model", default=None, help="bundle (default: the bundled edge-s)")
    p.add_argument("--num", type=int, default=128)
    p.add_argument("--k1", type=float, default=-0.3)
    p.add_argument("--k2", type=float, default=0.1)
    args = p.parse_args()
    rec = MeshRecoverer(args.model, backend="onnxruntime")
    reader = ShardReader(args.data)
    D = np.array([args.k1, args.k2, 0, 0, 0], np.float64)
    kp = {w: [] for w in ("ideal", "raw", "undistorted")}
    transl = {w: [] for w in kp}
    gt, off, skipped = [], [], 0
    for i in range(min(args.num, len(reader))):
        s = reader.sample(i)
        box, K = np.asarray(s["crop_box"], np.float64), np.asarray(s["K"], np.float64)
        rec.K = K.astype(np.float32)
        ideal = uncrop(np.asarray(s["image"])[..., ::-1], box, s["img_size"])
        bent = distort_frame(ideal, K, D)
        moved = distort_points(outline(box), K, D)
        raw_box = np.concatenate([moved.min(0), moved.max(0)])  # the square crop box, bent
        runs = {"ideal": (ideal, box), "raw": (bent, raw_box),
                "undistorted": (cv2.undistort(bent, K, D), box)}
        try:
            people = {way: rec(frame, boxes=[box_for_crop(crop)])[0]
                      for way, (frame, crop) in runs.items()}
        except InputError:  # the bent box left the frame (a crop far outside it): not scored
            skipped += 1
            continue
        for way, person in people.items():
            k = rec.bundle.asset.keypoints(person.joints3d, person.vertices, 17)
            kp[way].append(k - k[:1])
            transl[way].append(np.linalg.norm(person.translation - s["transl"]) * 100)
        g = np.asarray(s["kp3d"], np.float64)
        gt.append(g - g[:1])
        W, H = s["img_size"]
        centre = np.array([(box[0] + box[2]) / 2 - W / 2, (box[1] + box[3]) / 2 - H / 2])
        off.append(np.linalg.norm(centre) / np.hypot(W, H) * 2)  # 0 centre, 1 corner
    gt, off = np.stack(gt), np.array(off)
    far = off >= np.median(off)
    print(f"{len(gt)} frames of {args.data}, k1={args.k1} k2={args.k2}; person's distance from "
          f"the image centre (0 centre, 1 corner): median {np.median(off):.2f}; {skipped} "
          "skipped (the bent box outside the frame)")
    print("| frames | MPJPE mm | PA-MPJPE mm | translation cm |  (ideal / raw / undistorted)")
    print("|---|---|---|---|")
    for name, sel in (("all", slice(None)), ("farther half", far)):
        cells = []
        for metric in ("mpjpe", "pa_mpjpe", "transl"):
            vals = []
            for way in kp:
                pred = np.stack(kp[way])[sel]
                if metric == "transl":
                    vals.append(np.array(transl[way])[sel].mean())
                else:
                    vals.append(getattr(M, metric)(pred, gt[sel]).mean())
            cells.append(" / ".join(f"{v:.1f}" for v in vals))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
