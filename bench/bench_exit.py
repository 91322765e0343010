"""How long the command-line entry points take to exit once their work is done, with and without gc.freeze().

    python bench/bench_exit.py --rounds 3

`dpgdiff.cli.exit_process`, which every entry point ends with, freezes the garbage collector before
sys.exit, so that the interpreter's last full collection does not walk every object torch, Ray and MLflow
created. This bench runs each command in a child process that calls the entry point as `python -m` would
(runpy), notes the moment main's SystemExit arrives, and in the `plain` mode unfreezes the collector again
before exiting (what a plain sys.exit does). Printed per command and mode: the median seconds from that
moment to the end of the process, as the parent sees it. The commands (tiny synthetic data):
`python -m dpgdiff train` (1 epoch), `tune/search.py` (1 trial, 1 epoch, its own MLflow store and results
in a temporary folder) and `tune/report.py` on that search. Modes alternate within each round.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--data-option", "n_users=200"]


def child(mode: str, module: str, argv: list[str]) -> None:
    """Run `module` as __main__ with argv; on its exit print when main returned, then exit as `mode` says."""
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        print(json.dumps({"returned_at": time.time()}), file=sys.stderr, flush=True)
        if mode == "plain":
            gc.unfreeze()  # undo exit_process's freeze: the exit a plain sys.exit(main()) would make
        raise


def commands(work: Path, run: int) -> dict[str, tuple[str, list[str]]]:
    """The commands of the `run`-th timing (each search is a new one; the report reads the first)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    return {
        "python -m dpgdiff train": ("dpgdiff", ["train", *TINY, "--set", "train.epochs=1", "--set", "model.dim=16",
                                                "--no-progress", "--out", str(work / "train")]),
        "tune/search.py": ("tune.search", [*TINY, "--space", str(REPO / "search_spaces" / "smoke.yaml"),
                                           "--epochs", "1", "--num-samples", "1", "--name", f"bench-exit-{run}",
                                           "--storage-path", str(work / "ray_results"), "--tracking-uri", uri,
                                           "--quiet"]),
        "tune/report.py": ("tune.report", ["--name", "bench-exit-0", "--tracking-uri", uri,
                                           "--out", str(work / "report.md")]),
    }


def time_exit(mode: str, module: str, argv: list[str]) -> float:
    """Seconds from main's return to the end of the child process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, module, *argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ended = time.time()
    marks = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"returned_at"')]
    if proc.returncode != 0 or not marks:
        raise RuntimeError(f"{module} {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return ended - marks[-1]["returned_at"]


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"{os.cpu_count()} logical CPUs, load avg {os.getloadavg()[0]:.1f}; {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="dpgdiff-bench-exit-") as tmp:
        results: dict[tuple[str, str], list[float]] = {}
        for name in commands(Path(tmp), 0):
            for r in range(args.rounds):
                for i, mode in enumerate(("frozen", "plain") if r % 2 == 0 else ("plain", "frozen")):
                    module, argv = commands(Path(tmp), 2 * r + i)[name]
                    results.setdefault((name, mode), []).append(time_exit(mode, module, argv))
            frozen, plain = (statistics.median(results[(name, m)]) for m in ("frozen", "plain"))
            print(f"{name:26s} exit after main: plain sys.exit {plain:.2f} s, exit_process (gc.freeze) {frozen:.2f} s "
                  f"(medians of {args.rounds})  [load avg {os.getloadavg()[0]:.1f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
