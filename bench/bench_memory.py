"""Peak RSS of training at Movie-Book scale: ~100k items, 60k sequences, d=512 (Issue 3 §5: <= 6 GB).

    python bench/bench_memory.py --steps 20 --threads 2 [--ce-impl chunked]

Synthetic data with Movie-Book's item counts (36,845 + 63,937) and 60,000 training sequences; the
default config at d=512, batch 512, full-softmax CE (--ce-impl). It trains a bounded slice of an epoch (--steps
optimizer steps; Adam's state exists after the first, so the peak is reached early) and then runs
one validation pass over --eval-cases cases (sampled + full ranking). Peak RSS is read with
resource.getrusage after each stage.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch


# Movie-Book item counts; synthetic users have 1-3 training sequences (2 on average) -> ~60k sequences.
MOVIE_BOOK_SIZED = {"n_items_x": 36845, "n_items_y": 63937, "n_users": 30000}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-cases", type=int, default=2048, help="validation cases to score (0 = skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-gb", type=float, default=6.0)
    p.add_argument("--ce-impl", default="full", choices=("full", "chunked", "sampled"),
                   help="loss.ce_impl (chunked: at most loss.ce_chunk_rows rows of logits at a time)")
    args = p.parse_args()
    _common.set_threads(args.threads)

    from dpgdiff.config import Config
    from dpgdiff.data import load_dataset
    from dpgdiff.models import build_model
    from dpgdiff.models.losses import LOGITS
    from dpgdiff.training import make_optimizer, make_scorer, seed_everything, train_step
    from dpgdiff.training.reproducibility import runtime_settings

    stages = []

    def stage(name: str) -> None:
        stages.append((name, _common.peak_rss_mb()))
        print(f"{name:<40s} peak RSS {stages[-1][1]:8.0f} MB", flush=True)

    print(f"machine: {_common.machine()}")
    stage("start")
    dataset = load_dataset("synthetic", **MOVIE_BOOK_SIZED)
    ex = dataset.training_examples("prefix")
    stage(f"dataset ({len(dataset.train_sequences)} seq, {len(ex)} prefix ex)")
    config = Config().with_overrides({"model.dim": args.dim, "train.batch_size": args.batch_size,
                                      "loss.ce_impl": args.ce_impl, "train.device": "cpu"})
    seed_everything(0)
    model = build_model(config, dataset)
    optimizer = make_optimizer(config, model)
    stage(f"model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params)")
    with runtime_settings(config, torch.device("cpu")):  # as `dpgdiff.train` runs (allocator, threads)
        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for step in range(args.steps):
            idx = rng.choice(len(ex), size=args.batch_size, replace=False)
            train_step(model, optimizer, torch.from_numpy(ex.history[idx]), torch.from_numpy(ex.target[idx]),
                       torch.from_numpy(ex.target_domain[idx].astype(np.int64)), config, generator=gen)
        sec = (time.perf_counter() - start) / max(args.steps, 1)
        stage(f"{args.steps} training steps ({sec:.1f} s/step)")
        LOGITS.clear()  # as the training loop does before validating
        if args.eval_cases:
            model.eval()
            scorer = make_scorer(model, torch.device("cpu"), sampler="ddim", infer_steps=4, seed=0)
            with torch.no_grad():
                h = torch.from_numpy(dataset.valid.history[: args.eval_cases])
                for lo in range(0, len(h), config.eval.batch_size):
                    scorer(h[lo:lo + config.eval.batch_size], 1)  # Y: the larger domain
            stage(f"scoring {args.eval_cases} cases (4 DDIM steps)")
    peak_gb = max(mb for _, mb in stages) / 1024
    verdict = "within" if peak_gb <= args.limit_gb else "OVER"
    print(f"peak RSS {peak_gb:.2f} GB: {verdict} the {args.limit_gb:g} GB target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
