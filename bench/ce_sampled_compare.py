"""Side by side: training step time with the full softmax against `loss.ce_impl=sampled` (issue 26).

    DPGDIFF_DATA_DIR=DIR python bench/ce_sampled_compare.py --models dpgdiff,sasrec --dims 64,128 \\
        --sources uniform,popularity,mixed --negatives 512,1024,4096 --rounds 5 --steps 2 [--threads 2]

For each (model, d), one variant per setting: `full`, and `sampled` for every negative source x N. Each
variant is its own model (the default config at that d, batch 512, `prefix` examples of Food-Kitchen split
c2dsr-histories, or synthetic data of the same size when its files are missing), built from the same seed
and fed the same batch sequence, all in this one process under the CPU settings of a training run
(`runtime_settings`). After --warmup steps each, the variants take --steps timed optimizer steps in turn,
round after round, the order reversed every other round, so that whatever else loads the machine falls on
every variant alike; the figures are medians over all timed steps. Beside wall time, the process CPU time
per step (all threads): on a loaded machine it moves less than wall time at --threads 1, but with 2+ threads
it also counts OpenMP threads spinning at barriers (as in bench/speed_compare.py). For DPG-Diff a reference variant without
L_rec (loss.lambda_rec=0: no CE at all) bounds what any CE can gain. Printed per variant: median s/step,
the speed-up (full's median / the variant's), the same for CPU time, and GFLOP per step (FlopCounterMode, one step); with the
CPU model (lscpu) and the load average, which say how far the figures carry.
Target (issue 26): DPG-Diff at d = 64 with the chosen sampled setting >= 1.7x faster than `full`.

--variant times any other setting the same way, against the same `full` (issue 23: a lever that is kept may not make
DPG-Diff's step more than 15% slower at d = 64); --sources '' leaves the sampled settings out:

    python bench/ce_sampled_compare.py --models dpgdiff --dims 64 --sources '' --no-ceiling \
        --variant edm:diffusion.precond=edm --variant mix:loss.lambda_mix=1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch

TARGET = 1.7  # issue 26: DPG-Diff at d = 64, sampled vs full


@dataclass
class Variant:
    """One setting of one (model, d): its own model, optimizer, generator and batch stream."""

    name: str
    overrides: dict
    step: object = None
    gflop: float = 0.0
    times: list = field(default_factory=list)
    cpu: list = field(default_factory=list)  # process CPU seconds per step (all threads)

    @property
    def median(self) -> float:
        return _common.median(self.times)

    @property
    def median_cpu(self) -> float:
        return _common.median(self.cpu)


def variants_for(model_name: str, args: argparse.Namespace) -> list[Variant]:
    out = [Variant("full", {"loss.ce_impl": "full"})]
    if model_name == "dpgdiff" and not args.no_ceiling:
        # The same step without L_rec: no CE at all, so full / this is the most that any CE can gain.
        out.append(Variant("no CE (ceiling)", {"loss.ce_impl": "full", "loss.lambda_rec": 0.0}))
    for source in filter(None, args.sources.split(",")):
        for n in (int(x) for x in args.negatives.split(",")):
            out.append(Variant(f"{source} N={n}", {"loss.ce_impl": "sampled", "loss.ce_negative_source": source,
                                                   "loss.ce_negatives": n}))
    for label, overrides in args.variant:
        out.append(Variant(label, overrides))
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    """'LABEL:KEY=VALUE[,KEY=VALUE...]' -> (label, overrides); values are parsed as YAML, as by --set."""
    from dpgdiff.config import parse_assignment

    label, sep, assignments = text.partition(":")
    if not sep or not label or not assignments:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected LABEL:SECTION.KEY=VALUE[,SECTION.KEY=VALUE]")
    try:
        return label, dict(parse_assignment(a, "--variant") for a in assignments.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build(variant: Variant, model_name: str, dim: int, dataset, args: argparse.Namespace) -> None:
    """Give `variant` a step() closure over its own model and batch stream; count its FLOPs once."""
    from dpgdiff.config import Config
    from dpgdiff.models import build_model
    from dpgdiff.training import make_optimizer, seed_everything, train_step

    config = Config().with_overrides({"model.name": model_name, "model.dim": dim, "train.batch_size": args.batch_size,
                                      "train.device": "cpu", **variant.overrides})
    seed_everything(0)
    model = build_model(config, dataset).train()
    optimizer = make_optimizer(config, model)
    generator = torch.Generator().manual_seed(0)
    batch = _common.batch_sampler(dataset.training_examples("prefix"), args.batch_size, seed=0)

    def step() -> None:
        train_step(model, optimizer, *batch(), config, generator=generator)

    for _ in range(args.warmup):
        step()
    variant.gflop = _common.step_gflop(step)
    variant.step = step


def compare(model_name: str, dim: int, dataset, args: argparse.Namespace) -> list[Variant]:
    """Interleaved rounds over every variant of (model, d); returns them with their timings."""
    variants = variants_for(model_name, args)
    for v in variants:
        build(v, model_name, dim, dataset, args)
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            for _ in range(args.steps):
                start, start_cpu = time.perf_counter(), time.process_time()
                v.step()
                v.times.append(time.perf_counter() - start)
                v.cpu.append(time.process_time() - start_cpu)
    return variants


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="dpgdiff,sasrec")
    p.add_argument("--dims", default="64,128")
    p.add_argument("--sources", default="uniform,popularity,mixed")
    p.add_argument("--negatives", default="512,1024,4096")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians over all timed steps)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=os.environ.get("DPGDIFF_DATA_DIR"))
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip DPG-Diff's reference variant without L_rec (the speed-up ceiling of any CE)")
    p.add_argument("--variant", type=parse_variant, action="append", default=[],
                   metavar="LABEL:SECTION.KEY=VALUE[,...]", help="another setting to time against full (repeatable)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    _common.set_threads(args.threads)

    from dpgdiff.config import Config
    from dpgdiff.training.reproducibility import runtime_settings

    print(f"CPU: {_common.cpu_model()} (lscpu); {os.cpu_count()} logical CPUs visible, torch {torch.__version__}, "
          f"{args.threads} threads, {_common.mkl_amd()}; {_common.load()} at the start", flush=True)
    dataset, data_name = _common.load_food_kitchen(args.data_dir)
    print(f"data: {data_name}, {len(dataset.training_examples('prefix'))} prefix examples, "
          f"{dataset.items.n_items_x} + {dataset.items.n_items_y} items; batch {args.batch_size}; "
          f"{args.rounds} rounds x {args.steps} steps per variant, interleaved", flush=True)
    rows = []
    with runtime_settings(Config().with_overrides({"train.num_threads": args.threads}), torch.device("cpu")):
        for model_name in args.models.split(","):
            for dim in (int(x) for x in args.dims.split(",")):
                variants = compare(model_name, dim, dataset, args)
                full = variants[0]
                print(f"\n{model_name} d={dim}  [{_common.load()} after]", flush=True)
                print(f"  {'setting':<18} {'s/step':>8} {'speed-up':>9} {'CPU s/step':>11} {'CPU speed-up':>13} "
                      f"{'GFLOP/step':>11}")
                for v in variants:
                    ratio, cpu_ratio = full.median / v.median, full.median_cpu / v.median_cpu
                    print(f"  {v.name:<18} {v.median:8.3f} {ratio:8.2f}x {v.median_cpu:11.3f} {cpu_ratio:12.2f}x "
                          f"{v.gflop:11.1f}", flush=True)
                    rows.append({"model": model_name, "dim": dim, "setting": v.name, "overrides": v.overrides,
                                 "s_per_step": v.median, "speedup_vs_full": ratio, "cpu_s_per_step": v.median_cpu,
                                 "cpu_speedup_vs_full": cpu_ratio, "gflop_per_step": v.gflop,
                                 "times": v.times, "cpu_times": v.cpu})
    best = [r for r in rows
            if r["model"] == "dpgdiff" and r["dim"] == 64 and r["overrides"].get("loss.ce_impl") == "sampled"]
    if best:
        top = max(best, key=lambda r: r["speedup_vs_full"])
        verdict = "MET" if top["speedup_vs_full"] >= TARGET else "NOT met"
        print(f"\nverdict: {verdict} (DPG-Diff d=64: best sampled setting {top['setting']} "
              f"{top['speedup_vs_full']:.2f}x vs full; target >= {TARGET}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": _common.cpu_model(), "data": data_name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
