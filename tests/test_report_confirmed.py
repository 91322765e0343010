"""tune/report.py's confirmation tables (tune/confirmed_tables.py), on hand-made MLflow runs: mean ± std over
seeds, the paired test against the strongest other model (seed i paired with seed i, from the runs'
test_ranks.npz), and the ablation table. The values are recomputed here from the same ranks, so a wrong
pairing or a wrong rival fails.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from dpgdiff.evaluation import EvalResult, metrics_from_ranks
from dpgdiff.significance import holm, paired_test
from tune import confirmed_tables as tables
from tune import tracking
from tune.names import CONFIRMATION_SEED_TAG, ROLE_CONFIRMATION, VARIANT_TAG
from tune.report_runs import Confirmed

N_CASES = 400


def _ranks(rng: np.random.Generator, shift: float) -> dict[str, np.ndarray]:
    out = {}
    for d in ("x", "y"):
        out[d] = np.maximum(1.0, rng.geometric(0.05, N_CASES) - shift).astype(float)
        out[f"full_{d}"] = out[d] * 7
    return out


def _log_run(client, exp_id: str, parent_id: str, model: str, variant: str, seed: int, ranks: dict, tmp) -> str:
    from mlflow.entities import Metric

    run = client.create_run(exp_id, tags={tracking.PARENT_TAG: parent_id, tracking.ROLE_TAG: ROLE_CONFIRMATION,
                                          tracking.MODEL_TAG: model, VARIANT_TAG: variant,
                                          CONFIRMATION_SEED_TAG: str(seed)})
    result = EvalResult(per_domain={}, mrr_sum=0.0, n_cases={}, n_candidates=0, n_items={},
                        ranks={d: ranks[d] for d in ("x", "y")}, full_ranks={d: ranks[f"full_{d}"] for d in ("x", "y")})
    path = tmp / run.info.run_id / "test_ranks.npz"
    path.parent.mkdir()
    result.save_ranks(path)
    client.log_artifact(run.info.run_id, str(path))
    metrics = {"test_mrr_sum": 0.0}
    for d in ("x", "y"):
        metrics.update({f"test_{d}_{k}": v for k, v in metrics_from_ranks(ranks[d]).items()})
        metrics.update({f"test_{d}_full_{k}": v for k, v in metrics_from_ranks(ranks[f"full_{d}"]).items()})
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


@pytest.fixture
def store(mlflow_store, tmp_path):
    uri = mlflow_store
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(uri))
    rng = np.random.default_rng(0)
    parents, ranks = {}, {}
    # DPG-Diff better than SASRec by ~2 ranks per case, DiffuRec much worse: SASRec is the rival in every cell.
    for search, model, shift in (("a", "dpgdiff", 4.0), ("b", "sasrec", 2.0), ("c", "diffurec", -15.0)):
        parent = client.create_run(exp_id, run_name=search, tags={tracking.SEARCH_TAG: search,
                                                                  tracking.ROLE_TAG: "search", "dataset": "food_kitchen"})
        parents[search] = parent.info.run_id
        for seed in (1, 2, 3):
            ranks[(search, "best", seed)] = _ranks(rng, shift)
            _log_run(client, exp_id, parent.info.run_id, model, "best", seed, ranks[(search, "best", seed)], tmp_path)
    for seed in (1, 2, 3):
        ranks[("a", "-G", seed)] = _ranks(rng, 3.0)
        _log_run(client, exp_id, parents["a"], "dpgdiff", "-G", seed, ranks[("a", "-G", seed)], tmp_path)
    # an unfinished run and a search trial are not confirmation results
    stray = client.create_run(exp_id, tags={tracking.PARENT_TAG: parents["a"], tracking.ROLE_TAG: ROLE_CONFIRMATION,
                                            tracking.MODEL_TAG: "dpgdiff", VARIANT_TAG: "best",
                                            CONFIRMATION_SEED_TAG: "9"})
    assert stray.info.status == "RUNNING"
    return client, exp_id, [client.get_run(parents[s]) for s in "abc"], ranks


def test_confirmed_table1_means_and_paired_test_against_the_strongest_rival(store):
    client, exp_id, parents, ranks = store
    text = tables.confirmation_tables(client, exp_id, parents)
    lines = text.splitlines()
    assert ("| Data | Metric | SASRec [1] | DiffuRec [2] | DPG-Diff [3] | vs | Imp. | diff ×100 [95% CI] | p | "
            "p Holm |") in text
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("| Data |"))) + 2:]
    table = table[:table.index("")]
    assert [ln.split("|")[2].strip() for ln in table[:3]] == ["N@10 full", "H@10 full", "MRR full"]  # full leads
    row = next(ln for ln in lines if ln.startswith("|  | MRR |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mrr = [float(np.mean(1 / ranks[("a", "best", s)]["x"])) for s in (1, 2, 3)]
    assert cells[4] == f"**{100 * statistics.fmean(mrr):.2f} ± {100 * statistics.stdev(mrr):.2f}**"
    expected = paired_test([ranks[("a", "best", s)]["x"] for s in (1, 2, 3)],
                           [ranks[("b", "best", s)]["x"] for s in (1, 2, 3)], "mrr")
    assert cells[5] == "SASRec" and expected.n_pairs == 3  # the training run is the unit
    assert cells[6] == f"{100 * expected.rel_diff:+.1f}%"
    assert cells[7] == f"{100 * expected.diff:+.2f} [{100 * expected.ci_low:+.2f}, {100 * expected.ci_high:+.2f}]"
    assert cells[8] == tables.format_p(expected.p_value)
    # Holm over every cell of the table: recompute the family from the same ranks (SASRec is the rival in each)
    family = [paired_test([ranks[("a", "best", s)][("full_" if k.startswith("full_") else "") + d] for s in (1, 2, 3)],
                          [ranks[("b", "best", s)][("full_" if k.startswith("full_") else "") + d] for s in (1, 2, 3)],
                          k.removeprefix("full_")).p_value
              for d in ("x", "y") for _, k in tables.CONFIRMED_METRICS]
    assert cells[9] == tables.format_p(holm(family)[[k for _, k in tables.CONFIRMED_METRICS].index("mrr")])
    # full-ranking rows pair the full ranks
    row = next(ln for ln in lines if ln.startswith("| Kitchen | N@10 full |"))
    full = paired_test([ranks[("a", "best", s)]["full_y"] for s in (1, 2, 3)],
                       [ranks[("b", "best", s)]["full_y"] for s in (1, 2, 3)], "ndcg10")
    assert row.split("|")[-3].strip() == tables.format_p(full.p_value)
    for search in "abc":  # every column's runs are named by seed
        for seed in (1, 2, 3):
            assert f"seed {seed}: " in text
    assert "seed 9" not in text, "an unfinished run is not a result"


def test_ablation_table_pairs_each_variant_with_the_full_model(store):
    client, exp_id, parents, ranks = store
    text = tables.confirmation_tables(client, exp_id, parents)
    assert "## Ablations of search a" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| -G | 3 |"))
    p = [paired_test([ranks[("a", "-G", s)][f"full_{d}"] for s in (1, 2, 3)],
                     [ranks[("a", "best", s)][f"full_{d}"] for s in (1, 2, 3)], "ndcg10").p_value for d in ("x", "y")]
    assert row.rstrip(" |").endswith(tables.format_p(holm(p)[1]))  # Holm over the table's two tests
    assert "## Ablations of search b" not in text  # one variant only: no ablation table


def test_no_confirmation_runs_no_tables(mlflow_store):
    uri = mlflow_store
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(uri))
    parent = client.create_run(exp_id, tags={tracking.SEARCH_TAG: "s", tracking.ROLE_TAG: "search"})
    assert tables.confirmation_tables(client, exp_id, [parent]) == ""


def test_columns_are_labelled_by_the_configuration_not_only_the_model():
    """A −DE DPG-Diff is "DPG-Diff (−DE)" in the tables (its runs' dpgdiff.label tag, `Config.label()`); its
    variants add their names to it; runs from before the tag fall back to the model's name."""
    from types import SimpleNamespace

    from tune.names import LABEL_TAG

    def group(search, variant, label=None, model="dpgdiff"):
        run = SimpleNamespace(data=SimpleNamespace(tags={LABEL_TAG: label} if label else {}))
        return Confirmed(search, model, variant, {1: run})

    best = group("s", "best", "DPG-Diff (−DE)")
    control = group("s", "-Diffusion", "DPG-Diff (−Diffusion, −DE)")
    sasrec = group("b", "best", model="sasrec")
    groups = [best, control, sasrec]
    assert tables.column_label(best, [best, sasrec]) == "DPG-Diff (−DE)"
    assert tables.column_label(control, groups) == "DPG-Diff (−DE) -Diffusion (s)"  # two DPG-Diff columns
    assert tables.column_label(control, [control, sasrec]) == "DPG-Diff (−Diffusion, −DE)"
    assert tables.column_label(sasrec, groups) == "SASRec"
