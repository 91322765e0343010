"""`tune/report.py --name NAME --popularity` (tune/popularity.py): a search's selected trial beside item popularity,
scored by the shared evaluator on the same test cases and candidates, read from a search's MLflow records."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_search_helpers import TINY_DATA
from tune.names import BEST_RUN_TAG, ROLE_SEARCH, ROLE_TAG, SAMPLED_TAG, SEARCH_TAG

REPO = Path(__file__).resolve().parent.parent
SAMPLED = {"model.dim": 16, "model.n_heads": 2, "diffusion.steps": 8, "diffusion.schedule": "cosine",
           "train.lr": 0.003, "model.dropout": 0.1, "loss.lambda_cl": 0.01}


def _finished_search(uri: str, tmp: Path, name: str, test_metrics: dict[str, float]) -> tuple[object, str]:
    """What a finished search leaves in MLflow for this command: its parent run (FINISHED, search_settings.json,
    best_run_id) and the selected trial's run (sampled parameters, test metrics) -> (settings, that run's id)."""
    from tune import tracking
    from tune.search import build_parser
    from tune.settings import settings_from_args

    args = build_parser().parse_args(["--space", str(REPO / "search_spaces" / "smoke.yaml"), *TINY_DATA,
                                      "--name", name, "--storage-path", str(tmp / "ray_results"),
                                      "--tracking-uri", uri, "--quiet"])
    args.argv = []
    settings = settings_from_args(args)
    settings = settings.replace(fingerprint=settings.dataset.load().fingerprint)
    client = tracking.client_for(uri)
    exp = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(uri))
    parent = client.create_run(exp, tags={SEARCH_TAG: name, ROLE_TAG: ROLE_SEARCH}).info.run_id
    best = client.create_run(exp, tags={SEARCH_TAG: name, SAMPLED_TAG: json.dumps(SAMPLED, sort_keys=True)})
    for key, value in test_metrics.items():
        client.log_metric(best.info.run_id, key, value)
    client.log_dict(parent, settings.to_saved(), "search_settings.json")
    client.set_tag(parent, BEST_RUN_TAG, best.info.run_id)
    client.set_terminated(parent, status="FINISHED")
    return settings, best.info.run_id


def test_report_sets_the_selected_trial_beside_popularity_on_the_same_candidates(mlflow_store, tmp_path, capsys):
    """Issue 42 §7: no command compared a search's best model with popularity on one's own data."""
    from dpgdiff.baselines import PopularityScorer
    from dpgdiff.evaluation import Evaluator
    from tune import report

    logged = {"test_x_mrr": 0.41, "test_y_mrr": 0.37, "test_x_ndcg10": 0.45, "test_y_ndcg10": 0.40,
              "test_x_hr10": 0.7, "test_y_hr10": 0.66}
    settings, run_id = _finished_search(mlflow_store, tmp_path, "mine", logged)
    assert report.main(["--name", "mine", "--tracking-uri", mlflow_store, "--popularity"]) == 0
    out = capsys.readouterr().out
    config = settings.space.resolve(SAMPLED)
    dataset = settings.dataset.load()
    popularity = Evaluator(dataset, "test", config.eval).evaluate(PopularityScorer(dataset)).flat("test")
    assert f"(MLflow run {run_id})" in out and f"1 + {config.eval.n_negatives} sampled" in out  # smoke.yaml: 99
    rows = [line for line in out.splitlines() if line.startswith(("| X |", "| Y |"))]
    assert len(rows) == 6, out  # 2 domains x MRR, N@10, H@10; sampled only (the space turns full ranking off)
    for domain in ("x", "y"):
        for title, metric in (("MRR", "mrr"), ("N@10", "ndcg10"), ("H@10", "hr10")):
            ours, pop = 100 * logged[f"test_{domain}_{metric}"], 100 * popularity[f"test_{domain}_{metric}"]
            assert f"| {domain.upper()} | sampled | {title} | {ours:.2f} | {pop:.2f} | {ours - pop:+.2f} |" in out


def test_report_popularity_refuses_what_it_cannot_compare(mlflow_store, tmp_path, capsys):
    from tune import report

    assert report.main(["--tracking-uri", mlflow_store, "--popularity"]) == 2
    assert "--popularity needs the search to compare (--name)" in capsys.readouterr().err
    _finished_search(mlflow_store, tmp_path, "untested", {})
    assert report.main(["--name", "untested", "--tracking-uri", mlflow_store, "--popularity"]) == 2
    assert "has no test metrics" in capsys.readouterr().err
    assert report.main(["--name", "nosuch", "--tracking-uri", mlflow_store, "--popularity"]) == 2
    assert "no such search" in capsys.readouterr().err


def test_report_popularity_refuses_data_that_is_not_the_searchs(mlflow_store, tmp_path, capsys):
    """The search's data must be what --data-dir (or the saved data dir) holds now: other data is named."""
    from tune import report, tracking

    settings, _ = _finished_search(mlflow_store, tmp_path, "moved", {"test_x_mrr": 0.4})
    client = tracking.client_for(mlflow_store)
    parent = tracking.find_runs(client, client.get_experiment_by_name("dpgdiff").experiment_id,
                                {SEARCH_TAG: "moved", ROLE_TAG: ROLE_SEARCH})[0]
    saved = settings.to_saved()
    saved["fingerprint"] = "0" * 64  # as if the files had changed since the search ran
    client.log_dict(parent.info.run_id, saved, "search_settings.json")
    assert report.main(["--name", "moved", "--tracking-uri", mlflow_store, "--popularity"]) == 2
    assert "is not what search 'moved' ran on" in capsys.readouterr().err
