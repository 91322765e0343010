"""Share of Tri-CL augmented views equal to the input, per op, on Food-Kitchen prefix examples (issue #8 §4).

    DPGDIFF_DATA_DIR=DATA python bench/augment_unchanged.py
"""

from __future__ import annotations

import argparse
import os

import dpgdiff  # noqa: F401  (before torch: the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch

from dpgdiff.config import AugmentConfig
from dpgdiff.data import load_dataset
from dpgdiff.models.augmentations import Augmenter, item_similarity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DPGDIFF_DATA_DIR"))
    parser.add_argument("--mode", default="prefix", choices=("prefix", "last"))
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("give --data-dir or set DPGDIFF_DATA_DIR (the folder holding Food-Kitchen/)")
    ds = load_dataset("food_kitchen", split="c2dsr-histories", data_dir=args.data_dir, download=False)
    rows = torch.as_tensor(ds.training_examples(args.mode).history)
    valid = rows != 0
    n = valid.sum(1)
    print(f"{len(rows)} {args.mode} examples, median length {float(n.float().median()):.0f}, "
          f"length-1 share {float((n == 1).float().mean()):.3f}")
    aug = Augmenter(ds.items, AugmentConfig(), item_similarity(ds.train_sequences, ds.items))
    for name in ("crop", "mask", "reorder", "substitute", "insert"):
        out = getattr(aug, name)(rows, valid, n, torch.Generator().manual_seed(0))
        print(f"{name:10s} unchanged {float((out == rows).all(1).float().mean()):.3f}")
    out = aug(rows, torch.Generator().manual_seed(0))
    print(f"{'mixed':10s} unchanged {float((out == rows).all(1).float().mean()):.3f}")


if __name__ == "__main__":
    main()
