"""Write a random NYUv2 fixture in MTAN's .npy layout, for measuring step time and memory of
the paper's model (``run_bench.py perf -b nyuv2 --data-root DIR --profile paper``) without
the real data.

Layout (as benchmarks/nyuv2.py reads it): DIR/{train,val}/{image,label,depth,normal}/{i}.npy,
HWC arrays at 288x384: image float32 in [0, 1), label 13 classes with -1 ignored, depth
in [0, 5) with some missing (0) pixels, normal unit vectors. The values are random, so
only costs (not metrics) mean anything.

    python benchmarks/scripts/nyuv2_fixture.py /tmp/nyuv2_fixture --train 24 --val 4
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HEIGHT, WIDTH, CLASSES = 288, 384, 13


def write(root: Path, train: int, val: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for kind in ("image", "label", "depth", "normal"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            np.save(root / split / "image" / f"{i}.npy",
                    rng.random((HEIGHT, WIDTH, 3), dtype=np.float32))
            label = rng.integers(-1, CLASSES, (HEIGHT, WIDTH)).astype(np.float32)
            np.save(root / split / "label" / f"{i}.npy", label)
            depth = (rng.random((HEIGHT, WIDTH, 1)) * 5).astype(np.float32)
            depth[:8] = 0  # missing depth, as in the real maps
            np.save(root / split / "depth" / f"{i}.npy", depth)
            normal = rng.normal(size=(HEIGHT, WIDTH, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            np.save(root / split / "normal" / f"{i}.npy", normal.astype(np.float32))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write (created)")
    parser.add_argument("--train", type=int, default=24, help="training images (default 24)")
    parser.add_argument("--val", type=int, default=4, help="test-folder images (default 4)")
    args = parser.parse_args()
    print(write(args.root, args.train, args.val))


if __name__ == "__main__":
    main()
