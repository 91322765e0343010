"""The MLflow runs a report reads: the named searches' parent runs, and their confirmation runs by (search, variant)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dpgdiff.config import MODEL_LABELS
from tune import tracking
from tune.errors import ReportError
from tune.names import (
    BEST_RUN_TAG,
    CONFIRMATION_SEED_TAG,
    CONFIRMS_TAG,
    LABEL_TAG,
    MODEL_TAG,
    ROLE_CONFIRMATION,
    ROLE_SEARCH,
    ROLE_TAG,
    SEARCH_TAG,
    VARIANT_TAG,
)


def open_experiment(uri: str, experiment: str) -> tuple[Any, Any]:
    """(MLflow client, experiment) of the store at `uri`; ReportError where the store has no such experiment."""
    client = tracking.client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"{uri}: no MLflow experiment {experiment!r} (run tune/search.py first)")
    return client, exp


def search_parents(client: Any, experiment_id: str, names: list[str]) -> list[Any]:
    """The parent runs of the searches `names`, in that order; no names: the latest search."""
    if not names:
        runs = tracking.find_runs(client, experiment_id, {ROLE_TAG: ROLE_SEARCH})
        if not runs:
            raise ReportError("no searches in this MLflow store")
        return [max(runs, key=lambda r: r.info.start_time)]
    parents = []
    for name in names:
        runs = tracking.find_runs(client, experiment_id, {SEARCH_TAG: name, ROLE_TAG: ROLE_SEARCH})
        if not runs:
            known = sorted({r.data.tags.get(SEARCH_TAG) for r in
                            tracking.find_runs(client, experiment_id, {ROLE_TAG: ROLE_SEARCH})} - {None})
            raise ReportError(f"no search named {name!r}; known: {', '.join(known) or 'none'}")
        parents.append(runs[0])
    return parents


@dataclass
class Confirmed:
    """The finished confirmation runs of one (search, variant): one run per seed."""

    search: str
    model: str
    variant: str
    runs: dict[int, Any]  # seed -> MLflow run
    trial: Optional[str] = None  # the trial named with --trial; None: the search's best

    @property
    def label(self) -> str:
        """What its configuration is (`Config.label()`, tagged on its runs): "DPG-Diff (−DE)", not just the model."""
        return next(iter(self.runs.values())).data.tags.get(LABEL_TAG) or MODEL_LABELS.get(self.model, self.model)

    def values(self, domain: str, key: str) -> list[float]:
        return [r.data.metrics[f"test_{domain}_{key}"] for r in self.runs.values()
                if f"test_{domain}_{key}" in r.data.metrics]

    def cell(self, domain: str, key: str) -> str:
        v = self.values(domain, key)
        if not v:
            return "-"
        std = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{100 * statistics.fmean(v):.2f} ± {100 * std:.2f}"

    def mean(self, domain: str, key: str) -> float:
        v = self.values(domain, key)
        return statistics.fmean(v) if v else float("-inf")

    def footnote(self) -> str:
        return ", ".join(f"seed {s}: {r.info.run_id}" for s, r in sorted(self.runs.items()))

    @property
    def is_best(self) -> bool:
        """The configuration itself, not a variant of it (--variant, --ablations)."""
        from tune.confirmation import BEST

        return self.variant == BEST


def confirmed_groups(client: Any, experiment_id: str, parents: list[Any],
                     trials: Optional[dict[str, tuple[str, str]]] = None) -> list[Confirmed]:
    """Finished confirmation runs of the parents, grouped by (search, variant), in search order: those of each
    search's best trial, or of the trial `trials` names for it ({search: (trial, run id)})."""
    from tune.confirmation import BEST

    groups: dict[tuple[str, str], Confirmed] = {}
    for parent in parents:
        search = parent.data.tags.get(SEARCH_TAG, parent.info.run_id)
        trial, of = (trials or {}).get(search, (None, parent.data.tags.get(BEST_RUN_TAG)))
        for run in tracking.child_runs(client, experiment_id, parent.info.run_id, role=ROLE_CONFIRMATION):
            if run.info.status != "FINISHED" or "test_mrr_sum" not in run.data.metrics:
                continue
            if run.data.tags.get(CONFIRMS_TAG, of) != of:  # another trial's confirmation (tune/confirm.py --trial)
                continue
            variant = run.data.tags.get(VARIANT_TAG, BEST)
            group = groups.setdefault((search, variant), Confirmed(search, run.data.tags.get(MODEL_TAG, "?"),
                                                                   variant, {}, trial))
            group.runs[int(run.data.tags.get(CONFIRMATION_SEED_TAG, len(group.runs)))] = run
    return list(groups.values())


class RankCache:
    """Per-case test ranks of confirmation runs (their test_ranks.npz artifacts), downloaded once."""

    def __init__(self, client: Any, folder: Path) -> None:
        self.client, self.folder, self._ranks = client, folder, {}

    def __call__(self, run: Any) -> dict[str, Any]:
        from dpgdiff.evaluation import load_ranks
        from dpgdiff.training.loop import RANKS_FILE

        run_id = run.info.run_id
        if run_id not in self._ranks:
            path = self.client.download_artifacts(run_id, RANKS_FILE, str(self.folder / run_id))
            self._ranks[run_id] = load_ranks(path)
        return self._ranks[run_id]
