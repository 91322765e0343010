"""Training cost of the cross-domain baselines at their published settings (issue 39), against the committed SASRec.

    DPGDIFF_DATA_DIR=DIR python bench/bench_baselines.py --rounds 5 --steps 2 [--threads 2] \
        [--config configs/c2dsr.yaml --config configs/abxi.yaml --config configs/food_kitchen-cpu/sasrec.yaml]

Food-Kitchen (split c2dsr-histories, `prefix` examples; a synthetic set of its size when the files are missing).
Each config's model is built in this one process with its own optimiser (make_optimizer) and batch size, and takes
two warm-up steps; then round after round, every model takes --steps timed optimizer steps in turn, so that on a
shared machine the slow stretches hit every model alike. Printed per config: median wall and process-CPU seconds
per step (CPU time moves less than wall time when other jobs take the cores), steps per epoch, the epoch those make
(training only, no validation pass), and the ratio of its step to the first config's, in wall and CPU time.
(No FLOP count: torch's FlopCounterMode counts C2DSR's sparse graph product as a dense n x n one.)
"""

from __future__ import annotations

import argparse
import math
import time

import _common  # first: it imports dpgdiff before torch (the MKL fix for AMD CPUs, dpgdiff/mkl_amd.py)
import torch

DEFAULT_CONFIGS = ("configs/food_kitchen-cpu/sasrec.yaml", "configs/c2dsr.yaml", "configs/abxi.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="config files (default: SASRec's, C2DSR's, ABXI's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    _common.set_threads(args.threads)

    from dpgdiff.config import Config
    from dpgdiff.models import build_model
    from dpgdiff.optim import make_optimizer
    from dpgdiff.training.loop import train_step

    dataset, source = _common.load_food_kitchen(args.data_dir)
    workers = []
    for path in args.config or DEFAULT_CONFIGS:
        config = Config.from_yaml(path)
        torch.manual_seed(0)
        model = build_model(config, dataset).train()
        optimizer = make_optimizer(config, model)
        examples = dataset.training_examples(config.train.mode)
        batch = _common.batch_sampler(examples, config.train.batch_size)
        generator = torch.Generator().manual_seed(0)

        def step(model=model, optimizer=optimizer, batch=batch, config=config, generator=generator):
            train_step(model, optimizer, *batch(), config, generator)

        for _ in range(2):
            step()
        workers.append({"path": path, "config": config, "step": step, "wall": [], "cpu": [],
                        "steps_per_epoch": math.ceil(len(examples) / config.train.batch_size)})
    for _ in range(args.rounds):
        for w in workers:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                w["step"]()
            w["wall"].append((time.perf_counter() - wall) / args.steps)
            w["cpu"].append((time.process_time() - cpu) / args.steps)

    print(f"{source}; {_common.machine()}; {args.rounds} rounds x {args.steps} steps")
    base_wall, base_cpu = _common.median(workers[0]["wall"]), _common.median(workers[0]["cpu"])
    print("| config | model | d | batch | s/step (wall) | CPU s/step | steps/epoch | epoch (wall, training only) | "
          "step / first (wall) | step / first (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in workers:
        c, wall, cpu = w["config"], _common.median(w["wall"]), _common.median(w["cpu"])
        print(f"| {w['path']} | {c.label()} | {c.model.dim} | {c.train.batch_size} | {wall:.3f} | {cpu:.3f} | "
              f"{w['steps_per_epoch']} | {wall * w['steps_per_epoch'] / 60:.1f} min | {wall / base_wall:.2f} | "
              f"{cpu / base_cpu:.2f} |")
    print(f"peak RSS {_common.peak_rss_mb():.0f} MB; {_common.load()}")


if __name__ == "__main__":
    main()
