"""Hyperparameter search: Ray Tune (function trainable + ASHA) driven by Optuna TPE, tracked in MLflow.

    python tune/search.py                                  # small search on synthetic data (minutes, 2 CPUs)
    python tune/search.py --dataset food_kitchen --epochs 100 --num-samples 64 --gpus-per-trial 0.5
    python tune/search.py --name NAME --resume             # continue an interrupted search
    python tune/search.py --address auto ...               # run on an existing Ray cluster
    dpgdiff-search ...                                     # the same, as the installed console script

This module is the command line only: `main` turns the arguments into a `SearchSettings`
(tune/settings.py) and hands it to `run_search` (tune/driver.py). From Python:

    from tune.search import build_parser
    from tune.settings import settings_from_args
    from tune.driver import run_search
    run_search(settings_from_args(build_parser().parse_args([...])), train_fn=my_train)

Exit codes: 0 done, 1 every trial failed, 2 bad arguments / space / resources / stores, 3 the --time-budget
ended before any trial finished an epoch, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

try:  # `python tune/search.py` imports the installed packages: say so when they are not installed
    from dpgdiff.config import ConfigError
    from dpgdiff.data import DataError
    from dpgdiff.data.ref import add_dataset_args
    from tune.console import quiet_known_noise
    from tune.leftovers import clean_leftovers
    from tune.names import EXIT_INTERRUPTED, EXIT_USAGE, WARM_START_TAG
    from tune.settings import SYNTHETIC_DEFAULT_OPTIONS, SearchError, settings_from_args
    from tune.space import SpaceError
    from tune.warmstart import DEFAULT_K as WARM_START_K
except ModuleNotFoundError as exc:
    if not str(exc.name).startswith(("dpgdiff", "tune")):
        raise
    sys.exit(f"error: cannot import {exc.name!r}: install this checkout first (pip install -e .)")


# ------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The search's command line (`main` turns it into SearchSettings)."""
    p = argparse.ArgumentParser(
        prog="python tune/search.py",
        description="Ray Tune + Optuna (TPE) + ASHA search over a YAML space, tracked in MLflow. "
        "Without arguments: a small search on the synthetic dataset.",
    )
    add_dataset_args(p).description = f"synthetic without options: {SYNTHETIC_DEFAULT_OPTIONS}"
    g = p.add_argument_group("what to search")
    g.add_argument("--space", default=None, help="search space YAML (default: the dataset's own space, <dataset>-cpu.yaml without a GPU, else search_spaces/default-cpu.yaml or default-gpu.yaml, sized from the dataset card)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="fix a config field for every trial (repeatable); a fixed parameter leaves the search")
    g.add_argument("--epochs", type=int, default=None, help="epochs per trial (ASHA's max_t); default: the space's train.epochs")
    g.add_argument("--num-samples", type=int, default=None,
                   help="number of trials (default 8; with --time-budget, as many as the budget allows)")
    g.add_argument("--seed", type=int, default=2040, help="Optuna sampler seed; also train.seed unless fixed")
    g.add_argument("--objectives", default="val_mrr_sum", metavar="val_mrr_sum[,infer_ms]",
                   help="what Optuna optimises: val_mrr_sum (max; default), or val_mrr_sum,infer_ms to also "
                        "minimise the measured inference cost (ms per 1,000 validation cases at the trial's "
                        "validation sampler and K). Two objectives run FIFO (ASHA cannot rank on two); the "
                        "search prints the Pareto front and tags its runs dpgdiff.pareto=1")
    g.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="e.g. 45m, 2h, 90s: when it is spent (counted from the start, a resume's earlier time "
                        "included) no new trial starts and the running ones stop with their checkpoints; the "
                        "search then selects, tests and registers its best trial within a margin it prints")
    g.add_argument("--warm-start", default=None, metavar="NAME[,NAME...]",
                   help="the first trials run the best configurations of these earlier searches (from the MLflow "
                        "store; any dataset), or of training config files (a name ending in .yaml, e.g. "
                        "configs/food_kitchen-cpu/dpgdiff.yaml): keys this space does not sample are skipped, "
                        "numbers outside its ranges clipped, and the search says so. Tagged "
                        f"{WARM_START_TAG}=<search or file> in MLflow")
    g.add_argument("--warm-start-k", type=int, default=WARM_START_K, metavar="K",
                   help=f"how many of each --warm-start search's best configurations (default {WARM_START_K})")
    g.add_argument("--startup-trials", type=int, default=None,
                   help="random trials before TPE takes over (default: min(10, max(2, num_samples // 2)); 10 for a "
                        "search bounded by --time-budget only)")
    g = p.add_argument_group("scheduling and resources")
    g.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    g.add_argument("--grace-period", type=int, default=None, help="ASHA grace (epochs); default min(10, max(1, epochs // 4))")
    g.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    g.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what the CPUs/GPUs allow)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0)
    g.add_argument("--gpus-per-trial", type=float, default=0.0, help="may be fractional, e.g. 0.5 = two trials per GPU")
    g.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction, default=True,
                   help="run trials one after another in the same worker process (default on: no per-trial "
                        "start-up or imports)")
    g.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial (from its last checkpoint)")
    g.add_argument("--address", default=None,
                   help="existing Ray cluster: 'auto' or HOST:PORT (default: start a local Ray on 127.0.0.1)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    g.add_argument("--ray-temp-dir", default=None, help="local Ray's temp dir (default: a new short folder under /tmp)")
    g.add_argument("--ship-code", action="store_true",
                   help="upload dpgdiff/ and tune/ to the cluster's workers (runtime_env py_modules) instead of "
                        "relying on an installed package")
    g = p.add_argument_group("storage, resume and tracking")
    g.add_argument("--name", default=None, help="search name (default: <dataset>-<date>-<time>); reusing it resumes")
    g.add_argument("--storage-path", default="ray_results",
                   help="Tune results: local folder, shared filesystem or s3:// (default ./ray_results)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted search (--name, or the latest one in --storage-path)")
    g.add_argument("--retry-errored", action="store_true",
                   help="with --resume: run the trials that ended in ERROR again, from their last checkpoint "
                        "(after fixing what made them fail; by default a resume leaves them as they are)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite ./mlruns/mlflow.db)")
    g.add_argument("--experiment", default="dpgdiff", help="MLflow experiment name (default dpgdiff)")
    g.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="database of the search's Optuna study, named as the search (default: optuna.db beside a "
                        "local SQLite MLflow store, e.g. sqlite:///mlruns/optuna.db); browse with optuna-dashboard URL")
    g.add_argument("--ui-port", type=int, default=None, metavar="PORT",
                   help="the port of `mlflow ui` that the printed links name (default: $DPGDIFF_UI_PORT, else "
                        "5000, mlflow ui's own default); start the UI with the same --port")
    g.add_argument("--quiet", action="store_true", help="no trial table while running")
    return p


