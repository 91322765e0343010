"""Issue 40's step-cost rule: one DPG-Diff training step with and without each option, interleaved in one process.

    DPGDIFF_DATA_DIR=DATA python bench/bench_step_options.py --threads 2 --rounds 7 --steps 2

Settings (each its own model and optimizer, built from --config plus its overrides, fed the same batches):
- base:    the config as it is (default: the committed configs/food_kitchen-cpu/dpgdiff.yaml, d = 64, batch 512);
- prefer:  + PreferDiff's preference loss (loss.lambda_prefer=1: one more denoiser pass on the negatives' centroids);
- frozen:  + the item tables frozen (train.freeze_items_epochs: the step of ADRec's alignment stage b). The bench
           freezes them itself with `freeze_item_tables`, as the training loop does in a frozen epoch; the tables'
           values do not change what a step costs, so no train.init_from checkpoint is read;
- --variant LABEL:section.key=value[,...] adds more.
Food-Kitchen (split c2dsr-histories, prefix examples), or a synthetic set of its size when the files are missing.
Medians of --rounds x --steps timed optimizer steps after --warmup untimed ones; the settings alternate within each
round (reversed every other round), so a busy stretch of a shared machine hits them alike. Beside wall time, the
process CPU time per step (all threads; with --threads 1 the step's own work, which waiting for a busy machine's
cores does not inflate). The rule (issue 23): an option may make the step at most 15% slower than base.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch

from dpgdiff.config import Config, parse_assignment
from dpgdiff.models import build_model
from dpgdiff.optim import make_optimizer
from dpgdiff.training.loop import freeze_item_tables, train_step
from dpgdiff.training.reproducibility import runtime_settings, seed_everything

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ("prefer:loss.lambda_prefer=1.0",
                    "frozen:train.init_from=unused-by-the-bench,train.freeze_items_epochs=1")
RULE = 1.15


def parse_variant(text: str) -> tuple[str, dict]:
    """"LABEL:section.key=value,..." -> (LABEL, {section.key: value})."""
    label, sep, rest = text.partition(":")
    items = [kv.strip() for kv in rest.split(",") if kv.strip()]
    if not sep or not label or not items or not all("=" in kv for kv in items):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL:section.key=value[,section.key=value...]")
    return label, dict(parse_assignment(kv, f"--variant {label}") for kv in items)


class Setting:
    """One config's model, optimizer and noise generator; `step` takes one timed optimizer step."""

    def __init__(self, label: str, config: Config, dataset) -> None:
        self.label, self.config, self.times, self.cpu = label, config, [], []
        seed_everything(0)
        self.model = build_model(config, dataset)
        self.model.train()
        if config.train.freeze_items_epochs > 0:
            freeze_item_tables(self.model, True)
        self.optimizer = make_optimizer(config, self.model)
        self.generator = torch.Generator().manual_seed(0)

    def step(self, batch, timed: bool = True) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(self.model, self.optimizer, *batch, self.config, generator=self.generator)
        if timed:
            self.times.append(time.perf_counter() - start)
            self.cpu.append(time.process_time() - start_cpu)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "food_kitchen-cpu" / "dpgdiff.yaml"))
    p.add_argument("--variant", action="append", default=None, type=parse_variant, metavar="LABEL:KEY=VALUE[,...]",
                   help=f"settings beside base (default: {', '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=2, help="timed steps per setting per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--data-dir", default=os.environ.get("DPGDIFF_DATA_DIR"))
    args = p.parse_args()
    _common.set_threads(args.threads)
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]

    dataset, source = _common.load_food_kitchen(args.data_dir)
    base = Config.from_yaml(args.config).with_overrides({"train.batch_size": args.batch_size, "train.device": "cpu"})
    settings = [Setting("base", base, dataset)]
    settings += [Setting(label, base.with_overrides(overrides, f"--variant {label}"), dataset)
                 for label, overrides in variants]
    batch = _common.batch_sampler(dataset.training_examples("prefix"), args.batch_size, seed=0)
    print(f"machine: {_common.machine()}")
    print(f"data: {source}; config: {args.config} (d = {base.model.dim}, batch {args.batch_size})")
    with runtime_settings(base, torch.device("cpu")):
        for _ in range(args.warmup):
            b = batch()
            for s in settings:
                s.step(b, timed=False)
        for r in range(args.rounds):
            batches = [batch() for _ in range(args.steps)]  # every setting steps on the same batches
            for s in settings if r % 2 == 0 else settings[::-1]:
                for b in batches:
                    s.step(b)
    wall, cpu = statistics.median(settings[0].times), statistics.median(settings[0].cpu)
    print(f"{'setting':<10s} {'wall s/step':>11s} {'vs base':>8s} {'CPU s/step':>11s} {'vs base':>8s}  "
          f"(medians of {args.rounds} x {args.steps} steps)")
    for s in settings:
        ratio = statistics.median(s.times) / wall
        cpu_ratio = statistics.median(s.cpu) / cpu
        verdict = "" if s is settings[0] else (
            "  within the 15% rule" if max(ratio, cpu_ratio) <= RULE else "  OVER the 15% rule (wall or CPU)")
        print(f"{s.label:<10s} {statistics.median(s.times):11.3f} {ratio:8.2f} {statistics.median(s.cpu):11.3f} "
              f"{cpu_ratio:8.2f}{verdict}")
    print(f"[{_common.load()}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
