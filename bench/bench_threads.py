"""Threads per trial when trials share the cores: total training throughput of P processes x T threads at once.

    DPGDIFF_DATA_DIR=DIR python bench/bench_threads.py --dims 64,128 --layouts 1x2,2x1,2x2 --rounds 4 --steps 2

A search runs several trials at once on one machine; each trial is a process training its own model.
`tune/search.py` sets `train.num_threads` to `--cpus-per-trial` (1 by default), so that P trials at once
use P x T threads. This bench measures what that choice is worth. For each layout PxT it starts P workers of
`speed_compare.py` (working tree, default config at that d, Food-Kitchen `prefix` examples, full-softmax CE,
batch 512, T intra-op threads and OMP_NUM_THREADS=T), lets them take their warm-up steps, then asks all P at
once for --steps timed steps, --rounds times. Printed per layout: the median s/step of each worker and the
machine's total examples/s (sum over workers of batch / median s/step), also as a ratio to the first
layout. Layouts are run one after the other, so on a shared machine compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from speed_compare import REPO, Worker  # the same worker protocol and step as the side-by-side


def run_layout(dim: int, procs: int, threads: int, args: argparse.Namespace) -> dict:
    worker_args = argparse.Namespace(threads=threads, batch_size=args.batch_size, warmup=args.warmup,
                                     data_dir=args.data_dir, set=args.set)
    workers: list[Worker] = []
    try:
        # started together, so that their data loading and warm-up overlap as trials' would
        workers = [Worker(REPO, args.model, dim, worker_args) for _ in range(procs)]
        for _ in range(args.rounds):
            for w in workers:
                w.start(args.steps)
            for w in workers:
                w.finish()
        medians = [w.median for w in workers]
        return {"dim": dim, "procs": procs, "threads": threads, "s_per_step": medians,
                "examples_per_s": sum(args.batch_size / m for m in medians),
                "cpu_s_per_step": [w.median_cpu for w in workers]}
    finally:
        for w in workers:
            w.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="64,128")
    p.add_argument("--layouts", default="1x2,2x1,2x2", help="PxT: P processes at once, T threads each")
    p.add_argument("--model", default="dpgdiff", choices=["dpgdiff", "sasrec", "sasrec_single", "diffurec"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps per worker per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("DPGDIFF_DATA_DIR"))
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    layouts = []
    for text in args.layouts.split(","):
        try:
            procs, threads = (int(x) for x in text.lower().split("x"))
        except ValueError:
            p.error(f"--layouts: {text!r} is not PxT (for example 2x1)")
        if procs < 1 or threads < 1:
            p.error(f"--layouts: {text!r}: P and T must be >= 1")
        layouts.append((procs, threads))

    import _common  # noqa: F401  (dpgdiff before torch, for the status line below)

    print(f"machine: {os.cpu_count()} logical CPUs, {_common.mkl_amd()}, {_common.load()}; model {args.model}, "
          f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps per worker", flush=True)
    rows = []
    for dim in [int(x) for x in args.dims.split(",")]:
        base = None
        for procs, threads in layouts:
            row = run_layout(dim, procs, threads, args)
            base = base or row["examples_per_s"]
            row["vs_first"] = row["examples_per_s"] / base
            rows.append(row)
            steps = ", ".join(f"{s:.3f}" for s in row["s_per_step"])
            print(f"d={dim:4d}  {procs}x{threads}  s/step per worker [{steps}]  total {row['examples_per_s']:.0f} "
                  f"examples/s  = {row['vs_first']:.2f}x the first layout  [{_common.load()}]", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
