"""The Ray Tune function trainable: one trial = one `dpgdiff.train` run reporting through `tune.report`.

The driver hands every trial the same `TrialSpec` (the dataset's `DatasetRef` and fingerprint, the
search space, the train function) through `tune.with_parameters`; the trial config holds only the
sampled hyperparameters. Each worker process loads the dataset once (`_DATASETS`, keyed by
`DatasetRef.key()`), so reused actors (`reuse_actors=True`) do not reload it.

Reports: one per validation pass, `{"epoch", "node_id", "train_loss", ..., "val_*"}` with the training
checkpoint folder (resume: `tune.get_checkpoint()` -> `train(resume_from=...)`), then one final
report `{"final": 1, "best_epoch", best "val_*", "infer_ms", last "train_loss"}` whose checkpoint holds `best.pt`
(the model `python -m dpgdiff evaluate` loads), `config.yaml` and `final.json`. A search's trials are
not tested (the driver tests only the trial it selects, tune/finish.py); with
`TrialSpec.evaluate_test` (tune/confirm.py's reruns) the final report also has `test_*` and the
checkpoint `test_ranks.npz` (per-case test ranks). `infer_ms` is the last validation pass's
ms per 1,000 cases (dpgdiff/training/loop.py), the second objective of `--objectives`. Inside an epoch
the trial also publishes how far it is (`TuneReporter.progress`) for the driver's status line.

The trial config may carry `OPTUNA_TRIAL_KEY` (tune/tuner.py's searcher adds the Optuna trial
number, so that it is saved with the trial and survives a resume) and `WARM_START_KEY` (the earlier
search a warm-start trial's configuration comes from, tune/warmstart.py); `sampled_params` drops both.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ray import tune

from dpgdiff.data.ref import DatasetRef
from dpgdiff.files import atomic_write_text
from dpgdiff.training.loop import RANKS_FILE

FINAL_MARKER = "final.json"  # in the final checkpoint: the trial is complete, nothing to resume
OPTUNA_TRIAL_KEY = "optuna_trial"  # in a trial's config: its Optuna trial number (not a hyperparameter)
WARM_START_KEY = "warm_start"  # in a warm-start trial's config: the search its configuration comes from

_DATASETS: dict[str, Any] = {}  # per worker process: DatasetRef.key() -> dataset


class NonFiniteMetricError(FloatingPointError):
    """A reported metric is NaN or infinite: the trial fails instead of misleading the searcher."""


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a search shares (built once by the driver, shipped to the workers)."""

    dataset: DatasetRef
    fingerprint: Optional[str]  # the driver's dataset fingerprint: every node must see the same data
    space: Any  # tune.space.SearchSpace, validated on the driver: resolves a trial's Config
    train_fn: Callable[..., Any]  # dpgdiff.train, or a stand-in with its signature (tests)
    # Test the trial's best state (train(test=True)): test_* metrics and test_ranks.npz in the final
    # checkpoint. False for a search's trials: selection sees validation only (issue 13 §4).
    evaluate_test: bool = False
    # With evaluate_test: also test the best state at these reverse-step counts K (RQ4, `steps_curve`).
    test_steps: tuple[int, ...] = ()


def sampled_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config's hyperparameters (without the Optuna trial number)."""
    return {k: v for k, v in config.items() if k not in (OPTUNA_TRIAL_KEY, WARM_START_KEY)}


def load_dataset_cached(ref: DatasetRef) -> Any:
    """`ref.load()`, once per process (actors are reused across trials)."""
    key = ref.key()
    if key not in _DATASETS:
        _DATASETS.clear()  # one dataset per search; do not hold several in memory
        _DATASETS[key] = ref.load()
    return _DATASETS[key]


