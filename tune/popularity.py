"""A search's selected model beside item popularity on the same test cases: is it better than "most bought"?

    python tune/report.py --name NAME --popularity [--data-dir DIR]

Popularity (`dpgdiff.baselines.PopularityScorer`: every item scored by its training interaction count) goes through
the shared evaluator with the selected trial's own evaluation settings (negatives, candidate seed, ties, full
ranking), so it ranks the identical saved candidates of the identical test cases. The selected trial's figures are
the test metrics the search logged on its MLflow run (tune/finish.py tests that trial only); nothing is retrained.
The data is the search's own (search_settings.json on its parent run; `--data-dir` where it lives elsewhere), and
must have the search's fingerprint.
"""

from __future__ import annotations

from typing import Any, Optional

from tune.errors import SearchError

# (title, per-domain metric key), ×100 like Table 1 (tune/report.py)
SHOWN = (("MRR", "mrr"), ("N@10", "ndcg10"), ("H@10", "hr10"))


def popularity_comparison(client: Any, experiment_id: str, search: str, data_dir: Optional[str] = None) -> str:
    """The selected trial's test metrics beside popularity's, per domain and ranking (Markdown table)."""
    from dpgdiff.baselines import PopularityScorer
    from dpgdiff.evaluation import Evaluator
    from tune.confirmation import best_configuration

    settings, _, run_id, config = best_configuration(client, experiment_id, search, data_dir)
    best = {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("test_")}
    if not best:
        raise SearchError(f"search {search!r}: its selected run {run_id} has no test metrics (its checkpoint was "
                          "missing when the search ended); nothing to compare")
    dataset = settings.dataset.load()
    if settings.fingerprint and dataset.fingerprint != settings.fingerprint:
        raise SearchError(f"the data at {settings.dataset.data_dir} is not what search {search!r} ran on (fingerprint "
                          f"{dataset.fingerprint[:12]}, search {str(settings.fingerprint)[:12]}); pass --data-dir")
    popularity = Evaluator(dataset, "test", config.eval).evaluate(PopularityScorer(dataset)).flat("test")
    e = config.eval
    lines = [f"Search {search!r}: its selected trial (MLflow run {run_id}) and item popularity on "
             f"{settings.dataset.name} test, same evaluator and candidates (1 + {e.n_negatives} sampled, candidate "
             f"seed {e.candidate_seed}, ties {e.ties}), ×100:", "",
             "| domain | ranking | metric | selected trial | popularity | difference |", "|---|---|---|---:|---:|---:|"]
    for domain in ("x", "y"):
        for prefix, ranking in (("", "sampled"), ("full_", "full")):
            for title, metric in SHOWN:
                key = f"test_{domain}_{prefix}{metric}"
                if key in best and key in popularity:
                    ours, pop = 100 * best[key], 100 * popularity[key]
                    lines.append(f"| {domain.upper()} | {ranking} | {title} | {ours:.2f} | {pop:.2f} | "
                                 f"{ours - pop:+.2f} |")
    return "\n".join(lines)


def print_popularity(uri: str, experiment: str, names: list[str], data_dir: Optional[str]) -> int:
    """`tune/report.py --popularity`: each named search's comparison -> exit code (SearchError: nothing to show)."""
    from tune import tracking
    from tune.names import EXIT_OK

    if not names:
        raise SearchError("--popularity needs the search to compare (--name)")
    client = tracking.client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SearchError(f"{uri}: no MLflow experiment {experiment!r} (run tune/search.py first)")
    print("\n\n".join(popularity_comparison(client, exp.experiment_id, name, data_dir) for name in names))
    return EXIT_OK
