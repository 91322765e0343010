"""Side-by-side training throughput: an old commit against the working tree, in one run, on the same batches.

    DPGDIFF_DATA_DIR=DIR python bench/speed_compare.py --dims 64,128 --rounds 5 --steps 2 [--old 0106d09]

Checks the old commit out into a temporary `git worktree` (removed at the end) and starts one long-lived
worker process per (tree, model) and d, each with PYTHONPATH pointing at its own tree. The workers load
Food-Kitchen (split c2dsr-histories, `prefix` examples), build the default config at that d (full-softmax
CE, batch 512) and take warm-up steps; then the driver asks them in turn, round after round
(old, new, SASRec-new, old, new, ...), for --steps timed optimizer steps each. Only one worker runs at a
time, so on a shared machine the slow stretches hit every variant alike; the figures are medians over
rounds. Timed steps see the same batch sequence in every worker (numpy seed 0). Beside wall time it
prints the process CPU time per step (all threads): with other jobs on the machine it moves less than
wall time at --threads 1, but with 2+ threads it also counts OpenMP threads spinning at barriers.

--variant LABEL:section.key=value[,...] (repeatable) adds a working-tree DPG-Diff worker with those overrides
on top of --set, in the same interleaved rounds: the cost of a lever against the working tree without it
(issue 23's rule: a kept lever may not make the d=64 step more than 15% slower), e.g.
    python bench/speed_compare.py --old HEAD --dims 64 --no-sasrec --variant edm:diffusion.precond=edm \
        --variant terminal:loss.rec_timestep=terminal

Printed per d: median s/step for old and new and their ratio (examples/s new / old), the DPG-Diff /
SASRec step ratio (both working tree) beside the ratio of their FLOPs, GFLOP per step of both trees (they must agree: no work dropped)
and the fraction of the machine's fp32 matmul rate. That fraction depends on the machine (its matmul
rate and memory bandwidth) and on the load; the old/new ratio is the figure that carries across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- worker (runs inside one tree)


def worker(args: argparse.Namespace) -> int:
    """Build one model in the tree on PYTHONPATH, then answer 'steps N' lines with JSON timings."""
    import _common  # imports dpgdiff before torch, as every entry point of the package does
    import torch

    torch.set_num_threads(args.threads)
    import dpgdiff
    from dpgdiff.config import Config
    from dpgdiff.data import load_dataset
    from dpgdiff.models import build_model
    try:  # the working tree (dpgdiff/training/)
        from dpgdiff.training import make_optimizer, seed_everything, train_step
    except ImportError:  # the old commit (dpgdiff/train.py)
        from dpgdiff.train import make_optimizer, seed_everything, train_step

    dataset = load_dataset("food_kitchen", "c2dsr-histories", data_dir=args.data_dir)
    config = Config().with_overrides([f"model.dim={args.dim}", f"train.batch_size={args.batch_size}",
                                      "loss.ce_impl=full", "train.device=cpu", f"model.name={args.model}",
                                      *args.set])
    seed_everything(0)
    model = build_model(config, dataset)
    model.train()
    optimizer = make_optimizer(config, model)
    settings = None
    try:  # the working tree: the run's CPU settings exactly as `dpgdiff.train` enters them
        from dpgdiff.training.reproducibility import runtime_settings

        settings = runtime_settings(config, torch.device("cpu"))
        settings.__enter__()  # held until the worker exits
    except ImportError:  # the old commit set deterministic algorithms only
        torch.use_deterministic_algorithms(True, warn_only=True)
    ex = dataset.training_examples("prefix")
    generator = torch.Generator().manual_seed(0)
    batch = _common.batch_sampler(ex, args.batch_size, seed=0)

    for _ in range(args.warmup):
        train_step(model, optimizer, *batch(), config, generator=generator)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, *batch(), config, generator=generator)
    hello = {"ready": True, "dpgdiff": dpgdiff.__file__, "gflop_per_step": counter.get_total_flops() / 1e9,
             "params": sum(p.numel() for p in model.parameters()), "mkl_amd": _common.mkl_amd()}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times, cpu = [], []
        for _ in range(int(cmd[1])):
            b = batch()
            start, start_cpu = time.perf_counter(), time.process_time()
            train_step(model, optimizer, *b, config, generator=generator)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(json.dumps({"times": times, "cpu": cpu}), flush=True)
    if settings is not None:
        settings.__exit__(None, None, None)
    return 0


# ---------------------------------------------------------------- driver


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"LABEL:section.key=value,section.key=value" -> (LABEL, ["section.key=value", ...])."""
    label, sep, rest = text.partition(":")
    sets = [kv.strip() for kv in rest.split(",") if kv.strip()]
    if not sep or not label or not sets or not all("=" in kv for kv in sets):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL:section.key=value[,section.key=value...]")
    return label, sets


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of torch.mm on (n, n) @ (n, n), median of `repeats` (same as bench_train.py)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


