"""A sparser copy of a C2DSR-format pair: keep a random fraction of its users, every item stays in the vocabulary.

Issue 10 checks the committed configurations on a held-out pair with about 1.3 training interactions per item;
Food-Kitchen's `c2dsr-histories` split has 2.29. Keeping 57% of Food-Kitchen's users gives a pair of that
sparsity to try configurations on (a proxy: its item and popularity structure is still Food-Kitchen's).

    python bench/sparse_pair.py --source $DPGDIFF_DATA_DIR/Food-Kitchen --keep 0.57 --out /tmp/sparse/Food-Kitchen
    python -m dpgdiff train --dataset food_kitchen --data-dir /tmp/sparse --split c2dsr-histories --config ...

Users are kept by a seeded draw, with their validation or test line (each user has exactly one of the two,
data/README.md); Alist, Blist and userlist are copied as they are, so item and user ids do not change.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

COPIED = ("Alist.txt", "Blist.txt", "userlist.txt")
SUBSAMPLED = ("validdata_new.txt", "testdata_new.txt")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, type=Path, help="a C2DSR folder, e.g. .../Food-Kitchen")
    p.add_argument("--keep", type=float, default=0.57, help="fraction of users kept (default 0.57)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="the new folder (its name must be the pair's, "
                   "e.g. Food-Kitchen, so that --dataset food_kitchen --data-dir PARENT finds it)")
    args = p.parse_args()
    if not 0 < args.keep <= 1:
        p.error(f"--keep: expected a fraction in (0, 1], got {args.keep}")
    missing = [name for name in COPIED + SUBSAMPLED if not (args.source / name).is_file()]
    if missing:
        p.error(f"--source {args.source}: missing {', '.join(missing)}")

    n_users = sum(1 for _ in (args.source / "userlist.txt").open())
    kept = set(random.Random(args.seed).sample(range(n_users), round(args.keep * n_users)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}.tmp-"))
    interactions = 0
    for name in COPIED:
        shutil.copyfile(args.source / name, staging / name)
    for name in SUBSAMPLED:
        with (args.source / name).open() as src, (staging / name).open("w") as dst:
            for lineno, line in enumerate(src, 1):
                fields = line.rstrip("\n").split("\t")
                try:
                    user = int(fields[0])
                except ValueError:
                    sys.exit(f"{args.source / name}:{lineno}: expected a user index first, got {fields[0]!r}")
                if user in kept:
                    dst.write(line)
                    interactions += len([f for f in fields[2:] if f]) - 1  # the history; the target is held out
    n_items = sum(sum(1 for _ in (args.source / name).open()) for name in ("Alist.txt", "Blist.txt"))
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    print(f"{args.out}: {len(kept):,} of {n_users:,} users; {interactions:,} history interactions over "
          f"{n_items:,} items = {interactions / n_items:.2f} per item (c2dsr-histories trains on the histories)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
