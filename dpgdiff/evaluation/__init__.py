"""Evaluation protocol (spec §5.2-§5.4): the one shared evaluator, saved candidates, metrics, RQ3 noise.

    evaluator = Evaluator(dataset, "valid", config.eval)      # draws or loads the candidates once
    result = evaluator.evaluate(model_scorer)                 # call it every epoch
    result.mrr_sum, result.flat("val"), print(result.table())

`evaluator.py` is the `Evaluator` every model and baseline is scored by, with the `Scorer` contract;
`candidates.py` the fixed sampled candidates (positive + n_negatives, drawn once and saved) and the
items full ranking leaves out; `metrics.py` ranks, MRR/NDCG/HR and `EvalResult`; `noise.py` the RQ3
perturbation of test histories. Both sampled and full ranking are reported (Krichene & Rendle, KDD 2020:
sampled metrics can disagree with exact ones).
"""

from dpgdiff.evaluation.candidates import (
    CANDIDATES_VERSION,
    candidate_path,
    check_candidate_room,
    draw_candidates,
    load_or_draw_candidates,
)
from dpgdiff.evaluation.evaluator import Evaluator, NaNScoresError, Scorer, ScoreSource
from dpgdiff.evaluation.metrics import (
    METRIC_TITLES,
    METRICS,
    EvalResult,
    count_full,
    count_sampled,
    load_ranks,
    metrics_from_ranks,
    ranks_from_counts,
)
from dpgdiff.evaluation.noise import inject_noise

__all__ = [
    "CANDIDATES_VERSION", "METRICS", "METRIC_TITLES", "EvalResult", "Evaluator", "NaNScoresError", "ScoreSource",
    "Scorer", "candidate_path", "check_candidate_room", "count_full", "count_sampled", "draw_candidates",
    "inject_noise", "load_or_draw_candidates", "load_ranks", "metrics_from_ranks", "ranks_from_counts",
]
