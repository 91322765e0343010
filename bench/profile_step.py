"""Where one training step's CPU time goes: torch.profiler over a few optimizer steps, top ops by self time.

    DPGDIFF_DATA_DIR=DIR python bench/profile_step.py --model dpgdiff --dim 64 --steps 3 [--set KEY=VALUE ...]

Food-Kitchen (split c2dsr-histories, `prefix` examples; synthetic data of the same size when its files
are missing), the default config at that d (full-softmax CE, batch 512), one warm-up step. Prints the
share of self CPU time per op and, from the same number of steps run first without the profiler, the
median wall time, the page faults (minor: memory the kernel maps in and zeroes) and the user / system
CPU time per step. Shares and fault counts, not absolute times, are what carries across machines and loads.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dpgdiff", choices=["dpgdiff", "sasrec", "sasrec_single", "diffurec"])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--shapes", action="store_true", help="one row per op and input shapes (which matmuls cost most)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = p.parse_args()

    from dpgdiff.config import Config
    from dpgdiff.training.reproducibility import runtime_settings

    _common.set_threads(args.threads)
    dataset, source = _common.load_food_kitchen(args.data_dir)
    config = Config().with_overrides([f"model.name={args.model}", f"model.dim={args.dim}",
                                      f"train.batch_size={args.batch_size}", "loss.ce_impl=full",
                                      "train.device=cpu", *args.set])
    with runtime_settings(config, torch.device("cpu")):  # as `dpgdiff.train` runs a step
        return profile(args, config, dataset, source)


def profile(args: argparse.Namespace, config, dataset, source: str) -> int:
    from dpgdiff.models import build_model
    from dpgdiff.training import make_optimizer, seed_everything, train_step

    seed_everything(0)
    model = build_model(config, dataset)
    model.train()
    optimizer = make_optimizer(config, model)
    batch = _common.batch_sampler(dataset.training_examples("prefix"), args.batch_size, seed=0)
    generator = torch.Generator().manual_seed(0)
    train_step(model, optimizer, *batch(), config, generator=generator)  # warm-up

    batches = [batch() for _ in range(args.steps)]
    walls, faults, user, system = [], [], [], []
    for b in batches:  # without the profiler first
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train_step(model, optimizer, *b, config, generator=generator)
        after = resource.getrusage(resource.RUSAGE_SELF)
        walls.append(time.perf_counter() - start)
        faults.append(after.ru_minflt - before.ru_minflt)
        user.append(after.ru_utime - before.ru_utime)
        system.append(after.ru_stime - before.ru_stime)
    med = statistics.median
    print(f"without the profiler: {med(walls):.3f} s/step (median of {len(walls)}), {med(faults):.0f} page faults/step "
          f"({med(faults) * resource.getpagesize() / 1e6:.0f} MB), CPU s/step user {med(user):.3f} system {med(system):.3f}")

    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for b in batches:
            train_step(model, optimizer, *b, config, generator=generator)
    wall = (time.perf_counter() - start) / args.steps

    events = prof.key_averages(group_by_input_shape=args.shapes)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.model} d={args.dim} batch {args.batch_size} on {source}: {wall:.3f} s/step under the "
          f"profiler ({args.steps} steps); {_common.machine()}")
    print(f"{'op':<44} {'self CPU %':>10} {'calls/step':>10}" + ("  input shapes" if args.shapes else ""))
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        shapes = f"  {[s for s in e.input_shapes if s]}" if args.shapes else ""
        flops = matmul_flops(e.key, e.input_shapes) if args.shapes else None
        rate = f"  {flops * e.count / (e.self_cpu_time_total * 1e-6) / 1e9:.0f} GFLOP/s" if flops else ""
        print(f"{e.key[:44]:<44} {100 * e.self_cpu_time_total / total:>9.1f}% {e.count / args.steps:>10.0f}{shapes}{rate}")
    return 0


def matmul_flops(op: str, shapes: list) -> int | None:
    """FLOPs of one mm / addmm / bmm call from its input shapes (None for other ops)."""
    dims = [s for s in shapes if s]
    pair = dims[1:3] if op == "aten::addmm" else dims[:2]  # addmm(bias, a, b); mm(a, b[, out])
    if op in ("aten::mm", "aten::addmm") and len(pair) == 2 and len(pair[0]) == len(pair[1]) == 2:
        (m, k), (_, n) = pair
        return 2 * m * k * n
    if op == "aten::bmm" and len(dims) == 2 and len(dims[0]) == len(dims[1]) == 3:
        (b, m, k), (_, _, n) = dims
        return 2 * b * m * k * n
    return None


if __name__ == "__main__":
    raise SystemExit(main())
