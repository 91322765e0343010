"""What saving Tune's experiment state whenever a trial is added costs (issue 11 §1).

    python bench/bench_snapshots.py                   # 16 trials x 1 epoch, smoke space, tiny synthetic data
    python bench/bench_snapshots.py --trials 64

Runs one search in this process (tune.search.main) with Tune's experiment-state save timed: how many saves,
how many forced (tune/ray_internals.py's schedulers force one per added trial), the seconds they took on the
driver, and the search's wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()

    from ray.tune.execution import experiment_state

    from tune.search import main as search

    saves: list[tuple[bool, float]] = []
    original = experiment_state._ExperimentCheckpointManager.sync_up_experiment_state

    def timed(self, save_fn, force=False, wait=False):
        forced = force or self._should_force_sync_up
        before = self._last_save_time
        t0 = time.perf_counter()
        result = original(self, save_fn, force=force, wait=wait)
        if self._last_save_time != before:  # it saved (not throttled)
            saves.append((forced, time.perf_counter() - t0))
        return result

    experiment_state._ExperimentCheckpointManager.sync_up_experiment_state = timed
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--space", str(REPO / "search_spaces" / "smoke.yaml"), "--data-option", "n_users=300",
                "--data-option", "n_items_x=150", "--data-option", "n_items_y=150", "--epochs", str(args.epochs),
                "--num-samples", str(args.trials), "--scheduler", "fifo", "--name", "bench-snapshots",
                "--storage-path", f"{tmp}/ray_results", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--quiet",
                "--set", "model.xt_injection=concat_token", "--data-dir", f"{tmp}/data"]
        t0 = time.time()
        code = search(argv)
        wall = time.time() - t0
    forced = [s for f, s in saves if f]
    print(f"\nexit {code}; {args.trials} trials x {args.epochs} epoch(s); search wall {wall:.1f} s")
    print(f"experiment-state saves: {len(saves)} ({len(forced)} forced), {sum(s for _, s in saves):.2f} s in all, "
          f"forced ones {sum(forced):.2f} s (mean {1000 * sum(forced) / max(1, len(forced)):.0f} ms)")


if __name__ == "__main__":
    main()
