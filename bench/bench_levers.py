"""Micro-benchmarks of single speed levers of issue 9, each old form against new form, interleaved.

    python bench/bench_levers.py --threads 2 --rounds 7

- ce:   full-softmax CE forward + backward over (rows, items) logits: h @ E^T + F.cross_entropy (the code
        of commit 0106d09) against SoftmaxCrossEntropy (loss.ce_impl=full) and its chunked form.
        Food-Kitchen-like sizes: 512 rows, 32,000 items, d from --dim.
- dropout: forward + backward of the step's dropouts at d=64 (B=512, L=20: activations (B, L, d) and attention
        weights (B, 4, L, L)): F.dropout (a `bernoulli_` draw per entry) against dpgdiff.models.layers.dropout
        (four entries per 64-bit draw).
- adam: one Adam step on DPG-Diff-like parameters (two item tables of 30,000 and 35,000 rows plus 90
        small matrices): the for-loop implementation (default on CPU) against fused=True.
Medians over --rounds; the forms alternate within each round, so machine load hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch
import torch.nn.functional as F

from dpgdiff.models.layers import dropout
from dpgdiff.models.losses import softmax_cross_entropy


def interleave(fns: dict, rounds: int) -> dict[str, float]:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_ce(dim: int, rounds: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    n, v = 512, 32000
    h0, t0 = torch.randn(n, dim, generator=g) * 0.3, torch.randn(v, dim, generator=g) * 0.1
    target = torch.randint(0, v, (n,), generator=g)

    def run(form):
        h, t = h0.clone().requires_grad_(), t0.clone().requires_grad_()
        if form == "old":
            loss = F.cross_entropy(h @ t.t(), target, reduction="none")
        else:
            loss = softmax_cross_entropy(h, t, target, None if form == "full" else 128)
        loss.sum().backward()

    return interleave({f"ce {k}": (lambda k=k: run(k)) for k in ("old", "full", "chunked")}, rounds)


def bench_dropout(rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    inputs = [torch.randn(512, 20, 64, requires_grad=True) for _ in range(24)]
    inputs += [torch.randn(512, 4, 20, 20, requires_grad=True) for _ in range(9)]  # 33 dropouts, as in a step

    def run(fn):
        def step():
            sum(fn(x, 0.1, True).sum() for x in inputs).backward()
        return step

    return interleave({"dropout F": run(F.dropout), "dropout 4/draw": run(dropout)}, rounds)


def bench_adam(rounds: int) -> dict[str, float]:
    def params():
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(30000, 64)), torch.nn.Parameter(torch.randn(35000, 64))]
        ps += [torch.nn.Parameter(torch.randn(64, 256)) for _ in range(90)]
        for p in ps:
            p.grad = torch.randn_like(p)
        return ps

    loop = torch.optim.Adam(params(), lr=1e-3)
    fused = torch.optim.Adam(params(), lr=1e-3, fused=True)
    return interleave({"adam for-loop": loop.step, "adam fused": fused.step}, rounds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--dim", type=int, default=64)
    args = p.parse_args()
    _common.set_threads(args.threads)
    print(f"machine: {_common.machine()}")
    for name, sec in {**bench_ce(args.dim, args.rounds), **bench_dropout(args.rounds), **bench_adam(args.rounds)}.items():
        print(f"{name:<16s} {1000 * sec:8.1f} ms (median of {args.rounds})")
    print(f"[{_common.load()}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
