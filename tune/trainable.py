"""The Ray Tune function trainable: one trial = one `dpgdiff.train` run reporting through `tune.report`.

The driver hands every trial the same small `spec` dict (dataset name/split/options and its
fingerprint, the search space, the train function's import path) through `tune.with_parameters`;
the trial config holds only the sampled hyperparameters. Each worker process loads the dataset
once (`_DATASETS`), so reused actors (`reuse_actors=True`) do not reload it.

Reports: one per validation pass, `{"epoch", "train_loss", ..., "val_*"}` with the training
checkpoint folder (resume: `tune.get_checkpoint()` -> `train(resume_from=...)`), then one final
report `{"final": 1, "best_epoch", "test_*", best "val_*"}` whose checkpoint holds `best.pt`
(the model `python -m dpgdiff evaluate` loads) and `final.json`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from ray import tune

from dpgdiff.files import atomic_write_text

FINAL_MARKER = "final.json"  # in the final checkpoint: the trial is complete, nothing to resume
DEFAULT_TRAIN_FN = "dpgdiff.train:train"

_DATASETS: dict[tuple, Any] = {}  # per worker process: (name, split, data_dir, options) -> dataset
_FUNCTIONS: dict[str, Callable] = {}


class NonFiniteMetricError(FloatingPointError):
    """A reported metric is NaN or infinite: the trial fails instead of misleading the searcher."""


def load_dataset_cached(name: str, split: Optional[str], data_dir: Optional[str], options: dict[str, Any]) -> Any:
    """`dpgdiff.data.load_dataset`, once per process (actors are reused across trials)."""
    key = (name, split, data_dir, tuple(sorted(options.items())))
    if key not in _DATASETS:
        from dpgdiff.data import load_dataset

        _DATASETS.clear()  # one dataset per search; do not hold several in memory
        _DATASETS[key] = load_dataset(name, split=split, data_dir=data_dir, **options)
    return _DATASETS[key]


def import_function(path: str) -> Callable:
    """"package.module:function" -> the function (cached per process)."""
    if path not in _FUNCTIONS:
        module, _, attr = path.partition(":")
        if not attr:
            raise ValueError(f"train function {path!r} must look like package.module:function")
        _FUNCTIONS[path] = getattr(importlib.import_module(module), attr)
    return _FUNCTIONS[path]


class TuneReporter:
    """`dpgdiff.train` Reporter -> `tune.report`, with the training checkpoint folder attached."""

    wants_checkpoint = True

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise NonFiniteMetricError(f"epoch {epoch}: non-finite metric(s) {bad}")
        metrics = {**metrics, "epoch": int(epoch)}
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)  # copies the folder to storage before returning


def run_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Train one sampled config; `spec` is the same for every trial of a search (see search.py)."""
    # One "Checkpoint successfully created" line per epoch per trial drowns the trial table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    space = spec["space"]  # a tune.space.SearchSpace, validated on the driver
    trial_id = tune.get_context().get_trial_id()
    cfg = space.resolve(config, source=f"trial {trial_id}")
    dataset = load_dataset_cached(spec["dataset"], spec.get("split"), spec.get("data_dir"), spec.get("options", {}))
    if spec.get("fingerprint") and dataset.fingerprint != spec["fingerprint"]:
        raise RuntimeError(
            f"dataset {spec['dataset']!r} on this worker has fingerprint {dataset.fingerprint[:12]}, the driver "
            f"saw {spec['fingerprint'][:12]}: the nodes do not see the same data files"
        )
    train = import_function(spec.get("train_fn") or DEFAULT_TRAIN_FN)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            final = Path(folder, FINAL_MARKER)
            if final.exists():  # the driver died after the final report: repeat it, do not retrain
                tune.report(json.loads(final.read_text()), checkpoint=checkpoint)
                return
            _train_and_report(train, cfg, dataset, resume_from=Path(folder))
    else:
        _train_and_report(train, cfg, dataset, resume_from=None)


def _scratch_dir() -> Path:
    """A temp folder for train()'s out_dir inside Ray's session dir, so a killed trial's files go when
    the session's temp dir does (falls back to the system temp dir)."""
    try:
        import ray

        base = ray._private.worker._global_node.get_session_dir_path()  # private API: best effort
    except Exception:
        base = None
    return Path(tempfile.mkdtemp(prefix="dpgdiff-trial-", dir=base))


def _train_and_report(train: Callable, cfg: Any, dataset: Any, resume_from: Optional[Path]) -> None:
    out_dir = _scratch_dir()
    try:
        result = train(cfg, dataset, reporter=TuneReporter(), resume_from=resume_from, out_dir=out_dir)
        last_epoch = max((int(h.get("epoch", 0)) for h in result.history), default=int(result.best_epoch))
        final = {
            **{k: v for k, v in result.best_val.items() if k.startswith("val_")},
            **result.test,
            "epoch": last_epoch,  # ASHA's time_attr must not go backwards
            "best_epoch": int(result.best_epoch),
            "final": 1,
        }
        folder = out_dir / "final"
        folder.mkdir()
        if result.checkpoint_path is not None and Path(result.checkpoint_path).exists():
            shutil.copy2(result.checkpoint_path, folder / "best.pt")
        cfg.to_yaml(folder / "config.yaml")
        atomic_write_text(folder / FINAL_MARKER, json.dumps(final, indent=1))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
