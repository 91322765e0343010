"""Confirmation runs: the best configuration of finished searches, rerun with N seeds (and Table 3 ablations).

    python tune/confirm.py --name fk-cpu-dpgdiff --name fk-cpu-sasrec --seeds 3
    python tune/confirm.py --name fk-cpu-dpgdiff --seeds 3 --ablations     # + -Tri-CL, -G, -DE, Diff, -Diffusion at the best config
    python tune/confirm.py --name ... --variant "lr-half:train.lr=0.0005"   # any other variant of the best config
    python tune/confirm.py --trial fk-cpu-dpgdiff:15 --seeds 3 --ablations  # a chosen trial (Optuna number) instead
    python tune/confirm.py --confirm-name NAME --resume                    # continue an interrupted confirmation
    python tune/report.py --name fk-cpu-dpgdiff --name fk-cpu-sasrec       # mean ± std over seeds, paired tests
    dpgdiff-confirm ...                                                     # the same, as the installed console script

Each (search, variant, seed) is one Ray Tune trial of the search's own trainable, FIFO, tracked in MLflow as
a child of that search's parent run with role `confirmation` (tune/confirmation.py). Seeds are --seed,
--seed+1, ...: the same for every search, so that tune/report.py can pair seed i of one model with seed i of
another, case by case. This module is the command line only.

Exit codes: 0 done, 1 every trial failed, 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

try:
    from dpgdiff.config import ConfigError
    from dpgdiff.data import DataError
    from tune.names import EXIT_INTERRUPTED, EXIT_USAGE
    from tune.endpoints import check_address, check_storage_uri, check_tracking_uri, tracking_uri_source
    from tune.errors import StoreError
    from tune.settings import RunOptions, SearchError, SearchSettings, check_search_name
    from tune.stores import local_tracking_uri, parse_saved_json
    from tune.storage import read_text, write_text
except ModuleNotFoundError as exc:
    if not str(exc.name).startswith(("dpgdiff", "tune")):
        raise
    sys.exit(f"error: cannot import {exc.name!r}: install this checkout first (pip install -e .)")


# ------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tune/confirm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", action="append", default=[], help="a finished search to confirm (repeatable)")
    p.add_argument("--seeds", type=int, default=5,
                   help="seeds per configuration (default 5: the significance test counts training runs)")
    p.add_argument("--seed", type=int, default=1, help="first seed (default 1): seeds are SEED, SEED+1, ...")
    p.add_argument("--ablations", action="store_true",
                   help="also run Table 3's ablations (-Tri-CL, -G, -DE, Diff) and the -Diffusion control (model.diffusion=false) at each DPG-Diff search's best config")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:section.key=value[,...]",
                   help="another variant of every best configuration (repeatable); a LABEL that starts with '-' "
                        "needs the --variant=LABEL:... form")
    p.add_argument("--trial", action="append", default=[], metavar="SEARCH:TRIAL",
                   help="confirm this trial of SEARCH instead of its best (repeatable; the search need not be in "
                        "--name): the Optuna trial number (trial_015_... in the run name: 15), Tune trial id or run id")
    p.add_argument("--confirm-name", default=None, help="Tune experiment name (default: confirm-<names>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted confirmation --confirm-name")
    p.add_argument("--data-dir", default=None, help="where the searches' data is on this machine (default: as saved)")
    p.add_argument("--write-configs", default=None, metavar="DIR",
                   help="write each search's best configuration to DIR/<model>.yaml (python -m dpgdiff train --config); "
                        "when every requested seed is confirmed already, write them and run nothing")
    p.add_argument("--storage-path", default="ray_results")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite ./mlruns/mlflow.db")
    p.add_argument("--experiment", default="dpgdiff")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--address", default=None, help="existing Ray cluster (default: a local Ray on 127.0.0.1)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from tune.console import quiet_known_noise
    from tune.search import _auth_for_existing_cluster, _local_ray

    _auth_for_existing_cluster(args.address)  # before anything imports Ray
    quiet_known_noise(local_ray=_local_ray(args.address))
    try:
        return _main(args, argv)
    except (SearchError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; continue with: python tune/confirm.py --confirm-name NAME --resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from tune import tracking
    from tune.confirmation import (CONFIRM_STATE, Job, NothingToConfirm, best_configuration, build_jobs, export_config,
                                   parse_trial, parse_variant, run_confirmation, tune_state_exists)

    if args.seeds < 1:
        raise SearchError(f"--seeds must be >= 1, got {args.seeds}")
    if args.confirm_name is not None:
        check_search_name(args.confirm_name, "--confirm-name")  # a folder inside --storage-path, as a search's
    trials = dict(parse_trial(t) for t in args.trial)
    names = list(dict.fromkeys([*args.name, *trials]))
    if not names and not args.resume:
        raise SearchError("name at least one finished search with --name (or a trial of one with --trial)")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri("mlruns")
    check_tracking_uri(uri, tracking_uri_source(bool(args.tracking_uri)))
    client = tracking.client_for(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SearchError(f"{uri}: no MLflow experiment {args.experiment!r} (run tune/search.py first)")
    storage = str(Path(args.storage_path).resolve()) if "://" not in args.storage_path else args.storage_path
    check_storage_uri(storage)  # an s3:// bucket answers (a local folder is made when the state is written)
    address = check_address(args.address)  # 'auto' resolved: the cluster checked is the one joined
    name = args.confirm_name or ("confirm-" + "+".join(f"{n}-trial-{trials[n]}" if n in trials else n for n in names)
                                 + ("-ablations" if args.ablations else ""))
    run = RunOptions(storage=storage, resuming=args.resume, address=address, num_cpus=args.num_cpus,
                     quiet=args.quiet)
    state_path = f"{storage}/{name}/{CONFIRM_STATE}"
    if args.resume:
        text = read_text(state_path)
        if text is None:
            raise SearchError(f"--resume: no confirmation {name!r} at {storage} ({state_path} missing)")
        saved = parse_saved_json(text, state_path)
        if not isinstance(saved.get("settings"), dict) or not isinstance(saved.get("jobs"), list):
            raise StoreError(f"{state_path}: expected the keys 'settings' (an object) and 'jobs' (a list)")
        settings = SearchSettings.from_saved(saved["settings"], run, state_path).replace(name=name, tracking_uri=uri)
        try:
            jobs = [Job.from_saved(j) for j in saved["jobs"]]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise StoreError(f"{state_path}: a saved job cannot be read ({type(exc).__name__}: {exc}); restore the "
                             "file, or run the confirmation anew under another --confirm-name") from None
    else:
        variants = dict(parse_variant(v) for v in args.variant)
        seeds = list(range(args.seed, args.seed + args.seeds))
        bests = {search: best_configuration(client, experiment.experiment_id, search, args.data_dir,
                                            trials.get(search)) for search in names}
        if args.write_configs:  # each search's configuration, confirmed already or not
            for search, (found, _, run_id, config) in bests.items():
                path = Path(args.write_configs) / f"{config.model.name}.yaml"
                export_config(config.with_overrides({"train.seed": seeds[0]}, source="--seed"), path, search, run_id,
                              f"python -m dpgdiff train --dataset {found.dataset.name} --split {found.dataset.split} "
                              f"--config {path} --out runs/{path.stem}", trials.get(search))
                print(f"wrote {path}")
        try:
            first, jobs = build_jobs(client, experiment.experiment_id, bests, seeds, variants, args.ablations)
        except NothingToConfirm as exc:
            if not args.write_configs:
                raise
            print(f"{exc}: nothing to run", flush=True)
            return 0
        settings = first.replace(name=name, tracking_uri=uri, run=run, argv=tuple(argv))
        if tune_state_exists(settings.path):
            raise SearchError(f"{settings.path} exists: pass --resume to continue it, or another --confirm-name")
        write_text(state_path, json.dumps({"settings": settings.to_saved(), "jobs": [j.to_saved() for j in jobs]},
                                          indent=1))
    print(f"confirmation {name!r}: {len(jobs)} trial(s): "
          + ", ".join(sorted({f'{j.search}/{j.variant}' for j in jobs})) + f"; seeds {sorted({j.seed for j in jobs})}",
          flush=True)
    return run_confirmation(settings, jobs, experiment.experiment_id)


if __name__ == "__main__":
    from dpgdiff.cli import exit_process

    exit_process(main())
