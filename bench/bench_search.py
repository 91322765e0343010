"""Ray Tune's overhead on short trials: a search's wall time against the summed time of its trials.

    python bench/bench_search.py                  # 8 trials x 2 epochs, smoke space, tiny synthetic data
    python bench/bench_search.py --no-reuse                  # also without actor reuse
    python bench/bench_search.py --users 1000 --epochs 3     # longer trials

For each setting it runs `tune/search.py` (FIFO, so every trial runs all epochs) and reads each
trial's `time_total_s` (time inside the trainable: dataset from the per-process cache, model build,
training, validation, test) from its result.json. With c trials at once the ideal fit time is
sum(trial time) / c; overhead = fit wall / ideal - 1 (target <= 15 %). The driver's fixed start-up
(imports, dataset card, Ray and MLflow start) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_once(trials: int, epochs: int, users: int, concurrency: int, reuse: bool, work: Path) -> dict:
    name = f"bench-u{users}-e{epochs}-c{concurrency}-{'reuse' if reuse else 'noreuse'}"
    data = ["--data-option", f"n_users={users}", "--data-option", "n_items_x=150", "--data-option", "n_items_y=150"]
    cmd = [sys.executable, str(REPO / "tune" / "search.py"), "--space", str(REPO / "search_spaces" / "smoke.yaml"),
           *data, "--epochs", str(epochs), "--num-samples", str(trials), "--max-concurrent", str(concurrency),
           "--scheduler", "fifo", "--name", name, "--storage-path", str(work / "ray_results"),
           "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--quiet", "--set", "model.xt_injection=concat_token"]
    if not reuse:
        cmd.append("--no-reuse-actors")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    total = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"search failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    fit = float(re.search(r"wall time ([0-9.]+) s", proc.stdout).group(1))
    times = []
    for f in sorted((work / "ray_results" / name).glob("trial_*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        times.append(rows[-1]["time_total_s"])
    busy = sum(times)
    ideal = busy / concurrency
    mlflow_s = float(re.search(r"MLflow tracking: ([0-9.]+) s", proc.stdout).group(1))
    return {"setting": f"{users} users, {epochs} epochs; {concurrency} at once, reuse_actors={reuse}",
            "trials": len(times), "total_s": total, "mlflow_s": mlflow_s,
            "fit_s": fit, "trial_sum_s": busy, "ideal_s": ideal, "overhead": fit / ideal - 1,
            "startup_s": total - fit}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--users", type=int, default=300, help="synthetic users (trial length grows with it)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-reuse", action="store_true", help="also measure without actor reuse")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for c in args.concurrency:
            for reuse in ([True, False] if args.no_reuse else [True]):
                rows.append(run_once(args.trials, args.epochs, args.users, c, reuse, Path(tmp)))
                print(f"done: {rows[-1]['setting']}", file=sys.stderr, flush=True)
    print(f"\n{args.trials} trials each (smoke space, synthetic data, FIFO)\n")
    print("| setting | mean trial s | fit wall s | sum of trial s | ideal s | overhead | of it MLflow s "
          "| driver start-up + wrap-up s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['trial_sum_s'] / r['trials']:.1f} | {r['fit_s']:.1f} | {r['trial_sum_s']:.1f} | "
              f"{r['ideal_s']:.1f} | {100 * r['overhead']:.1f} % | {r['mlflow_s']:.1f} | {r['startup_s']:.1f} |")


if __name__ == "__main__":
    main()
