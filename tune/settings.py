"""A search's settings: one frozen `SearchSettings`, built from the command line or from the resume file.

What a search *is* (dataset, space, trial budget, scheduler, resources per trial, MLflow target)
is saved beside Tune's experiment state as `dpgdiff_search.json` (`to_saved()`, plain JSON); a
resume rebuilds the same settings from it (`from_saved`) and ignores the command line's search
options. How *this invocation* runs (Ray address, local CPUs and temp dir, storage folder,
quiet, resuming or not) is `RunOptions`, never saved. Nothing here imports Ray at module level:
the driver sets Ray's auth mode before Ray is first imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from dpgdiff.config import parse_assignment
from dpgdiff.data.ref import DatasetRef, dataset_ref_from_args
from tune import study as optuna_study
from tune.endpoints import check_address, check_storage_uri, check_tracking_uri, tracking_uri_source
from tune.errors import SearchError, StoreError
from tune.names import UNTIL_BUDGET
from tune.space import SearchSpace, load_space, space_from_text
from tune.space_choice import card_sizing, default_space
from tune.storage import read_text
from tune.stores import check_types, parse_saved_json

REPO = Path(__file__).resolve().parent.parent  # the checkout: git commit and display paths
STATE_FILE = "dpgdiff_search.json"  # beside Tune's experiment state: what a resume needs
# A search name is a folder under --storage-path, an MLflow run name and tag value, and part of a model alias.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 100
# The no-argument search: a smaller synthetic set so it finishes in minutes on 2 CPU cores.
SYNTHETIC_DEFAULT_OPTIONS = {"n_users": 400}
FIXED_SOURCE = "--set/--epochs"  # how errors name the command line's fixed values
DEFAULT_UI_PORT = 5000  # `mlflow ui`'s own default port


@dataclass(frozen=True)
class RunOptions:
    """How this invocation runs the search (from the command line, also when resuming; not saved)."""

    storage: str  # Tune results root: an absolute local folder or a URI (s3://...)
    resuming: bool = False  # restoring an existing Tune experiment
    address: Optional[str] = None  # existing Ray cluster ('auto' or HOST:PORT); None = start a local Ray
    num_cpus: Optional[int] = None  # CPUs of the local Ray (None = all)
    ray_temp_dir: Optional[str] = None  # local Ray's temp dir (None = a new short folder under /tmp)
    ship_code: bool = False  # upload dpgdiff/ and tune/ to the workers (runtime_env py_modules)
    quiet: bool = False  # no trial table while running
    retry_errored: bool = False  # resuming: run ERROR trials again, from their last checkpoint
    ui_port: int = DEFAULT_UI_PORT  # the `mlflow ui` port the printed links name (--ui-port, env DPGDIFF_UI_PORT)
    started: float = field(default_factory=time.time)  # when this invocation started (a --time-budget counts from it)


@dataclass(frozen=True)
class SearchSettings:
    """What a search is; saved in STATE_FILE when it starts (everything but `run`)."""

    name: str  # folder under the storage path, and the MLflow parent run's name
    dataset: DatasetRef
    space_source: str  # the space file, as shown to the user
    space_text: str  # its YAML text (the space is rebuilt from it on resume)
    fixed: Mapping[str, Any]  # --set / --epochs / seed / threads fixed for every trial (dotted names)
    epochs: int  # per trial (ASHA's max_t)
    num_samples: int  # trials; tune.names.UNTIL_BUDGET (-1): as many as --time-budget allows
    seed: int  # Optuna sampler seed
    startup_trials: int  # random trials before TPE
    scheduler: Literal["asha", "fifo"]
    grace_period: int  # ASHA grace (epochs)
    reduction_factor: float  # ASHA reduction factor
    max_concurrent: Optional[int]  # trials at once (None = what the resources allow)
    cpus_per_trial: float
    gpus_per_trial: float
    max_failures: int  # retries of a failed trial
    reuse_actors: bool  # run trials one after another in the same worker process
    tracking_uri: str  # MLflow
    experiment: str  # MLflow experiment name
    created: str  # ISO time (UTC)
    git_commit: Optional[str]  # HEAD (+dirty) of the checkout, None outside git
    argv: tuple[str, ...]  # the command line that started the search
    fingerprint: Optional[str] = None  # the dataset's, once the driver has loaded it
    # What Optuna optimises (tune.results.OBJECTIVES): val_mrr_sum alone, or val_mrr_sum,infer_ms (FIFO then)
    objectives: tuple[str, ...] = ("val_mrr_sum",)
    # The space is a dataset-agnostic default: the driver fixes what the dataset card decides
    # (tune.space_choice.card_sizing)
    size_from_card: bool = False
    # The Optuna study's RDB (tune/study.py; the study is named as the search); None = in Ray's searcher pickle only
    # (searches saved before it existed)
    optuna_storage: Optional[str] = None
    # --warm-start: the earlier searches' best configurations, mapped onto this space, that the first trials run
    # (tune/warmstart.py: [{"search", "run_id", "value", "params"}]); enqueued once, when the searcher is built
    warm_start: tuple[Mapping[str, Any], ...] = ()
    # --time-budget in seconds (tune/budget.py): the search stops its trials when it is spent, earlier drivers'
    # time included; None = no budget
    time_budget_s: Optional[float] = None
    run: RunOptions = field(default_factory=lambda: RunOptions(storage="ray_results"), compare=False)

    @property
    def path(self) -> str:
        """The search's Tune experiment folder (or URI)."""
        return f"{self.run.storage}/{self.name}"

    @functools.cached_property
    def space(self) -> SearchSpace:
        """The validated space with the fixed values applied (built once per process)."""
        return space_from_text(self.space_text, self.space_source).with_fixed(dict(self.fixed), source=FIXED_SOURCE)

    def to_saved(self) -> dict[str, Any]:
        """Plain JSON-able dict of everything but `run` (the resume file, MLflow's search_settings.json)."""
        saved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run"}
        return {**saved, "dataset": self.dataset.to_dict(), "fixed": dict(self.fixed), "argv": list(self.argv),
                "objectives": list(self.objectives), "warm_start": [dict(p) for p in self.warm_start]}

    @classmethod
    def from_saved(cls, data: Mapping[str, Any], run: RunOptions, source: str) -> "SearchSettings":
        """Inverse of `to_saved`; also reads the flat format of searches started before it existed."""
        if not isinstance(data, Mapping):
            raise StoreError(f"{source}: expected a JSON object of search settings, got {type(data).__name__}")
        data = _upgrade_saved(dict(data))
        known = {f.name for f in dataclasses.fields(cls)} - {"run"}
        unknown, missing = set(data) - known, {f.name for f in dataclasses.fields(cls)
                                               if f.name in known and f.name not in data
                                               and f.default is dataclasses.MISSING}
        if unknown or missing:
            raise StoreError(f"{source}: not a search settings file this version can read "
                             f"(unknown keys {sorted(unknown)}, missing keys {sorted(missing)})")
        check_types(data, cls, source)
        try:
            return cls(**{**data, "dataset": DatasetRef.from_dict(data["dataset"]), "argv": tuple(data["argv"]),
                          "objectives": tuple(data.get("objectives", ("val_mrr_sum",))),
                          "warm_start": tuple(data.get("warm_start", ())), "run": run})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # inside a value (the dataset's keys)
            raise StoreError(f"{source}: a saved value cannot be read ({type(exc).__name__}: {exc}); restore the "
                             "file, or start a new search under another --name") from None

    def replace(self, **changes: Any) -> "SearchSettings":
        """`dataclasses.replace` that keeps the built space when the space's inputs do not change."""
        new = dataclasses.replace(self, **changes)
        if "space" in self.__dict__ and not {"space_text", "space_source", "fixed"} & changes.keys():
            new.__dict__["space"] = self.__dict__["space"]
        return new

    def sized_from_card(self, card: Any, sized_already: Optional[bool] = None) -> "SearchSettings":
        """A new search on a dataset-agnostic space: the card's sizes (tune.space_choice.card_sizing) added to `fixed`,
        except where the space or the command line sets the field already; prints what and why. sized_already:
        the saved `fixed` has them (default: when resuming; not when the driver that saved it was killed before
        it loaded the data)."""
        if not self.size_from_card or (self.run.resuming if sized_already is None else sized_already):
            return self
        sized = {k: v for k, v in card_sizing(card, gpu=self.gpus_per_trial > 0).items()
                 if k not in self.space.fixed and k not in self.space.params}
        for key, (value, why) in sized.items():
            print(f"sized from the dataset card: {key}={value} ({why})", flush=True)
        return self.replace(fixed={**self.fixed, **{k: v for k, (v, _) in sized.items()}}) if sized else self

    def with_dataset(self, dataset: Any) -> "SearchSettings":
        """The settings with the loaded dataset's split and fingerprint filled in."""
        return self.replace(dataset=dataclasses.replace(self.dataset, split=dataset.split),
                            fingerprint=dataset.fingerprint)


