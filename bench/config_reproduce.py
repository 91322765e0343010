"""Does every committed config still give the same validation figure? One epoch of each, before and after a change.

Trains each file under configs/ for one epoch (`python -m dpgdiff train --set train.epochs=1`) on the synthetic
set and, where the data is there, on Food-Kitchen (split c2dsr-histories), and prints the best validation
MRR_X + MRR_Y (4 decimals) and the test MRR sum of each, one line per (config, dataset). `--tree` runs another
checkout's code (e.g. a `git worktree` of the commit before a refactor) on the same files, so that both columns
come from one command:

    git worktree add /tmp/before <commit>
    python bench/config_reproduce.py --tree /tmp/before --out /tmp/repro-before
    python bench/config_reproduce.py --out /tmp/repro-after --compare /tmp/repro-before

--compare reads a previous run's results.json and marks every figure that differs at 4 decimals. Each run's
folder (best.pt, metrics.json) is kept, so that the old checkpoints can be evaluated by the new code:
`--evaluate-from /tmp/repro-before --compare /tmp/repro-before` runs `python -m dpgdiff evaluate` on each best.pt
there and compares its test MRR sum with the one the old code wrote.
Food-Kitchen runs are skipped for files listed in --fk-skip (default: configs/paper.yaml, d = 512, hours an
epoch on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_train(tree: Path, config: Path, dataset: str, out: Path, data_dir: str | None) -> dict:
    """One epoch of `config` on `dataset` with the code of `tree`; -> metrics.json's figures."""
    cmd = [sys.executable, "-m", "dpgdiff", "train", "--config", str(config), "--out", str(out),
           "--set", "train.epochs=1", "--no-progress"]
    if dataset == "food_kitchen":
        cmd += ["--dataset", "food_kitchen", "--split", "c2dsr-histories", "--no-download"]
        if data_dir:
            cmd += ["--data-dir", data_dir]
    else:
        cmd += ["--data-dir", str(out.parent / "synthetic-data")]
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"val": round(metrics["best_val"]["val_mrr_sum"], 4), "test": test_sum(metrics["test"]),
            "seconds": round(time.perf_counter() - start, 1)}


def test_sum(metrics: dict) -> float:
    """MRR_X + MRR_Y (sampled, 4 decimals) of a block of test metrics."""
    return round(metrics["test_x_mrr"] + metrics["test_y_mrr"], 4)


def run_evaluate(tree: Path, run: Path, dataset: str, data_dir: str) -> dict:
    """`python -m dpgdiff evaluate` of an earlier run's best.pt with the code of `tree` -> its test MRR sum."""
    out = run / "re-evaluated.json"
    cmd = [sys.executable, "-m", "dpgdiff", "evaluate", "--checkpoint", str(run / "best.pt"), "--json", str(out),
           "--data-dir", data_dir if dataset == "food_kitchen" else str(run.parent / "synthetic-data")]
    proc = subprocess.run(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return {"test": test_sum(json.loads(out.read_text())[0]["metrics"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="checkout whose code and configs/ run (default: this one)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", nargs="*", help="config files relative to the root (default: all of configs/)")
    parser.add_argument("--datasets", default="synthetic,food_kitchen")
    parser.add_argument("--fk-skip", default="configs/paper.yaml")
    parser.add_argument("--compare", type=Path, help="an earlier --out folder: mark figures that differ")
    parser.add_argument("--evaluate-from", type=Path,
                        help="an earlier --out folder run with --keep: re-evaluate its checkpoints with this code")
    args = parser.parse_args()

    data_dir = os.environ.get("DPGDIFF_DATA_DIR")
    # The files of --tree: a refactor's "before" runs its own code on its own files.
    configs = args.configs or sorted(str(p.relative_to(args.tree)) for p in (args.tree / "configs").rglob("*.yaml"))
    datasets = args.datasets.split(",")
    if "food_kitchen" in datasets and not (data_dir and Path(data_dir, "Food-Kitchen").is_dir()):
        print("Food-Kitchen skipped: DPGDIFF_DATA_DIR does not hold Food-Kitchen/")
        datasets.remove("food_kitchen")
    before = json.loads((args.compare / "results.json").read_text()) if args.compare else {}
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for config in configs:
        for dataset in datasets:
            if dataset == "food_kitchen" and config in args.fk_skip.split(","):
                continue
            key = f"{config} @ {dataset}"
            run = args.out / key.replace("/", "_").replace(" @ ", "__")
            if args.evaluate_from:
                old = args.evaluate_from / run.name
                if not (old / "best.pt").exists():
                    continue
                results[key] = run_evaluate(args.tree, old, dataset, data_dir)
            else:
                results[key] = run_train(args.tree, args.tree / config, dataset, run, data_dir)
            was = before.get(key, {})
            marks = [f"{k} was {was[k]}" for k in ("val", "test") if k in was and k in results[key]
                     and was[k] != results[key][k]]
            print(f"{key:60s} {json.dumps(results[key])}" + (f"   DIFFERS: {', '.join(marks)}" if marks else
                                                            ("   same" if was else "")), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    differing = sum(1 for k, r in results.items() if k in before and
                    any(before[k].get(f) != r.get(f) for f in ("val", "test") if f in r))
    if before:
        print(f"{len(results)} run(s), {differing} differ from {args.compare}")


if __name__ == "__main__":
    main()
