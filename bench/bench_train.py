"""Training throughput (examples/s), achieved FLOP/s against the machine's fp32 matmul rate, peak RSS.

    python bench/bench_train.py --dims 64,128,256 --batch-size 512 --threads 2 [--data-dir DIR] [--set KEY=VALUE ...]

Food-Kitchen (split c2dsr-histories), or synthetic data of the same size when its files are missing.
Each model size runs in its own process (so its peak RSS is its own): the default config at that d,
full-softmax CE, a few warm-up steps, then median seconds per optimizer step over --steps steps.
FLOPs of one step (forward + backward) are counted with torch.utils.flop_counter.FlopCounterMode;
the matmul rate is the median of torch.mm on two --matmul-n square fp32 matrices.
Target (Issue 3 §5): at d=128, batch 512, full softmax, >= 25% of the matmul rate on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch



def matmul_rate(n: int, repeats: int = 5) -> float:
    """fp32 FLOP/s of torch.mm on (n, n) @ (n, n): 2 n^3 FLOPs per product, median of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / _common.median(times)


def one_size(args: argparse.Namespace) -> dict:
    from dpgdiff.config import Config
    from dpgdiff.models import build_model
    from dpgdiff.training import make_optimizer, seed_everything, train_step

    dataset, data_name = _common.load_food_kitchen(args.data_dir)
    overrides = {"model.dim": args.one, "train.batch_size": args.batch_size, "loss.ce_impl": args.ce_impl,
                 "train.device": "cpu", "model.name": args.model}
    config = Config().with_overrides(overrides).with_overrides(args.set)  # --set: e.g. a lever of issue 23
    seed_everything(0)
    model = build_model(config, dataset)
    model.train()
    optimizer = make_optimizer(config, model)
    ex = dataset.training_examples(config.train.mode)
    generator = torch.Generator().manual_seed(0)
    batch = _common.batch_sampler(ex, args.batch_size, seed=0)

    for _ in range(args.warmup):
        train_step(model, optimizer, *batch(), config, generator=generator)
    h, t, d = batch()
    flops = 1e9 * _common.step_gflop(lambda: train_step(model, optimizer, h, t, d, config, generator=generator))
    times = []
    for _ in range(args.steps):
        b = batch()
        start = time.perf_counter()
        train_step(model, optimizer, *b, config, generator=generator)
        times.append(time.perf_counter() - start)
    sec = _common.median(times)
    return {
        "data": data_name, "model": args.model, "dim": args.one, "batch_size": args.batch_size,
        "ce_impl": args.ce_impl, "set": list(args.set), "mode": config.train.mode, "examples_per_epoch": len(ex),
        "params": sum(p.numel() for p in model.parameters()),
        "sec_per_step_median": sec, "sec_per_step_min": min(times), "sec_per_step_all": times,
        "examples_per_s": args.batch_size / sec, "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / sec / 1e9, "peak_rss_mb": _common.peak_rss_mb(),
        "epoch_minutes_est": len(ex) / (args.batch_size / sec) / 60, "load": _common.load(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="64,128,256")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--model", default="dpgdiff", choices=("dpgdiff", "sasrec", "diffurec"))
    p.add_argument("--ce-impl", default="full", choices=("full", "sampled"))
    p.add_argument("--steps", type=int, default=5, help="timed steps per size (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override on top of the default config at each d (repeatable)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # worker mode: one size
    args = p.parse_args()
    _common.set_threads(args.threads)

    if args.one is not None:
        print(json.dumps(one_size(args)))
        return 0

    rate = matmul_rate(args.matmul_n)
    print(f"machine: {_common.machine()}")
    print(f"fp32 matmul rate (torch.mm {args.matmul_n}^2, median of 5): {rate / 1e9:.1f} GFLOP/s")
    rows = []
    for dim in [int(x) for x in args.dims.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(dim), "--batch-size", str(args.batch_size),
               "--model", args.model, "--ce-impl", args.ce_impl, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads)]
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        for kv in args.set:
            cmd += ["--set", kv]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["fraction_of_matmul"] = row["achieved_gflops"] * 1e9 / rate
        best = row["gflop_per_step"] / row["sec_per_step_min"] / (rate / 1e9)  # the fastest step: least contention
        rows.append(row)
        print(f"d={dim:4d}  {row['sec_per_step_median']:7.3f} s/step  {row['examples_per_s']:8.1f} ex/s  "
              f"{row['gflop_per_step']:8.1f} GFLOP/step  {row['achieved_gflops']:7.1f} GFLOP/s "
              f"({100 * row['fraction_of_matmul']:5.1f}% of matmul; fastest step {row['sec_per_step_min']:.3f} s = "
              f"{100 * best:4.1f}%)  peak RSS {row['peak_rss_mb']:7.0f} MB  "
              f"epoch ({row['mode']}, {row['examples_per_epoch']} ex) ~{row['epoch_minutes_est']:.1f} min  "
              f"[{row['data']}; {row['load']}]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": rate / 1e9, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