class Worker:
    def __init__(self, tree: Path, model: str, dim: int, args: argparse.Namespace,
                 variant: tuple[str, list[str]] | None = None) -> None:
        self.name = f"{model}@{'old' if tree != REPO else 'new'}" + (f"+{variant[0]}" if variant else "")
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--dim", str(dim), "--model", model,
               "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        for kv in [*args.set, *(variant[1] if variant else [])] if tree == REPO else []:
            cmd += ["--set", kv]
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()
        if not self.hello["dpgdiff"].startswith(str(tree)):
            raise RuntimeError(f"{self.name} imported dpgdiff from {self.hello['dpgdiff']}, not from {tree}")
        self.times: list[float] = []
        self.cpu: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.wait()} (see its stderr above)")
        return json.loads(line)

    def start(self, steps: int) -> None:
        """Ask for `steps` timed steps without waiting (several workers can then run at once)."""
        self.proc.stdin.write(f"steps {steps}\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """Wait for the timings asked for by start()."""
        answer = self._read()
        self.times += answer["times"]
        self.cpu += answer["cpu"]

    def run(self, steps: int) -> None:
        self.start(steps)
        self.finish()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def compare_one_dim(dim: int, old_tree: Path, args: argparse.Namespace, rate: float) -> dict:
    workers = []
    try:
        workers = [Worker(old_tree, "dpgdiff", dim, args), Worker(REPO, "dpgdiff", dim, args)]
        if not args.no_sasrec:
            workers.append(Worker(REPO, "sasrec", dim, args))
        variants = [Worker(REPO, "dpgdiff", dim, args, v) for v in args.variant]
        workers += variants
        for w in workers:
            print(f"  {w.name}: {w.hello.get('mkl_amd', '?')}", flush=True)
        for r in range(args.rounds):
            order = workers if r % 2 == 0 else workers[::-1]  # alternate who goes first
            for w in order:
                w.run(args.steps)
        old, new = workers[0], workers[1]
        row = {"dim": dim, "old_s": old.median, "new_s": new.median, "speedup": old.median / new.median,
               "old_times": old.times, "new_times": new.times,
               "old_cpu_s": old.median_cpu, "new_cpu_s": new.median_cpu, "cpu_speedup": old.median_cpu / new.median_cpu,
               "old_mkl_amd": old.hello["mkl_amd"], "new_mkl_amd": new.hello["mkl_amd"],
               "old_gflop": old.hello["gflop_per_step"], "new_gflop": new.hello["gflop_per_step"],
               "new_fraction_of_matmul": new.hello["gflop_per_step"] * 1e9 / new.median / rate,
               "old_fraction_of_matmul": old.hello["gflop_per_step"] * 1e9 / old.median / rate}
        if not args.no_sasrec:
            sas = workers[2]
            row.update({"sasrec_s": sas.median, "dpgdiff_over_sasrec": new.median / sas.median,
                        "sasrec_gflop": sas.hello["gflop_per_step"],
                        "flop_ratio": new.hello["gflop_per_step"] / sas.hello["gflop_per_step"],
                        "sasrec_times": sas.times})
        row["variants"] = {w.name: {"s": w.median, "over_new": w.median / new.median, "times": w.times,
                                    "gflop": w.hello["gflop_per_step"]} for w in variants}
        return row
    finally:
        for w in workers:
            w.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="0106d09", help="commit to compare against")
    p.add_argument("--dims", default="64,128")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians over all timed steps)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per worker per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=os.environ.get("DPGDIFF_DATA_DIR"))
    p.add_argument("--no-sasrec", action="store_true", help="skip the SASRec step")
    p.add_argument("--set", action="append", default=[], help="config override for the working tree only")
    p.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="LABEL:KEY=VALUE[,...]",
                   help="one more working-tree DPG-Diff worker with these overrides (repeatable)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--model", default="dpgdiff", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import _common  # (dpgdiff before torch: the matmul reference runs on the kernels the new tree gets)
    import torch

    torch.set_num_threads(args.threads)
    rate = matmul_rate()
    print(f"machine: {os.cpu_count()} logical CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"{_common.mkl_amd()} (driver), load avg {os.getloadavg()[0]:.1f}")
    print(f"fp32 matmul rate (torch.mm 2048^2, median of 5): {rate / 1e9:.1f} GFLOP/s "
          f"(depends on the machine and its load)")
    tmp = Path(tempfile.mkdtemp(prefix="dpgdiff-old-"))
    old_tree = tmp / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.old],
                   check=True, capture_output=True)
    rows = []
    try:
        for dim in [int(x) for x in args.dims.split(",")]:
            row = compare_one_dim(dim, old_tree, args, rate)
            rows.append(row)
            line = (f"d={dim:4d}  old {row['old_s']:.3f} s/step  new {row['new_s']:.3f} s/step  "
                    f"speed-up {row['speedup']:.2f}x ({args.rounds} rounds x {args.steps} steps, medians; "
                    f"CPU s/step old {row['old_cpu_s']:.2f} new {row['new_cpu_s']:.2f} = {row['cpu_speedup']:.2f}x)  "
                    f"GFLOP/step old {row['old_gflop']:.1f} new {row['new_gflop']:.1f}  "
                    f"matmul fraction old {100 * row['old_fraction_of_matmul']:.1f}% "
                    f"new {100 * row['new_fraction_of_matmul']:.1f}%")
            if "sasrec_s" in row:
                line += (f"  SASRec {row['sasrec_s']:.3f} s/step, DPG-Diff/SASRec {row['dpgdiff_over_sasrec']:.2f} "
                         f"(in FLOPs: {row['new_gflop']:.1f} / {row['sasrec_gflop']:.1f} GFLOP = {row['flop_ratio']:.2f})")
            print(line + f"  [load avg {os.getloadavg()[0]:.1f}]", flush=True)
            for name, v in row["variants"].items():
                print(f"    {name}: {v['s']:.3f} s/step = {v['over_new']:.3f} x new ({v['gflop']:.1f} GFLOP/step)",
                      flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        try:
            tmp.rmdir()
        except OSError:
            pass
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": rate / 1e9, "old": args.old, "rows": rows}, indent=2))
    ok = all(r["speedup"] >= 2.0 and r.get("dpgdiff_over_sasrec", 0.0) <= 2.5 for r in rows)
    print(f"verdict: {'MET' if ok else 'NOT met'} (speed-up >= 2x at every d; DPG-Diff/SASRec <= 2.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