# ------------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None, train_fn: Optional[Callable[..., Any]] = None) -> int:
    """Parse the command line, run (or resume) the search -> exit code. train_fn: see `run_search`."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # tune's CLIReporter trial table
    # Tune's default loggers include TensorBoard (about 0.1 s per trial); the CSV and JSON ones
    # (what ResultGrid reads) are added back explicitly in tune.tuner.build_tuner.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A checkpoint every epoch with num_to_keep=2 forces frequent experiment snapshots (what keeps a
    # resume consistent); Tune warns about that on short epochs, which is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _auth_for_existing_cluster(args.address)
    quiet_known_noise(local_ray=_local_ray(args.address))
    try:
        settings = settings_from_args(args)  # bad flags, space or settings: refused before Ray is imported
        # Only a command that will run touches anything: a refused one prints its error and nothing else.
        for line in clean_leftovers():  # the local Ray of an earlier search whose driver was killed
            print(f"cleaned up {line}", flush=True)
        from tune.driver import run_search  # imports Ray: only after its auth mode is set

        return run_search(settings, train_fn=train_fn)
    except (SpaceError, ConfigError, DataError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; if trials had started, continue with: python tune/search.py --name NAME --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def _local_ray(address: Optional[str]) -> bool:
    """Whether the command starts a local Ray of its own (no --address, no RAY_ADDRESS)."""
    return address == "local" or (address is None and not os.environ.get("RAY_ADDRESS"))


def _auth_for_existing_cluster(address: Optional[str]) -> None:
    """Token auth for an explicit cluster address (search-notes: Ray 2.60 enables token auth by default,
    but an explicit address or RAY_ADDRESS does not pick the token up). Ray reads RAY_AUTH_MODE once,
    when it is first imported, so this runs before anything imports ray."""
    if _local_ray(address):
        return
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (token.exists() or os.environ.get("RAY_AUTH_TOKEN")):
        os.environ["RAY_AUTH_MODE"] = "token"


if __name__ == "__main__":
    from dpgdiff.cli import exit_process

    exit_process(main())
