"""Accuracy after a short budget as a function of the item-table init scale (model.item_init_std).

Trains DPG-Diff (and SASRec for reference) on a synthetic set where popularity carries no signal
(flat popularity, no noise clicks) and prints validation MRR_X+MRR_Y per epoch and the test value,
next to the popularity baseline. Used to choose the default of model.item_init_std.

    python bench/init_scale.py                       # stds 1.0 and 0.1, 5 epochs
    python bench/init_scale.py --stds 1.0,0.3,0.1,0.02 --epochs 5
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import machine, set_threads

from dpgdiff import Config, train
from dpgdiff.baselines import PopularityScorer
from dpgdiff.data import load_dataset
from dpgdiff.evaluation import Evaluator

LEARNABLE = dict(n_users=1000, n_items_x=300, n_items_y=300, zipf=0.0, noise=0.0, seed=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stds", default="1.0,0.1")
    parser.add_argument("--models", default="dpgdiff,sasrec")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    print(machine())

    with tempfile.TemporaryDirectory() as data_dir:
        dataset = load_dataset("synthetic", data_dir=data_dir, **LEARNABLE)
        base = Config().with_overrides({
            "model.dim": 32, "model.n_c_layers": 1, "train.epochs": args.epochs, "train.lr": 3e-3,
            "train.batch_size": 128, "train.mode": "prefix", "train.patience": 0, "train.device": "cpu",
            "diffusion.sampler": "ddim", "diffusion.infer_steps": 4, "eval.n_negatives": 99,
        })
        popularity = Evaluator(dataset, "test", base.eval).evaluate(PopularityScorer(dataset))
        print(f"popularity: test MRR_X+MRR_Y {popularity.mrr_sum:.4f}")
        print("| model | item_init_std | val MRR sum per epoch | test MRR sum | seconds |")
        print("|---|---:|---|---:|---:|")
        for model in args.models.split(","):
            for std in (float(s) for s in args.stds.split(",")):
                config = base.with_overrides({"model.name": model, "model.item_init_std": std})
                start = time.perf_counter()
                result = train(config, dataset)
                curve = ", ".join(f"{h['val_mrr_sum']:.3f}" for h in result.history)
                print(f"| {model} | {std} | {curve} | {result.test['test_mrr_sum']:.4f} | "
                      f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