class TuneReporter:
    """`dpgdiff.train` Reporter -> `tune.report`, with the training checkpoint folder attached."""

    wants_checkpoint = True

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise NonFiniteMetricError(f"epoch {epoch}: non-finite metric(s) {bad}")
        # node_id: which Ray node trained it (Tune adds node_ip and pid); names the node if it is lost (tracking.py)
        metrics = {**metrics, "epoch": int(epoch), "node_id": _node_id()}
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)  # copies the folder to storage before returning

    def progress(self, epoch: int, examples_done: int, examples_total: int, seconds: float) -> None:
        """In-epoch progress (dpgdiff/training/loop.py's hook) -> the driver's status line (tune/progress.py),
        through tune/ray_internals.py's channel; not a Tune result."""
        from tune.ray_internals import put_progress

        put_progress(tune.get_context().get_trial_id(), {"epoch": int(epoch), "done": int(examples_done),
                                                         "total": int(examples_total), "seconds": float(seconds),
                                                         "time": time.time()})


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Train one sampled config; `spec` is the same for every trial of a search (see tune/tuner.py)."""
    # One "Checkpoint successfully created" line per epoch per trial drowns the trial table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    context = tune.get_context()
    cfg = spec.space.resolve(sampled_params(config), source=f"trial {context.get_trial_id()}")
    dataset = load_dataset_cached(spec.dataset)
    if spec.fingerprint and dataset.fingerprint != spec.fingerprint:
        raise RuntimeError(
            f"dataset {spec.dataset.name!r} on this worker has fingerprint {dataset.fingerprint[:12]}, the driver "
            f"saw {spec.fingerprint[:12]}: the nodes do not see the same data files"
        )
    scratch = _scratch_dir(context)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            final = Path(folder, FINAL_MARKER)
            if final.exists():  # the driver died after the final report: repeat it, do not retrain
                shutil.rmtree(scratch, ignore_errors=True)
                tune.report(json.loads(final.read_text()), checkpoint=checkpoint)
                return
            _train_and_report(spec.train_fn, cfg, dataset, resume_from=Path(folder), out_dir=scratch,
                              test=spec.evaluate_test, test_steps=spec.test_steps)
    else:
        _train_and_report(spec.train_fn, cfg, dataset, resume_from=None, out_dir=scratch, test=spec.evaluate_test,
                          test_steps=spec.test_steps)


def _scratch_dir(context: Any) -> Path:
    """A temp folder for train()'s out_dir. Tune runs a trial in its own working directory inside Ray's
    session dir (RAY_CHDIR_TO_TRIAL_DIR, on by default; never synced to storage), so a killed trial's
    files go when the session's temp dir does. Not `get_trial_dir()`: that is the driver's staging
    folder, which Tune syncs to storage. Falls back to the system temp dir."""
    cwd = Path.cwd()
    inside_trial = cwd.name == Path(context.get_trial_dir()).name  # working_dirs/<trial dir name>
    return Path(tempfile.mkdtemp(prefix="dpgdiff-trial-", dir=cwd if inside_trial else None))


def _train_and_report(train: Callable[..., Any], cfg: Any, dataset: Any, resume_from: Optional[Path],
                      out_dir: Path, test: bool = True, test_steps: tuple[int, ...] = ()) -> None:
    try:
        # test=False only when skipping: train functions without the keyword still work for test=True.
        result = train(cfg, dataset, reporter=TuneReporter(), resume_from=resume_from, out_dir=out_dir,
                       **({} if test else {"test": False}))
        last_epoch = max((int(h.get("epoch", 0)) for h in result.history), default=int(result.best_epoch))
        timed = [h["infer_ms"] for h in result.history if "infer_ms" in h]
        curve = {}
        if test and test_steps and result.checkpoint_path is not None and Path(result.checkpoint_path).exists():
            from dpgdiff.training import load_model
            from dpgdiff.training.loop import steps_curve

            best, best_cfg, _ = load_model(result.checkpoint_path, dataset)
            curve = steps_curve(best, dataset, best_cfg, test_steps)
        final = {
            **{k: v for k, v in result.best_val.items() if k.startswith("val_")},
            **(result.test if test else {}),
            **curve,
            **({"infer_ms": float(timed[-1])} if timed else {}),  # the final validation pass
            "epoch": last_epoch,  # ASHA's time_attr must not go backwards
            # the last epoch's loss: the status table's loss column (the val_* above are the best epoch's)
            **({"train_loss": float(result.history[-1]["train_loss"])}
               if result.history and "train_loss" in result.history[-1] else {}),
            "best_epoch": int(result.best_epoch),
            "final": 1,
        }
        folder = out_dir / "final"
        folder.mkdir()
        if result.checkpoint_path is not None and Path(result.checkpoint_path).exists():
            shutil.copy2(result.checkpoint_path, folder / "best.pt")
        if (out_dir / RANKS_FILE).exists():  # per-case test ranks: tune/confirm.py's paired tests read them
            shutil.copy2(out_dir / RANKS_FILE, folder / RANKS_FILE)
        cfg.to_yaml(folder / "config.yaml")
        atomic_write_text(folder / FINAL_MARKER, json.dumps(final, indent=1))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