def _upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """Searches saved before SearchSettings: dataset fields at top level, and the train function's import path."""
    if isinstance(data.get("dataset"), str):
        data["dataset"] = {"name": data.pop("dataset"), "split": data.pop("split", None),
                           "data_dir": data.pop("data_dir", None), "options": data.pop("options", {})}
        data.pop("train_fn", None)  # stubs are passed to run_search now, never saved
    return data


# ------------------------------------------------------------------------------------- building


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """A new search from the command line, or the saved settings of the one to resume."""
    run = RunOptions(storage=_storage_path(args.storage_path), address=args.address, num_cpus=args.num_cpus,
                     ray_temp_dir=args.ray_temp_dir, ship_code=args.ship_code, quiet=args.quiet,
                     retry_errored=args.retry_errored, ui_port=ui_port(args.ui_port))
    run = _check_run_options(args, run)
    name = args.name
    if name is None and args.resume:
        name = _latest_search(run.storage)
        if name is None:
            raise SearchError(f"--resume: no search to resume in {run.storage}; pass --name")
    if name is not None:
        check_search_name(name, "--name" if args.name is not None else f"the latest search in {run.storage}")
        saved = _saved_settings(name, run, args)
        if saved is not None:
            check_tracking_uri(saved.tracking_uri, "--tracking-uri" if args.tracking_uri else f"{STATE_FILE}: tracking_uri")
            check_local_cpus(saved)
            return saved
        if args.resume:
            raise SearchError(f"--resume: nothing to resume at {run.storage}/{name} (no Tune experiment state there)")
    settings = _new_settings(args, name, run)
    check_local_cpus(settings)
    return settings


