"""Latency of `Recommender.recommend` (what `python -m dpgdiff recommend` and the MLflow model run):
ms per request at K = 1, 4 and T reverse steps, for batches of 1 and 256 histories.

    python bench/bench_recommend.py --dim 128 --sampler ddim --threads 2 [--checkpoint best.pt] [--data-dir DIR]

Food-Kitchen test histories (split c2dsr-histories; synthetic data of the same size when its files
are missing), given in the files' global ids, target domain Y, k = 10. One request = one history:
id mapping, model.score over all Y items, history exclusion, top-k, ids mapped back. The model has
random weights unless --checkpoint is given (speed does not depend on training). Median of
--repeats timed calls after one warm-up call per setting.
"""

from __future__ import annotations

import argparse
import time

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    p.add_argument("--infer-steps", default=None, help="comma list of K (default 1,4,T)")
    p.add_argument("--batches", default="1,256", help="comma list of batch sizes (default 1,256)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per setting (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="best.pt to serve instead of random weights")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    _common.set_threads(args.threads)

    from dpgdiff.config import Config
    from dpgdiff.data.ids import ItemIdMap
    from dpgdiff.models import build_model
    from dpgdiff.recommend import Recommender, with_setting
    from dpgdiff.training import resolve_device, seed_everything

    dataset, data_name = _common.load_food_kitchen(args.data_dir)
    ids = ItemIdMap.from_dataset(dataset)
    if args.checkpoint:
        rec = Recommender.load(args.checkpoint, device=args.device, sampler=args.sampler)
    else:
        seed_everything(0)
        config = Config().with_overrides([f"model.dim={args.dim}", f"diffusion.sampler={args.sampler}"])
        model = build_model(config, dataset).to(resolve_device(args.device))
        rec = Recommender(model, config, ids, sampler=args.sampler)
    steps = rec.config.diffusion.steps
    ks = [int(k) for k in args.infer_steps.split(",")] if args.infer_steps else [1, 4, steps]
    batches = [int(b) for b in args.batches.split(",")]
    cases = dataset.test.history[: max(batches)]
    histories = [ids.to_raw(h[h != 0]) for h in cases]  # the files' global ids, oldest first

    print(f"{data_name}: {rec.config.model.name} d={rec.config.model.dim}, T={steps}, sampler {rec.sampler}, "
          f"{ids.n_items_y:,} Y items, k={args.k}, device {rec.device}; {_common.machine()}")
    # Wall time is what a client sees; process CPU time (all threads) varies less on a shared machine.
    print(f"{'K':>4}  {'batch':>5}  {'ms/batch':>9}  {'ms/request':>10}  {'requests/s':>10}  {'CPU ms/request':>14}")
    for k_steps in ks:
        for batch in batches:
            runner = with_setting(rec, infer_steps=k_steps, batch_size=batch)
            chunk = histories[:batch]
            runner.recommend(chunk, "y", args.k)  # warm-up
            times, cpu = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                runner.recommend(chunk, "y", args.k)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            ms, cpu_ms = _common.median(times) * 1000, _common.median(cpu) * 1000
            print(f"{k_steps:>4}  {batch:>5}  {ms:>9.1f}  {ms / batch:>10.2f}  {1000 * batch / ms:>10.0f}  "
                  f"{cpu_ms / batch:>14.2f}", flush=True)
    print(f"({_common.load()} at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
