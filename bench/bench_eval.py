"""Seconds for one evaluation pass over the Food-Kitchen test cases (sampled + full ranking).

    python bench/bench_eval.py --dim 128 --sampler ddim --infer-steps 4 --threads 2 [--data-dir DIR]

Food-Kitchen (split c2dsr-histories), or synthetic data of the same size when its files are missing.
The model has random weights unless --checkpoint is given (speed does not depend on training).
Candidates are drawn (or loaded) before the clock starts. Target (Issue 3 §5): under 60 s on
2 cores at d=128 with 4 DDIM steps.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--model", default="dpgdiff", choices=("dpgdiff", "sasrec", "diffurec"))
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    p.add_argument("--infer-steps", default="4", help="one K or a comma list")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="passes per K (median reported)")
    p.add_argument("--checkpoint", default=None, help="best.pt to evaluate instead of random weights")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    _common.set_threads(args.threads)

    from dpgdiff.config import Config
    from dpgdiff.evaluation import Evaluator
    from dpgdiff.models import build_model
    from dpgdiff.training import evaluate_model, load_model, seed_everything

    dataset, data_name = _common.load_food_kitchen(args.data_dir)
    if args.checkpoint:
        model, config, _ = load_model(args.checkpoint, dataset)
    else:
        config = Config().with_overrides({"model.dim": args.dim, "model.name": args.model, "train.device": "cpu"})
        seed_everything(0)
        model = build_model(config, dataset).eval()
    evaluator = Evaluator(dataset, "test", config.eval)
    print(f"machine: {_common.machine()}")
    print(f"data: {data_name}, {len(evaluator)} test cases, {config.eval.n_negatives} negatives + full ranking "
          f"(eval.batch_size {config.eval.batch_size}); model {config.model.name} d={config.model.dim}")
    for k in [int(x) for x in args.infer_steps.split(",")]:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            res = evaluate_model(model, dataset, "test", config, sampler=args.sampler, infer_steps=k,
                                 evaluator=evaluator)
            times.append(time.perf_counter() - start)
        sec = _common.median(times)
        print(f"{args.sampler} K={k:3d}: {sec:7.1f} s per pass ({len(evaluator) / sec:7.1f} cases/s), "
              f"MRR_X+MRR_Y {res.mrr_sum:.4f}, peak RSS {_common.peak_rss_mb():.0f} MB, {_common.load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
