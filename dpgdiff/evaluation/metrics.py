"""Metrics (spec §5.3): the positive's rank from score counts, MRR/NDCG/HR, and `EvalResult` of one pass.

Ranks: r = 1 + #{s_j > s_pos} + 0.5 * #{s_j == s_pos} (ties="avg") or r = 1 + #{s_j >= s_pos, j != pos}
(ties="pess"). MRR is untruncated; HR@k = 1[r <= k]; NDCG@k = 1[r <= k] / log2(r + 1); MRR@10 = 1[r <= 10] / r.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch

from dpgdiff.files import atomic_write_bytes

# Metric names, in table order. Full-ranking metrics carry a "full_" prefix.
METRICS = ("mrr", "mrr10", "ndcg5", "ndcg10", "hr1", "hr5", "hr10")
METRIC_TITLES = {
    "mrr": "MRR", "mrr10": "MRR@10", "ndcg5": "NDCG@5", "ndcg10": "NDCG@10",
    "hr1": "HR@1", "hr5": "HR@5", "hr10": "HR@10",
}
_PREFIX_RE = re.compile(r"^[a-z0-9_]+$")

Array = Union[np.ndarray, torch.Tensor]


def ranks_from_counts(greater: np.ndarray, equal: np.ndarray, ties: str) -> np.ndarray:
    """Rank of the positive (1 = best) from the number of competitors scoring above / equal to it (spec §5.3)."""
    greater = np.asarray(greater, dtype=np.float64)
    equal = np.asarray(equal, dtype=np.float64)
    if ties == "avg":
        return 1.0 + greater + 0.5 * equal
    if ties == "pess":
        return 1.0 + greater + equal
    raise ValueError(f"eval.ties={ties!r} is not allowed; choose 'avg' or 'pess'")


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Mean MRR, MRR@10, NDCG@5/10, HR@1/5/10 over cases with these ranks (float (N,), >= 1).

    One relevant item per case, so IDCG = 1. An empty array gives NaN for every metric.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {m: float("nan") for m in METRICS}
    if np.any(r < 1):
        raise ValueError(f"ranks must be >= 1, got min {r.min()}")
    inv = 1.0 / r
    in5, in10 = r <= 5, r <= 10
    ndcg = 1.0 / np.log2(r + 1.0)
    return {
        "mrr": float(inv.mean()),
        "mrr10": float(np.where(in10, inv, 0.0).mean()),
        "ndcg5": float(np.where(in5, ndcg, 0.0).mean()),
        "ndcg10": float(np.where(in10, ndcg, 0.0).mean()),
        "hr1": float((r <= 1).mean()),
        "hr5": float(in5.mean()),
        "hr10": float(in10.mean()),
    }


def _take(a: Array, index: Array) -> Array:
    """a[i, index[i, j]] for numpy arrays or torch tensors alike."""
    return np.take_along_axis(a, index, axis=1) if isinstance(a, np.ndarray) else a.gather(1, index)


def count_sampled(scores: Array, candidates: Array) -> tuple[Array, Array]:
    """Competitors above / tied with the positive among the sampled candidates.

    scores:     (B, n_items) float, numpy or torch on any device
    candidates: (B, 1 + n_neg) int64 local ids, same library/device as scores; column 0 is the positive
    returns (greater, equal), each int64 (B,)
    """
    cand_scores = _take(scores, candidates)
    pos = cand_scores[:, :1]
    neg = cand_scores[:, 1:]
    return (neg > pos).sum(1), (neg == pos).sum(1)


def count_full(scores: Array, positive: Array, exclude: Array, exclude_valid: Array) -> tuple[Array, Array]:
    """Competitors above / tied with the positive among all domain items except the excluded ones.

    scores:        (B, n_items) float, numpy or torch on any device
    positive:      (B, 1) int64 local ids
    exclude:       (B, L) int64 local ids of items to leave out (history); any valid id where not used
    exclude_valid: (B, L) bool; True marks distinct in-domain items other than the positive
    All index arrays in the same library/device as scores. Returns (greater, equal), each int64 (B,).

    Counting over the whole row and subtracting the excluded items avoids a (B, n_items) mask.
    """
    pos = _take(scores, positive)
    greater = (scores > pos).sum(1)
    equal = (scores == pos).sum(1) - 1  # the positive ties with itself
    ex = _take(scores, exclude)
    greater = greater - ((ex > pos) & exclude_valid).sum(1)
    equal = equal - ((ex == pos) & exclude_valid).sum(1)
    return greater, equal


@dataclass
class EvalResult:
    """Metrics of one evaluation pass.

    per_domain: {"x": {"mrr": .., ..., "full_mrr": ..}, "y": {...}}; NaN for a domain without cases
    mrr_sum:    sampled MRR_X + MRR_Y over the domains that have cases (model selection, spec §5.4)
    n_cases:    {"x": N_x, "y": N_y}
    ranks:      {"x": float (N_x,), ...} sampled ranks in dataset order (for paired significance tests)
    full_ranks: the same for full ranking (empty when full ranking is off)
    """

    per_domain: dict[str, dict[str, float]]
    mrr_sum: float
    n_cases: dict[str, int]
    n_candidates: int
    n_items: dict[str, int]
    label: str = ""
    ranks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    full_ranks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def flat(self, prefix: str) -> dict[str, float]:
        """{f"{prefix}_{x|y}_{metric}", f"{prefix}_{x|y}_full_{metric}", f"{prefix}_mrr_sum"}; MLflow-safe names."""
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"metric prefix {prefix!r} must match [a-z0-9_]+ (MLflow key rules)")
        out = {f"{prefix}_{d}_{m}": float(v) for d, ms in self.per_domain.items() for m, v in ms.items()}
        out[f"{prefix}_mrr_sum"] = float(self.mrr_sum)
        return out

    def save_ranks(self, path: str | Path) -> None:
        """Write the per-case ranks (npz: `x`, `y`, `full_x`, `full_y` float arrays in dataset order), atomically.

        Two runs that ranked the same cases against the same saved candidates can then be compared case by
        case (`dpgdiff.significance.paired_test`) without rerunning either model."""
        arrays = {**self.ranks, **{f"full_{d}": r for d, r in self.full_ranks.items()}}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
        atomic_write_bytes(path, buffer.getvalue())

    def table(self) -> str:
        """Aligned per-domain table: one row per (domain, ranking), with case counts."""
        has_full = any(f"full_{METRICS[0]}" in ms for ms in self.per_domain.values())
        head = ["domain", "ranking", "cases"] + [METRIC_TITLES[m] for m in METRICS]
        rows = []
        for d, ms in self.per_domain.items():
            rankings = [("", f"sampled (1+{self.n_candidates - 1})")]
            if has_full:
                rankings.append(("full_", f"full ({self.n_items[d]} - hist)"))
            for pre, title in rankings:
                rows.append([d.upper(), title, str(self.n_cases[d])] + [f"{ms[pre + m]:.4f}" for m in METRICS])
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        text = [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
        text.append(f"MRR_X + MRR_Y (sampled) = {self.mrr_sum:.4f}")
        if self.label:
            text.insert(0, self.label)
        return "\n".join(text)


def load_ranks(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays `EvalResult.save_ranks` wrote: {"x": (N_x,), "y": (N_y,), "full_x": ..., "full_y": ...}."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a ranks file written by EvalResult.save_ranks ({exc})") from exc