def _saved_settings(name: str, run: RunOptions, args: argparse.Namespace) -> Optional[SearchSettings]:
    """The settings saved by search `name`, or None when there is no Tune experiment to restore there."""
    path = f"{run.storage}/{name}"
    if "://" not in path and not Path(path).is_dir():  # a new search: no need to import Ray to know
        return None
    from ray import tune

    text = read_text(f"{path}/{STATE_FILE}")
    if text is None:
        if tune.Tuner.can_restore(path):
            raise SearchError(f"{path} holds a Tune experiment but no {STATE_FILE}: not a tune/search.py search")
        return None
    # With the settings saved but no Tune state (a driver killed in its first seconds), the search is resumed
    # all the same: tune.tuner.build_tuner then starts its trials anew under the same name, and says so.
    source = f"{path}/{STATE_FILE}"
    settings = SearchSettings.from_saved(parse_saved_json(text, source), dataclasses.replace(run, resuming=True),
                                         source)
    if args.tracking_uri:
        settings = settings.replace(tracking_uri=args.tracking_uri)
    print(f"resuming search {name!r} from {path} (settings as saved; CLI search options ignored)", flush=True)
    return settings


def check_search_name(name: str, source: str = "--name") -> None:
    """One check for new and resumed searches, before anything is read: the name is a plain folder name inside
    --storage-path (no separator, no '..', not hidden), in characters every use of it takes as they are (the
    MLflow search filter, the UI link, report.py --name, the model alias), and short enough for any filesystem."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise SearchError(f"{source} {name[:MAX_NAME_LENGTH + 20]!r}{'...' if len(name) > MAX_NAME_LENGTH + 20 else ''}: "
                          f"a search name is 1 to {MAX_NAME_LENGTH} characters (got {len(name)}) of letters, digits, "
                          "'.', '_' and '-', not starting with '.' (it is a folder under --storage-path)")


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric search flag, before anything starts (Tune's own checks are asserts, after Ray started)."""
    checks = (  # flag, value (None = not given: its default applies), what it must be, the test
        ("--num-samples", args.num_samples, "> 0", lambda v: v > 0),
        ("--cpus-per-trial", args.cpus_per_trial, "> 0", lambda v: v > 0),
        ("--gpus-per-trial", args.gpus_per_trial, ">= 0", lambda v: v >= 0),
        ("--max-failures", args.max_failures, ">= 0", lambda v: v >= 0),
        ("--epochs", args.epochs, ">= 1", lambda v: v >= 1),
        ("--startup-trials", args.startup_trials, ">= 0", lambda v: v >= 0),
        ("--grace-period", args.grace_period, ">= 1 (epochs)", lambda v: v >= 1),
        ("--reduction-factor", args.reduction_factor, "> 1 (ASHA keeps 1/reduction_factor of the trials per rung)",
         lambda v: v > 1),
        ("--max-concurrent", args.max_concurrent, ">= 1", lambda v: v >= 1),
    )
    checks += (("--seed", args.seed, f"between 0 and {2**32 - 1} (Optuna's and NumPy's seed range)",
                lambda v: 0 <= v < 2**32),)
    for flag, value, expected, ok in checks:
        if value is not None and not (ok(value) and (isinstance(value, int) or math.isfinite(value))):
            raise SearchError(f"{flag} {value}: must be {expected}")
    if args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer():
        raise SearchError(f"--gpus-per-trial {args.gpus_per_trial}: above 1 it must be a whole number")


