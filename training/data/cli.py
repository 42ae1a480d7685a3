"""``d2a-data``: generate synthetic training shards, or preview them as a contact sheet."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

GENERATE_HELP = """Render N synthetic samples of the Anny body (or --body) into OUT:
  OUT/manifest.json                 config, schema, shard list (JSON)
  OUT/shard_NNNNN/<key>.npy         one .npy per schema key (image, depth, mask, rotmats, betas,
                                    transl, joints3d, kp3d, joints2d, kp2d, verts_coarse, K,
                                    crop_box, img_size); open with np.load(mmap_mode="r") or
                                    d2a_edge.training.data.dataset.ShardDataset(OUT)
Rerunning the same command resumes an interrupted run (finished shards are kept).
Labels follow the sample schema (camera frame: x right, y down, z forward, metres); mask and
depth are the unoccluded body (OOD occluders and blur touch the image only).
--split ood draws sports poses (pitching, kicking, lunges, jumps), extreme angles, motion blur,
occluding boxes, harsh light and high/low cameras. --all-ages needs an all-ages Anny asset
(load_body("anny", all_ages=True), built on first use)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2a-data", description="Synthetic data engine for d2a-edge.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="render shards into --out",
                       description=GENERATE_HELP, formatter_class=argparse.RawTextHelpFormatter)
    g.add_argument("--split", choices=("id", "ood"), default="id")
    g.add_argument("--num", type=int, required=True, help="number of samples")
    g.add_argument("--size", type=int, default=192, help="crop size s in pixels (default 192)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output directory (created)")
    g.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="render processes, one EGL context each (default: all cores); the "
                        "samples do not depend on it")
    g.add_argument("--backgrounds", default=None, help="folder of background images (optional)")
    g.add_argument("--body", default="anny", help="'anny' or a body asset .npz")
    g.add_argument("--all-ages", action="store_true", help="sample all ages (Anny all-ages asset)")
    v = sub.add_parser("preview", help="write a contact-sheet PNG of a dataset",
                       description="Write the first --num samples of DIR as a PNG: per sample "
                                   "RGB | depth | mask | 2D keypoint skeleton.")
    v.add_argument("dir", help="dataset directory written by `d2a-data generate`")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--num", type=int, default=16, help="samples to show (default 16)")
    return p


def _generate(args) -> None:
    from tqdm import tqdm

    from d2a_edge.training.data.shards import GenerateConfig, generate

    cfg = GenerateConfig(split=args.split, num=args.num, out=args.out, size=args.size,
                         seed=args.seed, shard_size=args.shard_size, workers=args.workers,
                         backgrounds=args.backgrounds, body=args.body, all_ages=args.all_ages)
    t0 = time.perf_counter()
    with tqdm(total=cfg.num, unit="sample", desc=f"d2a-data {cfg.split}") as bar:
        man = generate(cfg, on_shard=lambda e: bar.update(e["count"]))
    dt = time.perf_counter() - t0
    print(f"wrote {cfg.num} {cfg.split} samples in {len(man['shards'])} shards to {cfg.out} "
          f"({dt:.1f} s)")


def _preview(args) -> None:
    from d2a_edge.training.data.preview import write_contact_sheet
    from d2a_edge.training.data.shards import ShardReader

    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
        raise ValueError(f"--out {args.out} must end in .png (or .jpg, .bmp, .webp)")
    path = write_contact_sheet(ShardReader(args.dir), args.out, args.num)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        (_generate if args.command == "generate" else _preview)(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"d2a-data {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
