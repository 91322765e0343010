"""Hyperparameter search: Ray Tune (function trainable + ASHA) driven by Optuna TPE, tracked in MLflow.

    python tune/search.py                                  # small search on synthetic data (minutes, 2 CPUs)
    python tune/search.py --dataset food_kitchen --epochs 100 --num-samples 64 --gpus-per-trial 0.5
    python tune/search.py --name NAME --resume             # continue an interrupted search
    python tune/search.py --address auto ...               # run on an existing Ray cluster

Steps: validate the space and overrides (before Ray starts), load the dataset once for its
card and fingerprint, open the MLflow parent run, start or join Ray and check its resources,
run (or restore) the Tuner, then print the best trial's config and per-domain validation and
test metrics and attach the best checkpoint, summary tables and Optuna plots to the parent run.
Exit codes: 0 done, 1 every trial failed, 2 bad arguments / space / resources, 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python tune/search.py` puts tune/ on sys.path, not the repository
    sys.path.insert(0, str(REPO))

from dpgdiff.config import ConfigError, _split_assignment, atomic_write_text  # noqa: E402
from dpgdiff.data.dataset import DataError  # noqa: E402
from tune.space import SearchSpace, SpaceError, default_space_path, load_space, parse_space  # noqa: E402

METRIC, MODE = "val_mrr_sum", "max"
STATE_FILE = "dpgdiff_search.json"  # beside Tune's experiment state: what a resume needs
# The no-argument search: a smaller synthetic set so it finishes in minutes on 2 CPU cores.
SYNTHETIC_DEFAULT_OPTIONS = {"n_users": 400}
EXIT_OK, EXIT_ALL_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DOMAIN_METRICS = ("mrr", "mrr10", "ndcg5", "ndcg10", "hr1", "hr5", "hr10")


class SearchError(RuntimeError):
    """A problem found before any trial runs (arguments, resources, resume state)."""


# ------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tune/search.py",
        description="Ray Tune + Optuna (TPE) + ASHA search over a YAML space, tracked in MLflow. "
        "Without arguments: a small search on the synthetic dataset.",
    )
    g = p.add_argument_group("what to search")
    g.add_argument("--dataset", default="synthetic", help="food_kitchen | movie_book | synthetic | a .csv/.parquet log")
    g.add_argument("--split", default=None, help="dataset split (c2dsr | c2dsr-histories | loo); default: the dataset's")
    g.add_argument("--data-dir", default=None, help="folder with the dataset files (default: $DPGDIFF_DATA_DIR)")
    g.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra load_dataset option (repeatable), e.g. n_users=2000 for synthetic "
                        f"(synthetic without options: {SYNTHETIC_DEFAULT_OPTIONS})")
    g.add_argument("--space", default=None, help="search space YAML (default: search_spaces/<dataset>.yaml)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="fix a config field for every trial (repeatable); a fixed parameter leaves the search")
    g.add_argument("--epochs", type=int, default=None, help="epochs per trial (ASHA's max_t); default: the space's train.epochs")
    g.add_argument("--num-samples", type=int, default=8, help="number of trials (default 8)")
    g.add_argument("--seed", type=int, default=2040, help="Optuna sampler seed; also train.seed unless fixed")
    g.add_argument("--startup-trials", type=int, default=None,
                   help="random trials before TPE takes over (default: min(10, max(2, num_samples // 2)))")
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
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite ./mlruns/mlflow.db)")
    g.add_argument("--experiment", default="dpgdiff", help="MLflow experiment name (default dpgdiff)")
    g.add_argument("--train-fn", default="dpgdiff.train:train", help=argparse.SUPPRESS)  # tests / benchmarks
    g.add_argument("--quiet", action="store_true", help="no trial table while running")
    return p


# ------------------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # tune's CLIReporter trial table
    # Tune's default loggers include TensorBoard (about 0.1 s per trial); the CSV and JSON ones
    # (what ResultGrid reads) are added back explicitly in _build_tuner.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A checkpoint every epoch with num_to_keep=2 forces frequent experiment snapshots (what keeps a
    # resume consistent); Tune warns about that on short epochs, which is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    args = build_parser().parse_args(argv)
    _auth_for_existing_cluster(args.address)
    try:
        return _main(args)
    except (SpaceError, ConfigError, DataError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; if trials had started, continue with: python tune/search.py --name NAME --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    storage = _storage_path(args.storage_path)
    state, resuming = _resolve_state(args, storage)

    # 1. Everything that can be wrong with the input is found before Ray starts.
    space = parse_space(_yaml_load(state["space_text"], state["space_source"]), state["space_source"],
                        state["space_text"])
    space = space.with_fixed(state["fixed"], source="--set/--epochs")
    print(space.summary(), flush=True)

    # 2. The dataset, once on the driver: its card goes to MLflow, its fingerprint to every trial.
    from dpgdiff.data import load_dataset

    t0 = time.time()
    dataset = load_dataset(state["dataset"], split=state["split"], data_dir=state["data_dir"], **state["options"])
    card = dataset.card()
    print(f"\n{card}\n(loaded in {time.time() - t0:.1f} s)\n", flush=True)
    if state.get("fingerprint") and state["fingerprint"] != dataset.fingerprint:
        raise SearchError(f"the dataset changed since search {state['name']!r} started (fingerprint "
                          f"{state['fingerprint'][:12]} -> {dataset.fingerprint[:12]}); start a new search")
    state["fingerprint"] = dataset.fingerprint
    state["split"] = dataset.split

    # 3. Ray: local (no dashboard) or an existing cluster; a trial that cannot fit is an error now.
    import ray

    temp_dir = _init_ray(args)
    try:
        _check_resources(ray, state)
        if not resuming:
            _write_text(f"{storage}/{state['name']}/{STATE_FILE}", json.dumps(state, indent=1))

        # 4. MLflow parent run (reopened on resume).
        from tune import tracking

        uri = state["tracking_uri"]
        client = tracking.client_for(uri)
        exp_id = tracking.ensure_experiment(client, state["experiment"], tracking.artifact_root_for(uri))
        parent_id, reopened = tracking.start_parent_run(client, exp_id, state["name"], _parent_tags(state, card))
        if not reopened:
            _log_parent_inputs(client, parent_id, state, card, space)
        print(f"MLflow: {uri} experiment {state['experiment']!r} run {parent_id}"
              f"{' (reopened)' if reopened else ''}", flush=True)

        # 5. Tune.
        try:
            tuner = _build_tuner(state, space, storage, client, exp_id, parent_id, resuming, args)
            print(f"\nsearch {state['name']!r}: {state['num_samples']} trials, results in {storage}/{state['name']}"
                  + (" (resumed)" if resuming else ""), flush=True)
            t_fit = time.time()
            results = tuner.fit()
            wall = time.time() - t_fit
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            client.set_tag(parent_id, tracking.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(parent_id, status=status)
            raise
        return _finish(results, state, space, storage, client, exp_id, parent_id, dataset, wall)
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------- state


def _resolve_state(args: argparse.Namespace, storage: str) -> tuple[dict[str, Any], bool]:
    """The search's settings: from the CLI for a new search, from STATE_FILE when resuming."""
    from ray import tune

    name = args.name
    if name is None and args.resume:
        name = _latest_search(storage)
        if name is None:
            raise SearchError(f"--resume: no search to resume in {storage}; pass --name")
    if name is not None:
        path = f"{storage}/{name}"
        if tune.Tuner.can_restore(path):
            saved = _read_text(f"{path}/{STATE_FILE}")
            if saved is None:
                raise SearchError(f"{path} holds a Tune experiment but no {STATE_FILE}: not a tune/search.py search")
            state = json.loads(saved)
            if args.tracking_uri:
                state["tracking_uri"] = args.tracking_uri
            print(f"resuming search {name!r} from {path} (settings as saved; CLI search options ignored)", flush=True)
            return state, True
        if args.resume:
            raise SearchError(f"--resume: nothing to resume at {path} (no Tune experiment state there)")

    for value, flag in ((args.num_samples, "--num-samples"), (args.cpus_per_trial, "--cpus-per-trial")):
        if value <= 0:
            raise SearchError(f"{flag} must be > 0, got {value}")
    if args.gpus_per_trial < 0 or args.max_failures < 0:
        raise SearchError("--gpus-per-trial and --max-failures must be >= 0")
    if args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer():
        raise SearchError(f"--gpus-per-trial {args.gpus_per_trial}: above 1 it must be a whole number")
    space_path = Path(args.space) if args.space else default_space_path(args.dataset)
    space = load_space(space_path)  # validates: errors name the file and key
    overrides = dict(_split_assignment(a, "--set") for a in args.overrides)
    fixed = dict(overrides)
    epochs = args.epochs if args.epochs is not None else overrides.get("train.epochs", space.fixed.get("train.epochs"))
    if epochs is not None:
        fixed["train.epochs"] = epochs
    if "train.seed" not in overrides and "train.seed" not in space.fixed:
        fixed["train.seed"] = args.seed
    if "train.num_threads" not in overrides and "train.num_threads" not in space.fixed:
        fixed["train.num_threads"] = max(1, int(args.cpus_per_trial))  # no oversubscription of the CPUs
    space = space.with_fixed(fixed, source="--set/--epochs")
    epochs = space.base_values()["train.epochs"]
    name = name or f"{Path(args.dataset).stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name.startswith("."):
        raise SearchError(f"--name {name!r}: use a plain folder name")
    options = dict(_split_assignment(a, "--data-option") for a in args.data_option)
    if not options and Path(args.dataset).stem.lower() == "synthetic":
        options = dict(SYNTHETIC_DEFAULT_OPTIONS)
    return {
        "name": name,
        "dataset": args.dataset,
        "split": args.split,
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        "options": options,
        "space_source": _display_path(space_path),
        "space_text": space.text,
        "fixed": fixed,
        "epochs": epochs,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "startup_trials": args.startup_trials or min(10, max(2, args.num_samples // 2)),
        "scheduler": args.scheduler,
        "grace_period": args.grace_period or min(10, max(1, epochs // 4)),
        "reduction_factor": args.reduction_factor,
        "max_concurrent": args.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "max_failures": args.max_failures,
        "reuse_actors": args.reuse_actors,
        "tracking_uri": args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _default_tracking_uri(),
        "experiment": args.experiment,
        "train_fn": args.train_fn,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "argv": sys.argv[1:],
    }, False


def _default_tracking_uri() -> str:
    from tune.tracking import local_tracking_uri

    return local_tracking_uri("mlruns")


def _latest_search(storage: str) -> Optional[str]:
    if "://" in storage:
        return None
    found = sorted(Path(storage).glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.name if found else None


# ------------------------------------------------------------------------------------- Ray


def _init_ray(args: argparse.Namespace) -> Optional[str]:
    """Start a local Ray (returns its temp dir, removed at the end) or join `--address`."""
    import ray

    address = args.address
    runtime_env: dict[str, Any] = {}
    if args.ship_code:
        import dpgdiff
        import tune as tune_pkg

        runtime_env["py_modules"] = [str(Path(dpgdiff.__file__).parent), str(Path(tune_pkg.__file__).parent)]
    if address is None or address == "local":
        # Workers are children of this process: make the repository importable there too.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        temp_dir = args.ray_temp_dir or tempfile.mkdtemp(prefix="ray", dir="/tmp" if Path("/tmp").is_dir() else None)
        # No dashboard; Ray's remaining local services bind 127.0.0.1 (the minimal dashboard process) or
        # the node's own IP, which ray.init picks itself (it maps 127.0.0.1 to the reachable address).
        ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False,
                 dashboard_host="127.0.0.1", _temp_dir=temp_dir, logging_level="WARNING",
                 runtime_env=runtime_env or None)
        owned = None if args.ray_temp_dir else temp_dir
    else:
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env or None)
        owned = None
    _print_ray_processes()
    return owned


def _auth_for_existing_cluster(address: Optional[str]) -> None:
    """Token auth for an explicit cluster address (search-notes: Ray 2.60 enables token auth by default,
    but an explicit address or RAY_ADDRESS does not pick the token up). Ray reads RAY_AUTH_MODE once,
    when it is first imported, so this runs before anything imports ray."""
    if address == "local" or (address is None and not os.environ.get("RAY_ADDRESS")):
        return
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (token.exists() or os.environ.get("RAY_AUTH_TOKEN")):
        os.environ["RAY_AUTH_MODE"] = "token"


def _print_ray_processes() -> None:
    """Log the Ray processes this driver started (so a supervisor can stop them by PID)."""
    try:
        import ray

        node = ray._private.worker._global_node
        pids = sorted(p.process.pid for infos in node.all_processes.values() for p in infos if p.process)
        print(f"ray session {node.get_session_dir_path()} pids {' '.join(map(str, pids)) or '-'}", flush=True)
    except Exception:  # private API: informational only
        pass


def _check_resources(ray: Any, state: dict[str, Any]) -> None:
    """A trial must fit on one node, or it would stay PENDING forever (search-notes)."""
    cpu, gpu = state["cpus_per_trial"], state["gpus_per_trial"]
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if not fits:
        have = "; ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes))
        raise SearchError(f"each trial asks for {cpu:g} CPU and {gpu:g} GPU, but no node of the cluster has that "
                          f"({have or 'no live nodes'}; total {total.get('CPU', 0):g} CPU, "
                          f"{total.get('GPU', 0):g} GPU); lower --cpus-per-trial/--gpus-per-trial")
    slots = sum(int(min(n.get("CPU", 0) // cpu, n.get("GPU", 0) // gpu if gpu else 1e9)) for n in fits)
    print(f"Ray: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU; "
          f"room for {slots} trial(s) at once", flush=True)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _build_tuner(state, space, storage, client, exp_id, parent_id, resuming, args):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tune.tracking import MLflowTrialTracker
    from tune.trainable import run_trial

    spec = {k: state[k] for k in ("dataset", "split", "data_dir", "options", "fingerprint", "train_fn")}
    spec["space"] = space
    resources = {"cpu": state["cpus_per_trial"], "gpu": state["gpus_per_trial"]}
    trainable = tune.with_parameters(tune.with_resources(run_trial, resources), spec=spec)
    path = f"{storage}/{state['name']}"
    if resuming:
        # Searcher (Optuna study), scheduler, callbacks and run config come back from the saved state.
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=state["seed"], n_startup_trials=state["startup_trials"],
                                         multivariate=True, group=True)
    searcher = OptunaSearch(space=space, metric=METRIC, mode=MODE, sampler=sampler)
    if state["scheduler"] == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=state["epochs"],
                                  grace_period=min(state["grace_period"], state["epochs"]),
                                  reduction_factor=state["reduction_factor"], stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    tracker = MLflowTrialTracker(state["tracking_uri"], exp_id, parent_id, state["name"], space)
    reporter = None
    if not args.quiet:
        preferred = ("model.dim", "diffusion.steps", "train.lr", "loss.lambda_cl", "loss.lambda_diff")
        params = ([p for p in preferred if p in space.params] + [p for p in space.params if p not in preferred])[:4]
        reporter = tune.CLIReporter(
            metric_columns={"epoch": "epoch", "train_loss": "loss", "val_x_mrr": "val MRR X",
                            "val_y_mrr": "val MRR Y", METRIC: "val MRR sum"},
            parameter_columns={p: p.split(".", 1)[1] for p in params},
            max_report_frequency=15, metric=METRIC, mode=MODE, sort_by_metric=True, max_progress_rows=12)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=state["num_samples"],
            max_concurrent_trials=state["max_concurrent"], reuse_actors=state.get("reuse_actors", True),
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=state["name"], storage_path=storage, progress_reporter=reporter,
            callbacks=[tracker, CSVLoggerCallback(), JsonLoggerCallback()],
            verbose=0 if args.quiet else 1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=state["max_failures"], fail_fast=False)),
    )


# ------------------------------------------------------------------------------------- results


def trial_rows(results: Any) -> list[dict[str, Any]]:
    """One summary dict per trial, the best epoch read from its history (not the last result)."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        metrics = r.metrics or {}
        trial_id = metrics.get("trial_id") or Path(r.path).name.replace("trial_", "")
        row: dict[str, Any] = {"trial_id": trial_id, "status": "ERROR" if r.error else "?", "config": dict(r.config or {}),
                               "path": r.path, "result": r}
        epochs = df[df["final"] != 1] if df is not None and "final" in df.columns else df
        if epochs is not None and len(epochs) and METRIC in epochs.columns:
            best = epochs.loc[epochs[METRIC].idxmax()]
            row["best_val"] = {k: float(v) for k, v in best.items() if str(k).startswith("val_")}
            row["best_epoch"] = int(best.get("epoch", best.get("training_iteration", 0)))
            row["epochs_run"] = int(epochs["epoch"].max()) if "epoch" in epochs.columns else len(epochs)
            row[METRIC] = float(best[METRIC])
        final = df[df["final"] == 1] if df is not None and "final" in df.columns else None
        if final is not None and len(final):
            last = final.iloc[-1]
            row["test"] = {k: float(v) for k, v in last.items() if str(k).startswith("test_")}
            row["best_epoch"] = int(last.get("best_epoch", row.get("best_epoch", 0)))
            row["status"] = "FINISHED"
        elif not r.error:
            row["status"] = "STOPPED" if row.get("epochs_run") else "NOT RUN"
        if r.error:
            row["error"] = str(r.error)
        rows.append(row)
    return rows


def _finish(results, state, space, storage, client, exp_id, parent_id, dataset, wall) -> int:
    from tune import tracking

    rows = trial_rows(results)
    tune_trials = _tune_trials(results)
    unfinished = [t for t in tune_trials if t.status not in ("TERMINATED", "ERROR")]
    interrupted = bool(unfinished) or len(tune_trials) < state["num_samples"]
    tracker = tracking.MLflowTrialTracker(state["tracking_uri"], exp_id, parent_id, state["name"], space)
    tracker.reconcile(tune_trials)  # nothing stays RUNNING, whatever happened to the callbacks
    for row in rows:
        t = next((t for t in tune_trials if t.trial_id == row["trial_id"]), None)
        row["run_id"] = tracker.run_id(t, create=False) if t is not None else None

    done = [r for r in rows if r["status"] == "FINISHED"]
    failed = [r for r in rows if r["status"] == "ERROR"]
    print(f"\n{len(rows)} trial(s): {len(done)} finished, "
          f"{sum(r['status'] == 'STOPPED' for r in rows)} stopped early by ASHA, {len(failed)} failed; "
          f"wall time {wall:.1f} s", flush=True)

    if interrupted:
        client.set_tag(parent_id, "dpgdiff.unfinished", "1")
        client.set_terminated(parent_id, status="KILLED")
        print(f"\nSearch {state['name']!r} is UNFINISHED ({len(tune_trials) - len(unfinished)} of "
              f"{state['num_samples']} trials done). Resume it with:\n"
              f"    python tune/search.py --name {state['name']} --storage-path {storage} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED

    if not done and not any(r["status"] == "STOPPED" for r in rows):
        first = failed[0] if failed else None
        text = first.get("error", "") if first else "no trial reported a result"
        client.set_tag(parent_id, tracking.ERROR_TAG, text[:5000])
        client.set_terminated(parent_id, status="FAILED")
        print(f"\nerror: every trial failed. First error (trial {first['trial_id'] if first else '-'}):\n"
              f"{tracking.first_error_line(text)}\n\n{text[-3000:]}", file=sys.stderr)
        return EXIT_ALL_FAILED

    best = max(done or rows, key=lambda r: r.get(METRIC, float("-inf")))
    _print_best(best, space)
    with tempfile.TemporaryDirectory() as tmp:
        _write_parent_artifacts(Path(tmp), rows, best, space, results)
        client.log_artifacts(parent_id, tmp)
        from tune.serving import publish_best_model  # issue 13 §1: the best trial as a registered MLflow model

        publish_best_model(state["tracking_uri"], parent_id, Path(tmp) / "best" / "checkpoint", dataset, best.get(METRIC))
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    summary = {"best_" + k: v for k, v in {**best.get("best_val", {}), **best.get("test", {})}.items()}
    summary.update(n_trials=len(rows), n_finished=len(done), n_failed=len(failed), search_wall_s=wall)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.set_tag(parent_id, "best_trial_id", best["trial_id"])
    if best.get("run_id"):
        client.set_tag(parent_id, "best_run_id", best["run_id"])
    client.set_terminated(parent_id, status="FINISHED")
    print(f"\nMLflow parent run {parent_id}: best checkpoint, config, trials.csv/.md and Optuna plots attached. "
          f"Browse with: mlflow ui --backend-store-uri {state['tracking_uri']} --host 127.0.0.1", flush=True)
    return EXIT_OK


def _tune_trials(results: Any) -> list[Any]:
    analysis = getattr(results, "_experiment_analysis", None)
    return list(getattr(analysis, "trials", None) or [])


def domain_table(best_val: dict[str, float], test: dict[str, float]) -> str:
    """Markdown table: metric rows, validation / test x domain X / Y columns."""
    lines = ["| metric | val X | val Y | test X | test Y |", "|---|---:|---:|---:|---:|"]
    names = list(DOMAIN_METRICS) + [f"full_{m}" for m in DOMAIN_METRICS]
    for m in names:
        cells = [best_val.get(f"val_x_{m}"), best_val.get(f"val_y_{m}"), test.get(f"test_x_{m}"), test.get(f"test_y_{m}")]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {m} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    lines.append(f"| mrr_sum | {best_val.get('val_mrr_sum', float('nan')):.4f} | | "
                 f"{test.get('test_mrr_sum', float('nan')):.4f} | |")
    return "\n".join(lines)


def _print_best(best: dict[str, Any], space: SearchSpace) -> None:
    print(f"\nBest trial {best['trial_id']} (best epoch {best.get('best_epoch', '?')}, "
          f"{METRIC} {best.get(METRIC, float('nan')):.4f}); MLflow run {best.get('run_id')}")
    print("sampled:")
    for k, v in best["config"].items():
        print(f"  {k} = {v!r}")
    if space.fixed:
        print("fixed: " + ", ".join(f"{k}={v!r}" for k, v in space.fixed.items()))
    if "test" not in best:
        print("(no test metrics: this trial did not finish)")
    print("\n" + domain_table(best.get("best_val", {}), best.get("test", {})), flush=True)


def _write_parent_artifacts(out: Path, rows, best, space: SearchSpace, results) -> None:
    import pandas as pd

    keys = sorted({k for r in rows for k in r["config"]})
    table = []
    for r in rows:
        rec = {"trial_id": r["trial_id"], "status": r["status"], "run_id": r.get("run_id"),
               "epochs_run": r.get("epochs_run"), "best_epoch": r.get("best_epoch"), METRIC: r.get(METRIC),
               "test_mrr_sum": r.get("test", {}).get("test_mrr_sum"),
               "test_x_mrr": r.get("test", {}).get("test_x_mrr"), "test_y_mrr": r.get("test", {}).get("test_y_mrr")}
        rec.update({k: r["config"].get(k) for k in keys})
        rec["error"] = (r.get("error") or "").strip().splitlines()[-1][:200] if r.get("error") else ""
        table.append(rec)
    df = pd.DataFrame(table).sort_values(METRIC, ascending=False, na_position="last")
    atomic_write_text(out / "trials.csv", df.to_csv(index=False))
    atomic_write_text(out / "trials.md", _markdown(df))
    resolved = space.resolve(best["config"], source=f"trial {best['trial_id']}")
    resolved.to_yaml(out / "best" / "config.yaml")
    atomic_write_text(out / "best" / "metrics.json", json.dumps(
        {"trial_id": best["trial_id"], "best_epoch": best.get("best_epoch"), **best.get("best_val", {}),
         **best.get("test", {})}, indent=1))
    atomic_write_text(out / "best" / "metrics.md", domain_table(best.get("best_val", {}), best.get("test", {})))
    ckpt = _best_checkpoint(best["result"])
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            shutil.copytree(folder, out / "best" / "checkpoint")
    _optuna_plots(out, rows, space)


def _best_checkpoint(result: Any) -> Any:
    """The final checkpoint (best.pt of the best epoch) if kept, else the best-scoring one."""
    pairs = list(getattr(result, "best_checkpoints", None) or [])
    finals = [c for c, m in pairs if (m or {}).get("final")]
    if finals:
        return finals[-1]
    scored = [(m.get(METRIC, float("-inf")), c) for c, m in pairs if m]
    return max(scored, key=lambda x: x[0])[1] if scored else result.checkpoint


def _optuna_plots(out: Path, rows, space: SearchSpace) -> None:
    """Optimization history and parameter importances, from a study rebuilt from the trial results."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna
        from optuna.visualization import matplotlib as ovm

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="maximize")
        for r in rows:
            params = {k: v for k, v in r["config"].items() if k in space.params}
            value = r.get(METRIC)
            state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(params=params, distributions=space.distributions(params),
                                                      value=value, state=state))
        plots = [("optuna_history.png", ovm.plot_optimization_history)]
        if sum(r.get(METRIC) is not None for r in rows) >= 2:
            plots.append(("optuna_importances.png", ovm.plot_param_importances))
        for name, fn in plots:
            try:
                ax = fn(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                fig.savefig(out / name, dpi=100)
                plt.close(fig)
            except Exception as exc:  # e.g. importances need params varying across complete trials
                print(f"note: {name} not drawn: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"note: Optuna plots skipped: {exc}", file=sys.stderr)


def _markdown(df: Any) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if v is None or (isinstance(v, float) and v != v):
                cells.append("")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- MLflow inputs


def _parent_tags(state: dict[str, Any], card: Any) -> dict[str, str]:
    return {"dataset": state["dataset"], "dataset.fingerprint": state["fingerprint"],
            "git_commit": state["git_commit"] or "unknown", "seed": str(state["seed"]),
            "mlflow.source.git.commit": (state["git_commit"] or "unknown").split("+")[0]}


def _log_parent_inputs(client: Any, run_id: str, state: dict[str, Any], card: Any, space: SearchSpace) -> None:
    from tune.tracking import log_params

    params = {k: state[k] for k in ("dataset", "split", "num_samples", "epochs", "seed", "scheduler",
                                    "grace_period", "reduction_factor", "max_concurrent", "cpus_per_trial",
                                    "gpus_per_trial", "max_failures", "space_source", "startup_trials")}
    params.update({"dataset.fingerprint": state["fingerprint"], "argv": " ".join(state["argv"]) or "(none)",
                   "git_commit": state["git_commit"] or "unknown"})
    params.update({f"fixed.{k}": v for k, v in state["fixed"].items()})
    log_params(client, run_id, params)
    client.log_text(run_id, space.text, "search_space.yaml")
    client.log_text(run_id, str(card), "dataset_card.txt")
    client.log_dict(run_id, card.to_dict(), "dataset_card.json")
    client.log_dict(run_id, state, "search_settings.json")


def _git_commit() -> Optional[str]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------- files


def _storage_path(path: str) -> str:
    return path.rstrip("/") if "://" in path else str(Path(path).resolve())


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _yaml_load(text: str, source: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None


def _write_text(uri: str, text: str) -> None:
    if "://" not in uri:
        atomic_write_text(Path(uri), text)
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def _read_text(uri: str) -> Optional[str]:
    if "://" not in uri:
        p = Path(uri)
        return p.read_text() if p.exists() else None
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.readall().decode()


if __name__ == "__main__":
    sys.exit(main())
