"""Popularity and random baselines on a dataset's test cases (the reference rows of BENCHMARKS.md).

    python bench/eval_baselines.py --dataset food_kitchen --split c2dsr-histories [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="food_kitchen")
    p.add_argument("--split", default="c2dsr-histories")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--which", default="test", choices=("test", "valid"))
    args = p.parse_args()

    from dpgdiff.baselines import PopularityScorer, RandomScorer
    from dpgdiff.config import Config
    from dpgdiff.data import load_dataset
    from dpgdiff.evaluation import Evaluator

    dataset = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    evaluator = Evaluator(dataset, args.which, Config().eval)
    for name, scorer in (("popularity", PopularityScorer(dataset)), ("random", RandomScorer(0).bind(dataset))):
        print(f"== {name}")
        print(evaluator.evaluate(scorer).table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