ENV_UI_PORT = "DPGDIFF_UI_PORT"


def ui_port(flag: Optional[int]) -> int:
    """The port of `mlflow ui` that the links a search prints name: --ui-port, else env DPGDIFF_UI_PORT, else
    5000 (`mlflow ui`'s default). SearchError names the flag or variable of a value that is not a port."""
    value, source = (flag, "--ui-port") if flag is not None else (os.environ.get(ENV_UI_PORT) or None, ENV_UI_PORT)
    if value is None:
        return DEFAULT_UI_PORT
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise SearchError(f"{source} {value!r}: expected a port number, 1 to 65535 (the one `mlflow ui --port` uses)")
    return port


def _check_run_options(args: argparse.Namespace, run: RunOptions) -> RunOptions:
    """The flags of this invocation (also checked when resuming): --retry-errored, local CPUs, the storage folder,
    the cluster's address (-> `run` with the address to join: 'auto' resolved)."""
    if args.retry_errored and not args.resume:
        raise SearchError("--retry-errored: only with --resume (it reruns the failed trials of an existing search)")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise SearchError(f"--num-cpus {args.num_cpus}: must be >= 1")
    if _local_ray(args.address):  # its socket paths
        from tune.leftovers import RAY_TMPDIR, socket_room_error, temp_root

        too_long = (socket_room_error(args.ray_temp_dir, "--ray-temp-dir", inside=False) if args.ray_temp_dir
                    else socket_room_error(str(temp_root()), f"${RAY_TMPDIR}", inside=True))
        if too_long:
            raise SearchError(too_long)
    if "://" not in run.storage:
        folder = Path(run.storage)
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise SearchError(f"--storage-path {args.storage_path}: {existing} is a file, not a folder")
        try:  # made now (it is, by any search that starts): /proc, a read-only disk or a folder of another user
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise SearchError(f"--storage-path {args.storage_path}: cannot write there ({exc.strerror or exc}); "
                              "pass a folder this user can write to") from None
    else:
        check_storage_uri(run.storage)
    return dataclasses.replace(run, address=check_address(args.address))  # last: it may take seconds


def check_local_cpus(settings: "SearchSettings") -> None:
    """A local Ray has this machine's CPUs (or --num-cpus): a trial asking for more could never run. Refused
    before the MLflow store is created or Ray starts (a cluster's nodes are checked once joined)."""
    if settings.run.address not in (None, "local"):
        return
    have = settings.run.num_cpus or os.cpu_count() or 1
    if settings.cpus_per_trial > have:
        raise SearchError(f"--cpus-per-trial {settings.cpus_per_trial:g}: the local Ray has {have} CPU(s)"
                          f"{' (--num-cpus)' if settings.run.num_cpus else ''}; lower it to at most {have}")


def _fixed_values(args: argparse.Namespace, space: SearchSpace) -> dict[str, Any]:
    """--set values, plus train.epochs (--epochs), train.seed and train.num_threads unless fixed already."""
    overrides = dict(parse_assignment(a, "--set") for a in args.overrides)
    fixed = dict(overrides)
    epochs = args.epochs if args.epochs is not None else overrides.get("train.epochs", space.fixed.get("train.epochs"))
    if epochs is not None:
        fixed["train.epochs"] = epochs
    if "train.seed" not in overrides and "train.seed" not in space.fixed:
        fixed["train.seed"] = args.seed
    if "train.num_threads" not in overrides and "train.num_threads" not in space.fixed:
        fixed["train.num_threads"] = max(1, int(args.cpus_per_trial))  # no oversubscription of the CPUs
    return fixed


