"""``d2a-demo``: meshes on a camera, a video or an image folder; overlays on screen or saved.

Headless use: ``--save DIR`` writes one overlay PNG per frame (``frame_000000.png``) plus the
first person's mesh (the lowest ``track_id`` with ``--track``, else the most confident) as OBJ
every ``--obj-every`` frames; no screen is needed. It stops with an error before the disk
has under ``--keep-free`` MB free. A later run into the same folder replaces them; a folder
with such files that d2a-demo did not write, or the source folder itself, is refused.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from d2a_edge._cli import at_least
from d2a_edge.backends import BACKENDS, PRECISIONS
from d2a_edge.recoverer import MESHES


def render(frame: np.ndarray, people, K: np.ndarray, parents, fps: float | None,
           draw_mesh=None, sigma_full: float = 0.1) -> np.ndarray:
    """The overlay: shaded mesh, joints coloured by sigma (green certain -> red at
    ``sigma_full`` metres), FPS. ``draw_mesh``: ``overlay_gl.make_mesh_drawer`` (OpenCV default)."""
    import cv2

    from d2a_edge.overlay import draw_joints
    if draw_mesh is None:
        from d2a_edge.overlay import draw_mesh
    out = frame
    for p in people:
        out = draw_mesh(out, p.vertices, p.faces, K, alpha=0.6)
        out = draw_joints(out, p.joints2d, parents, p.joint_sigma, sigma_full=sigma_full)
    if fps is not None:
        cv2.putText(out, f"{fps:5.1f} FPS", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 2, cv2.LINE_AA)
    return out


def _can_show() -> bool:
    import cv2
    try:
        cv2.namedWindow("d2a-demo")
        return True
    except cv2.error:
        return False


OUTPUTS = ("frame_*.png", "mesh_*.obj", "mesh_*.obj.partial")  # what --save writes
MARKER = ".d2a-demo"  # in a --save folder: its OUTPUTS are a d2a-demo run's, to be replaced


def prepare_save(save: Path, source) -> str | None:
    """Make ``save`` ready for a run, removing an earlier run's outputs; the reason it cannot
    be used (nothing removed) or None. Only files that a d2a-demo run wrote are removed: the
    folder must carry ``MARKER``, and must not be the source folder."""
    if Path(str(source)).is_dir() and save.resolve() == Path(str(source)).resolve():
        return f"--save {save} is the source folder; choose another"  # (however spelled)
    earlier = [f for pattern in OUTPUTS for f in save.glob(pattern)] if save.exists() else []
    if earlier and not (save / MARKER).exists():
        return (f"--save {save} holds {len(earlier)} frame_*/mesh_* files that no d2a-demo run "
                "wrote; choose another folder (nothing was removed)")
    save.mkdir(parents=True, exist_ok=True)
    for f in earlier:
        f.unlink()
    if earlier:
        print(f"d2a-demo: removed {len(earlier)} overlays and meshes of an earlier run from "
              f"{save}", file=sys.stderr)
    (save / MARKER).write_text("d2a-demo writes its overlays and meshes here; the next run "
                               "into this folder replaces them\n")
    return None


def run(args) -> int:
    from d2a_edge.imageio import open_source
    from d2a_edge.recoverer import MeshRecoverer
    save = Path(args.save) if args.save else None
    if args.no_display and save is None:
        print("d2a-demo: error: --no-display without --save leaves nothing to do: pass --save "
              "DIR", file=sys.stderr)
        return 2
    if save is not None and save.exists() and not save.is_dir():
        print(f"d2a-demo: error: --save {save} is a file, not a folder", file=sys.stderr)
        return 2
    frames = open_source(args.source)  # a bad source fails before anything loads or is written
    rec = MeshRecoverer(args.model, backend=args.backend, precision=args.precision,
                        mesh=args.mesh, flip=args.flip, threads=args.threads)
    show = not args.no_display and _can_show()
    if not show and save is None:
        print("d2a-demo: error: no display here (OpenCV headless?): pass --save DIR",
              file=sys.stderr)
        return 2
    if save:
        problem = prepare_save(save, args.source)
        if problem:
            print(f"d2a-demo: error: {problem}", file=sys.stderr)
            return 2
    parents = rec.bundle.asset.parents
    from d2a_edge.overlay_gl import make_mesh_drawer
    drawer = make_mesh_drawer(args.overlay)
    if args.track:
        results = rec.track(frames, smoothing=not args.no_smoothing, max_people=args.people)
    else:
        results = ((t, frame, rec(frame, boxes=rec.locate_all(frame, args.people)
                                  if args.locate else None)) for t, frame in frames)
    try:
        n, found = _loop(args, rec, results, drawer, parents, save, show,
                         folder=Path(str(args.source)).is_dir())
    except KeyboardInterrupt:  # Ctrl-C ends a camera demo; what was saved stays
        print("d2a-demo: interrupted", file=sys.stderr)
        n = None
    print("d2a-demo: " + (f"{n} frames ({found} with a person), " if n is not None else "")
          + f"backend {rec.backend.name}" + (f", overlays in {save}" if save else ""))
    return 0 if n is not None else 130


def _loop(args, rec, results, drawer, parents, save: Path | None, show: bool,
          folder: bool = False) -> tuple[int, int]:
    """Overlays for each frame of ``results``: shown and/or saved; returns the frame count and
    how many of those frames had a person.
    Saved files are numbered by frame, or for an image ``folder`` by the image's place in it
    (its timestamp), so that an unreadable image leaves a gap instead of shifting the rest."""
    import cv2

    from d2a_edge.imageio import FOLDER_FPS
    from d2a_edge.overlay import write_obj
    fps, last, n, found = None, time.perf_counter(), 0, 0
    for t, frame, people in results:
        k = round(t * FOLDER_FPS) if folder else n  # a folder image's place in the folder
        now = time.perf_counter()
        fps = 1.0 / max(now - last, 1e-6) if fps is None else 0.9 * fps + 0.1 / max(now - last, 1e-6)
        last = now
        K = rec.camera(frame.shape[1], frame.shape[0])
        vis = render(frame, people, K, parents, fps, drawer, 2 * rec.bundle.sigma_reference)
        if save:
            _check_free_space(save, args.keep_free, n)
            path = save / f"frame_{k:06d}.png"
            if not cv2.imwrite(str(path), vis):
                raise OSError(f"could not write {path} (disk full or not writable?)")
            if people and k % args.obj_every == 0:
                write_obj(save / f"mesh_{k:06d}.obj", people[0].vertices, people[0].faces)
        n, found = n + 1, found + bool(people)  # (a frame ended by q was saved too)
        if show:
            cv2.imshow("d2a-demo", vis)
            if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                break
        if args.max_frames and n >= args.max_frames:
            break
    return n, found


def _check_free_space(save: Path, keep_free_mb: float, saved: int) -> None:
    """``OSError`` when the disk holding ``save`` has under ``keep_free_mb`` MB free: a
    camera demo saving every frame (about 1-3 MB) would otherwise fill it."""
    free = shutil.disk_usage(save).free / 1e6
    if free < keep_free_mb:
        raise OSError(f"stopped after saving {saved} frames: {free:.0f} MB left on the disk of "
                      f"{save}, under --keep-free {keep_free_mb:g} MB (what was saved stays; "
                      "--obj-every N, --max-frames N or a folder on a larger disk)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="d2a-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0", help="camera index, video file or image folder")
    p.add_argument("--model", help="bundle directory (default: the bundled edge-s model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--mesh", default="full", choices=MESHES,
                   help="output mesh: full, or the coarse sub-mesh (fewer vertices)")
    p.add_argument("--flip", action="store_true", help="also run the model on each crop's "
                   "mirror image and average (a little more accurate, twice the engine time)")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="CPU threads of the ONNX Runtime engine (default: all cores)")
    p.add_argument("--save", help="write overlays (PNG) and meshes (OBJ) into this folder "
                   "(those of an earlier d2a-demo run there are removed first)")
    p.add_argument("--obj-every", type=at_least(1), default=1, help="write an OBJ every N frames")
    p.add_argument("--keep-free", type=at_least(0), default=500, metavar="MB",
                   help="with --save: stop, with an error, before the disk holding the folder "
                   "has under this many MB free (default 500)")
    p.add_argument("--track", action="store_true", help="video mode: crop from the previous "
                   "frame's mesh, One-Euro smoothing; it locates people itself (the whole "
                   "search on the first frame, then a fifth of it a frame while fewer than "
                   "--people are tracked), so --locate adds nothing to it")
    p.add_argument("--locate", action="store_true", help="find the people in each frame with "
                   "the built-in window search (locate_all); default: the whole frame is one "
                   "person")
    p.add_argument("--people", type=at_least(1), default=1, help="with --track or --locate: "
                   "up to this many people (default 1)")
    p.add_argument("--overlay", default="auto", choices=["auto", "gl", "cv"],
                   help="mesh overlay renderer: OpenGL (moderngl + EGL) when it works, else OpenCV")
    p.add_argument("--no-smoothing", action="store_true")
    p.add_argument("--no-display", action="store_true")
    p.add_argument("--max-frames", type=at_least(0), default=0, help="stop after N frames "
                   "(0: run to the end of the source)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from d2a_edge.backends import BackendUnavailable
    from d2a_edge.bundle import BundleError
    from d2a_edge.imageio import InputError
    try:
        return run(args)
    except (InputError, BundleError, BackendUnavailable, RuntimeError, OSError) as e:
        print(f"d2a-demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # e.g. while the model loads
        print("d2a-demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
