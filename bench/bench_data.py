"""Seconds to load data: Food-Kitchen (c2dsr-histories) and Movie-Book-sized synthetic data.

    python bench/bench_data.py [--data-dir DIR] [--users 20000] [--keep DIR]

Targets (Issue 2): Food-Kitchen c2dsr-histories loads in a few seconds; synthetic data of Movie-Book
size (about 100k items, 60k sequences) is generated in well under a minute, and its prefix-mode
training examples build in seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dpgdiff.data import DataError, load_dataset


def timed(label: str, fn):
    start = time.perf_counter()
    value = fn()
    print(f"{label:<55} {time.perf_counter() - start:7.2f} s")
    return value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding Food-Kitchen/ (default: env DPGDIFF_DATA_DIR)")
    p.add_argument("--users", type=int, default=20_000, help="synthetic users (3 sequences each on average)")
    p.add_argument("--keep", default=None, help="write the synthetic files here instead of a temp folder")
    args = p.parse_args()

    try:
        ds = timed("food_kitchen c2dsr-histories: load", lambda: load_dataset(
            "food_kitchen", "c2dsr-histories", data_dir=args.data_dir, download=False))
        timed("food_kitchen: training examples (prefix + last) + card", ds.card)
    except DataError as exc:
        print(f"food_kitchen skipped: {exc}")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        size = dict(n_users=args.users, n_items_x=36_845, n_items_y=63_937)
        ds = timed(f"synthetic {args.users:,} users, 36,845 + 63,937 items: generate + load",
                   lambda: load_dataset("synthetic", data_dir=root, **size))
        timed("synthetic: reload from the cached files", lambda: load_dataset("synthetic", data_dir=root, **size))
        ex = timed("synthetic: prefix training examples", lambda: ds.training_examples("prefix"))
        print(f"  {len(ds.train_sequences):,} training sequences, {len(ex):,} prefix examples, "
              f"{len(ds.valid) + len(ds.test):,} evaluation cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