def _dataset_ref(args: argparse.Namespace) -> DatasetRef:
    ref = dataset_ref_from_args(args)
    if not ref.options and Path(ref.name).stem.lower() == "synthetic":
        ref = dataclasses.replace(ref, options=dict(SYNTHETIC_DEFAULT_OPTIONS))
    if ref.data_dir:  # workers may run elsewhere: an absolute folder
        ref = dataclasses.replace(ref, data_dir=str(Path(ref.data_dir).resolve()))
    return ref


def _objectives(args: argparse.Namespace) -> tuple[str, ...]:
    """--objectives: val_mrr_sum first (the search still registers its best accuracy), then infer_ms."""
    from tune.results import METRIC, OBJECTIVES

    names = tuple(n.strip() for n in (getattr(args, "objectives", None) or METRIC).split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names or names[0] != METRIC or len(set(names)) != len(names):
        raise SearchError(f"--objectives {','.join(names)!r}: expected {METRIC} or {METRIC},infer_ms "
                          f"(known: {', '.join(OBJECTIVES)})")
    if len(names) > 1 and args.scheduler == "asha":
        print("--objectives with two objectives: ASHA ranks trials on one metric, so the search runs FIFO "
              "(every trial to the end; Optuna sees both objectives)", flush=True)
    return names


def _new_settings(args: argparse.Namespace, name: Optional[str], run: RunOptions) -> SearchSettings:
    from dpgdiff.data import check_dataset_name

    check_dataset_name(args.dataset)  # before the space (its default follows the name) or anything is printed
    _check_numbers(args)
    objectives = _objectives(args)
    choice = None if args.space else default_space(args.dataset, gpu=args.gpus_per_trial > 0)
    space_path = Path(args.space) if args.space else choice.path
    if choice is not None:
        print(f"search space {_display_path(space_path)}: {choice.reason}", flush=True)
    file_space = load_space(space_path)  # validates: errors name the file and key
    fixed = _fixed_values(args, file_space)
    space = file_space.with_fixed(fixed, source=FIXED_SOURCE)
    _check_init_from(space.base_values().get("train.init_from"), space_path, fixed, run)
    epochs = space.base_values()["train.epochs"]
    if not args.experiment.strip():
        raise SearchError(f"--experiment {args.experiment!r}: an MLflow experiment name cannot be empty")
    grace = args.grace_period or min(10, max(1, epochs // 4))
    if args.grace_period is not None and args.scheduler == "asha" and len(objectives) == 1 and grace >= epochs:
        print(f"note: --grace-period {grace} >= {epochs} epoch(s): ASHA's first rung is the last epoch, so it will "
              "not stop any trial early (every trial trains all epochs, as with --scheduler fifo)", flush=True)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(args.dataset).stem).lstrip(".")[:60] or "search"
    name = name or f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _default_tracking_uri()
    # checked before the warm start reads the store: a bad URI fails here with its source named
    check_tracking_uri(tracking_uri, tracking_uri_source(bool(args.tracking_uri)))
    optuna_storage = _optuna_storage(args, tracking_uri)  # checked before anything imports Ray
    num_samples = _num_samples(args)
    settings = SearchSettings(
        name=name, dataset=_dataset_ref(args), space_source=_display_path(space_path), space_text=space.text,
        fixed=fixed, epochs=epochs, num_samples=num_samples, seed=args.seed,
        startup_trials=args.startup_trials if args.startup_trials is not None else default_startup_trials(num_samples),
        scheduler="fifo" if len(objectives) > 1 else args.scheduler, objectives=objectives,
        grace_period=grace,
        reduction_factor=args.reduction_factor, max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
        reuse_actors=args.reuse_actors,
        tracking_uri=tracking_uri,
        experiment=args.experiment, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        git_commit=git_commit(), argv=tuple(args.argv), size_from_card=bool(choice and choice.from_card),
        optuna_storage=optuna_storage,
        warm_start=_warm_start(args, space, tracking_uri, num_samples),
        time_budget_s=parse_duration(args.time_budget) if getattr(args, "time_budget", None) else None, run=run)
    settings.__dict__["space"] = space  # already built and checked: seed the cached property, do not parse twice
    return settings


def _local_ray(address: Optional[str]) -> bool:
    """Whether the search starts a Ray of its own on this machine (no --address, no RAY_ADDRESS)."""
    return address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def _check_init_from(value: Any, space_path: Path, fixed: Mapping[str, Any], run: RunOptions) -> None:
    """train.init_from (a stage-a checkpoint every trial copies) before Ray starts: every trial would otherwise
    fail on it. Trials run in their own folders, so the path must be absolute; on a local Ray it must exist."""
    if not value:
        return
    source = "--set train.init_from" if "train.init_from" in fixed else f"{_display_path(space_path)}: train.init_from"
    if not Path(value).is_absolute():
        raise SearchError(f"{source}={value!r}: trials run in their own folders; give an absolute path "
                          f"(e.g. --set train.init_from=$PWD/{value})")
    if _local_ray(run.address) and not Path(value).is_file():
        raise SearchError(f"{source}={value!r}: no such file (expected a trained checkpoint, e.g. a SASRec's best.pt)")


DEFAULT_NUM_SAMPLES = 8


def _num_samples(args: argparse.Namespace) -> int:
    """--num-samples; not given: DEFAULT_NUM_SAMPLES, or with --time-budget as many trials as the budget allows
    (tune.names.UNTIL_BUDGET: Tune starts trials until the budget stops the search)."""
    if args.num_samples is not None:
        return args.num_samples
    return UNTIL_BUDGET if getattr(args, "time_budget", None) else DEFAULT_NUM_SAMPLES


def default_startup_trials(num_samples: int) -> int:
    """Random trials before TPE: half the trials, 2 to 10 (Optuna's own default, 10, for a search bounded by its
    time budget only)."""
    return 10 if num_samples == UNTIL_BUDGET else min(10, max(2, num_samples // 2))


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """"45m", "2h", "90s", "1h30m", "1.5h" -> seconds (> 0); SearchError naming the flag otherwise."""
    compact = str(text).strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise SearchError(f"{flag} {text!r}: expected a duration such as 45m, 2h, 90s or 1h30m")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise SearchError(f"{flag} {text!r}: must be more than 0 seconds")
    return seconds


def _warm_start(args: argparse.Namespace, space: SearchSpace, tracking_uri: str,
                num_samples: int) -> tuple[dict[str, Any], ...]:
    """--warm-start NAME[,NAME...] / --warm-start-k: the earlier searches' best configurations (tune/warmstart.py)."""
    from tune.warmstart import DEFAULT_K, WarmStartError, warm_start_points

    names = [n.strip() for n in (getattr(args, "warm_start", None) or "").split(",") if n.strip()]
    if not names:
        return ()
    k = getattr(args, "warm_start_k", DEFAULT_K)
    if k < 1:
        raise SearchError(f"--warm-start-k {k}: must be >= 1")
    try:
        points = warm_start_points(names, k, space, tracking_uri, args.experiment)
    except WarmStartError as exc:
        raise SearchError(str(exc)) from None
    if 0 < num_samples < len(points):
        print(f"warm start: {len(points)} configurations but --num-samples {num_samples}: only the first "
              f"{num_samples} run", flush=True)
    return tuple(points)


def _optuna_storage(args: argparse.Namespace, tracking_uri: str) -> str:
    """--optuna-storage (checked), else optuna.db beside the MLflow store (tune/study.py)."""
    if getattr(args, "optuna_storage", None):
        try:
            return optuna_study.check_storage_url(args.optuna_storage)
        except optuna_study.StudyError as exc:
            raise SearchError(str(exc)) from None
    return optuna_study.default_storage(tracking_uri)


def _default_tracking_uri() -> str:
    from tune.stores import local_tracking_uri  # Ray-free: a refused flag must not wait for Ray's import

    return local_tracking_uri("mlruns")


def _latest_search(storage: str) -> Optional[str]:
    if "://" in storage:
        return None
    found = sorted(Path(storage).glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.name if found else None


def git_commit() -> Optional[str]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------- storage


def _storage_path(path: str) -> str:
    return path.rstrip("/") if "://" in path else str(Path(path).resolve())


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
