"""Seconds for the evaluation protocol itself on Food-Kitchen: candidate drawing, set-up, one popularity pass.

    python bench/bench_evaluation.py [--which test] [--repeats 5] [--threads 2] [--data-dir DIR]

Food-Kitchen (split c2dsr-histories), or synthetic data of the same size when its files are missing.
The popularity scorer returns one broadcast row per domain, so the pass time is the Evaluator's own
ranking cost (1,000 sampled candidates + full ranking); a model's pass adds its scoring time on top.
Prints medians over --repeats runs.
"""

from __future__ import annotations

import argparse

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", default="test", choices=("valid", "test"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-full", action="store_true", help="sampled metrics only")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    _common.set_threads(args.threads)

    import numpy as np

    from dpgdiff.baselines import PopularityScorer
    from dpgdiff.config import EvalConfig
    from dpgdiff.evaluation import Evaluator, draw_candidates

    dataset, data_name = _common.load_food_kitchen(args.data_dir)
    cases = getattr(dataset, args.which)
    config = EvalConfig(full_ranking=not args.no_full)
    print(f"{data_name} {args.which}: {len(cases):,} cases, 1+{config.n_negatives} candidates; {_common.machine()}")

    draw = _common.median_seconds(lambda: draw_candidates(cases, dataset.items, config.n_negatives,
                                                  np.random.default_rng(config.candidate_seed)), args.repeats)
    print(f"draw candidates (no cache)      {draw:7.3f} s")
    Evaluator(dataset, args.which, config)  # writes the cache file if it is not there yet
    setup = _common.median_seconds(lambda: Evaluator(dataset, args.which, config), args.repeats)
    print(f"Evaluator set-up (cached file)  {setup:7.3f} s")
    evaluator = Evaluator(dataset, args.which, config)
    scorer = PopularityScorer(dataset)
    result = evaluator.evaluate(scorer)
    seconds = _common.median_seconds(lambda: evaluator.evaluate(scorer), args.repeats)
    print(f"popularity evaluation pass      {seconds:7.3f} s  ({len(cases) / seconds:,.0f} cases/s; "
          f"full ranking {'off' if args.no_full else 'on'})")
    print(result.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
