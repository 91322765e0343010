"""torch.compile on CPU for a DPG-Diff training step (issue 9 lever): eager against two compiled forms.

    DPGDIFF_DATA_DIR=DIR python bench/bench_compile.py --dim 64 --steps 6

Each form runs in its own process (a fresh Dynamo cache), on the same Food-Kitchen `prefix` batches (numpy
seed 0), default config, full-softmax CE, batch 512:
- eager:  today's code;
- blocks: every self- and cross-attention block compiled (`module.compile(dynamic=True)`: the batches'
          history lengths vary, so static shapes would recompile for each);
- loss:   the whole `model.loss` compiled (dynamic=True).
Prints the seconds spent before the first timed step (compilation + warm-up) and the median s/step.
Compiled dropout draws from Inductor's own random stream, so the losses differ from eager after step 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import _common


def one(form: str, dim: int, steps: int, threads: int, data_dir: str | None) -> dict:
    import torch

    from dpgdiff.config import Config
    from dpgdiff.models import build_model
    from dpgdiff.models.layers import CrossAttentionBlock, SelfAttentionBlock
    from dpgdiff.training import make_optimizer, seed_everything, train_step

    _common.set_threads(threads)
    dataset, _ = _common.load_food_kitchen(data_dir)
    config = Config().with_overrides([f"model.dim={dim}", "train.batch_size=512", "loss.ce_impl=full",
                                      "train.device=cpu"])
    seed_everything(0)
    model = build_model(config, dataset)
    model.train()
    optimizer = make_optimizer(config, model)
    start = time.perf_counter()
    if form == "blocks":
        for m in model.modules():
            if isinstance(m, (SelfAttentionBlock, CrossAttentionBlock)):
                m.compile(dynamic=True)
    elif form == "loss":
        model.loss = torch.compile(model.loss, dynamic=True)
    elif form != "eager":
        raise ValueError(form)
    generator = torch.Generator().manual_seed(0)
    batch = _common.batch_sampler(dataset.training_examples("prefix"), 512, seed=0)
    for _ in range(3):  # compilation happens here (and again for new shapes Dynamo has not seen)
        train_step(model, optimizer, *batch(), config, generator=generator)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(model, optimizer, *batch(), config, generator=generator)
        times.append(time.perf_counter() - t)
    return {"form": form, "startup_s": first, "s_per_step": statistics.median(times), "times": times}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--forms", default="eager,blocks,loss")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dim, args.steps, args.threads, args.data_dir)))
        return 0
    _common.set_threads(args.threads)
    print(f"machine: {_common.machine()}")
    results = []
    for form in args.forms.split(","):
        cmd = [sys.executable, __file__, "--one", form, "--dim", str(args.dim), "--steps", str(args.steps),
               "--threads", str(args.threads), *(["--data-dir", args.data_dir] if args.data_dir else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        r = results[-1]
        print(f"{form:<7s} d={args.dim}  before the first timed step {r['startup_s']:6.1f} s   "
              f"{r['s_per_step']:.3f} s/step (median of {args.steps})  [{_common.load()}]", flush=True)
    eager = next((r for r in results if r["form"] == "eager"), None)
    if eager:
        for r in results:
            if r is not eager:
                print(f"{r['form']}: {eager['s_per_step'] / r['s_per_step']:.2f}x eager's examples/s, "
                      f"+{r['startup_s'] - eager['startup_s']:.0f} s at start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
