"""Warm starts: the first trials of a new search are the best configurations of earlier searches (--warm-start).

    python tune/search.py --dataset movie_book --warm-start fk-a,fk-b --warm-start-k 3

`warm_start_points` reads each named search from the MLflow store (its parent run, tag dpgdiff.search; its
trial runs ranked by best_val_mrr_sum, failed ones left out), takes the best k, and maps each run's full
resolved config (its config.yaml artifact, else its sampled parameters, tag dpgdiff.sampled) onto the new
space's parameters. Keys the new space does not sample are skipped, and named; a number outside the new
range is clipped to it (onto its step grid), a category the new space lacks is skipped, and both are said.
The points are saved with the search's settings; the driver enqueues them in the Optuna study once, when the
searcher is built (`enqueue`), so a resumed search, whose searcher comes back from Tune's saved state, never
enqueues them again. Each enqueued trial carries the user attribute WARM_START_TAG (tune/names.py), which the searcher
copies into the trial's config (tune.trainable.WARM_START_KEY): MLflow tags its run dpgdiff.warm_start=<search>
and the trial table shows the search's name.

A name that ends in .yaml or .yml is a training config file instead (`python -m dpgdiff train --config`), one
configuration: the committed best of the Food-Kitchen searches is what a fresh clone has to start from, since the
MLflow store is not committed.

    python tune/search.py --dataset movie_book --warm-start configs/food_kitchen-cpu/dpgdiff.yaml
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from tune.names import ROLE_SEARCH, ROLE_TAG, SAMPLED_TAG, SEARCH_TAG, WARM_START_TAG
from tune.space import SearchSpace, flatten

SCORE = "best_val_mrr_sum"  # what ranks an earlier search's trial runs (tune/tracking.py logs it)
DEFAULT_K = 3


class WarmStartError(ValueError):
    """A named search is not in the MLflow store or has no trial to start from, or a named config file is missing
    or invalid."""


def warm_start_points(names: Sequence[str], k: int, space: SearchSpace, tracking_uri: str, experiment: str,
                      log: Any = print) -> list[dict[str, Any]]:
    """[{"search", "run_id", "value", "params"}], the best k trial runs of each named search (in the order
    named, best first; a configuration already taken is not repeated), mapped onto `space` (see module doc)."""
    from tune import tracking

    client = tracking.client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    points: list[dict[str, Any]] = []
    seen: set[str] = set()

    def is_new(params: dict[str, Any]) -> bool:
        """Whether this configuration is not taken yet (and take note of it)."""
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            return False
        seen.add(key)
        return True

    for name in names:
        if is_config_file(name):
            point = config_file_point(name, space, log)
            if is_new(point["params"]):
                points.append(point)
            continue
        wanted = {SEARCH_TAG: name, ROLE_TAG: ROLE_SEARCH}
        parents = tracking.find_runs(client, exp.experiment_id, wanted) if exp is not None else []
        if not parents:
            raise WarmStartError(f"--warm-start {name}: no search {name!r} in the MLflow store {tracking_uri} "
                                 f"(experiment {experiment!r})")
        runs = [r for r in tracking.child_runs(client, exp.experiment_id, parents[0].info.run_id)
                if r.info.status == "FINISHED" and _finite(r.data.metrics.get(SCORE))]
        if not runs:
            raise WarmStartError(f"--warm-start {name}: search {name!r} has no finished trial with a validation "
                                 "score to start from")
        runs.sort(key=lambda r: r.data.metrics[SCORE], reverse=True)
        skipped: dict[str, None] = {}
        taken = 0
        for run in runs:
            if taken == k:
                break
            config, sampled = _run_config(client, run)
            params, notes = map_onto_space(config, sampled, space, skipped)
            if not is_new(params):
                continue
            taken += 1
            points.append({"search": name, "run_id": run.info.run_id,
                           "value": float(run.data.metrics[SCORE]), "params": params})
            for note in notes:
                log(f"warm start from {name}, run {run.info.run_id[:8]}: {note}")
        log(f"warm start: the best {taken} configuration(s) of search {name!r} (val MRR sum "
            + ", ".join(f"{p['value']:.4f}" for p in points if p["search"] == name) + ") start this search"
            + (f"; keys this space does not sample, skipped: {', '.join(skipped)}" if skipped else ""))
    return points


def is_config_file(name: str) -> bool:
    """A --warm-start entry that names a training config file rather than an earlier search."""
    return name.lower().endswith((".yaml", ".yml"))


def config_file_point(path: str, space: SearchSpace, log: Any = print) -> dict[str, Any]:
    """{"search": path, "run_id": None, "value": None, "params"}: a training config file (validated as
    `train --config` validates it) mapped onto `space`. Its settings that `space` does not sample and that
    differ from the space's own (fixed or default) values are named: the search keeps the space's."""
    from dpgdiff.config import Config, ConfigError

    if not Path(path).is_file():
        raise WarmStartError(f"--warm-start {path}: no such config file (a name ending in .yaml/.yml is read "
                             "as a training config; an earlier search is named without an extension)")
    try:
        config = flatten(Config.from_yaml(path).to_dict())
    except ConfigError as exc:
        raise WarmStartError(f"--warm-start {path}: {exc}") from None
    base = space.base_values()
    differing = [k for k, v in config.items() if k not in space.params and base.get(k) != v]
    skipped: dict[str, None] = {}
    params, notes = map_onto_space(config, differing, space, skipped)
    for note in notes:
        log(f"warm start from {path}: {note}")
    log(f"warm start: the configuration in {path} starts this search"
        + (f"; its settings this space does not sample and sets otherwise (the space's values are used): "
           f"{', '.join(f'{k}={config[k]!r}' for k in skipped)}" if skipped else ""))
    return {"search": path, "run_id": None, "value": None, "params": params}


def map_onto_space(config: dict[str, Any], sampled: Sequence[str], space: SearchSpace,
                   skipped: dict[str, None]) -> tuple[dict[str, Any], list[str]]:
    """An earlier trial's flat config -> (the values of `space`'s parameters it has, notes on what changed).
    sampled: the keys the earlier search sampled; those `space` does not sample go into `skipped` (an ordered
    set). The new space's parameters that the config lacks are left to the sampler."""
    params: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in config.items():
        if key not in space.params:
            if key in sampled:
                skipped[key] = None
            continue
        param = space.params[key]
        if param.type == "categorical":
            matches = [v for v in param.values if v == value and isinstance(v, bool) == isinstance(value, bool)]
            if not matches:
                notes.append(f"{key}={value!r} is not one of {list(param.values)} here: left to the sampler")
                continue
            params[key] = matches[0]
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            notes.append(f"{key}={value!r} is not a number: left to the sampler")
            continue
        clipped = min(max(value, param.low), param.high)
        if param.step:
            clipped = param.low + round((clipped - param.low) / param.step) * param.step
            clipped = min(clipped, param.high)
        clipped = int(round(clipped)) if param.type == "int" else float(clipped)
        if clipped != value:
            notes.append(f"{key}={value!r} is outside [{param.low}, {param.high}]"
                         + (f" step {param.step}" if param.step else "") + f" here: clipped to {clipped!r}")
        params[key] = clipped
    return params, notes


def _run_config(client: Any, run: Any) -> tuple[dict[str, Any], list[str]]:
    """A trial run's (flat config, the keys its search sampled): the config is its config.yaml artifact (the
    resolved config), else its sampled parameters (tag dpgdiff.sampled)."""
    sampled = json.loads(run.data.tags.get(SAMPLED_TAG) or "{}")
    config: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, "config.yaml", tmp)
            with open(path) as f:
                config = flatten(yaml.safe_load(f) or {})
    except Exception:  # noqa: BLE001  no artifact store: the sampled parameters are the configuration
        config = {}
    return {**config, **sampled}, sorted(sampled)


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def enqueue(searcher: Any, points: Sequence[dict[str, Any]]) -> None:
    """Put the warm-start points first in the searcher's Optuna study (once: a new searcher only)."""
    for point in points:
        searcher._ot_study.enqueue_trial(dict(point["params"]), user_attrs={WARM_START_TAG: point["search"]})
