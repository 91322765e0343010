"""Evaluation protocol (spec §5.2-§5.4): fixed sampled candidates, full ranking, metrics, RQ3 noise.

Every model and baseline is evaluated by the same `Evaluator`, through a `Scorer`:

    scorer(history (B, max_len) int64 internal ids on CPU, target_domain: int) -> scores (B, n_items(domain))

Column j of the scores is local item j of the target domain (internal id = items.offset(domain) + j);
higher is better. The scorer moves the history to its device; the evaluator ranks on whatever device
the scores come back on and only brings (B,) rank counts back to the CPU.

    evaluator = Evaluator(dataset, "valid", config.eval)      # draws or loads the candidates once
    result = evaluator.evaluate(model_scorer)                 # call it every epoch
    result.mrr_sum, result.flat("val"), print(result.table())

Candidates (spec §5.2, ours): for each case, the positive plus `n_negatives` negatives drawn uniformly
without replacement from the target's domain, excluding the positive and the case's history items.
They are drawn once from `candidate_seed` and saved in `dataset.cache_dir`, so every trial, baseline
and rerun ranks the identical candidates. Full ranking ranks the positive against every item of the
target domain except the case's history items (Krichene & Rendle, KDD 2020: sampled metrics can
disagree with exact ones, so both are reported).

Ranks (spec §5.3): r = 1 + #{s_j > s_pos} + 0.5 * #{s_j == s_pos} (ties="avg") or
r = 1 + #{s_j >= s_pos, j != pos} (ties="pess"). MRR is untruncated; HR@k = 1[r <= k];
NDCG@k = 1[r <= k] / log2(r + 1); MRR@10 = 1[r <= 10] / r.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

import numpy as np
import torch

from dpgdiff.config import EvalConfig
from dpgdiff.data.dataset import DOMAIN_NAMES, DOMAIN_NONE, DOMAIN_X, DOMAIN_Y, PAD, EvalCases, ItemSpace
from dpgdiff.files import atomic_write_bytes

if TYPE_CHECKING:  # the dataset class lives in dpgdiff.data; only its attributes are used here
    from dpgdiff.data.dataset import CrossDomainDataset

Scorer = Callable[[torch.Tensor, int], torch.Tensor]
ScoreSource = Union[Scorer, Mapping[Any, Union[np.ndarray, torch.Tensor]]]

# Metric names, in table order. Full-ranking metrics carry a "full_" prefix.
METRICS = ("mrr", "mrr10", "ndcg5", "ndcg10", "hr1", "hr5", "hr10")
METRIC_TITLES = {
    "mrr": "MRR", "mrr10": "MRR@10", "ndcg5": "NDCG@5", "ndcg10": "NDCG@10",
    "hr1": "HR@1", "hr5": "HR@5", "hr10": "HR@10",
}
# Bump when the drawing algorithm changes, so old cache files are never reused for new semantics.
CANDIDATES_VERSION = 1
_PREFIX_RE = re.compile(r"^[a-z0-9_]+$")


class NaNScoresError(ValueError):
    """A scorer returned NaN. NaN compares False with everything, which would rank the positive first."""


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


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


Array = Union[np.ndarray, torch.Tensor]


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


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


def _case_arrays(cases: EvalCases, items: ItemSpace) -> tuple[np.ndarray, ...]:
    """Per-case domain size, local positive and local history ids (-1 where not in the target's domain).

    returns n_dom int64 (N,), positive int64 (N,), hist_local int64 (N, L)
    """
    dom = np.asarray(cases.target_domain).astype(np.int64)
    if dom.size and not np.isin(dom, (DOMAIN_X, DOMAIN_Y)).all():
        raise ValueError("EvalCases.target_domain must hold only DOMAIN_X (0) or DOMAIN_Y (1)")
    n_dom = np.where(dom == DOMAIN_X, items.n_items_x, items.n_items_y).astype(np.int64)
    offset = np.where(dom == DOMAIN_X, items.offset(DOMAIN_X), items.offset(DOMAIN_Y)).astype(np.int64)
    positive = np.asarray(cases.target, dtype=np.int64) - offset
    bad = (positive < 0) | (positive >= n_dom)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"EvalCases row {i}: target id {int(cases.target[i])} is not an item of its target domain "
            f"{DOMAIN_NAMES[int(dom[i])]!r}"
        )
    hist = np.asarray(cases.history, dtype=np.int64)
    hist_local = hist - offset[:, None]
    in_dom = (hist_local >= 0) & (hist_local < n_dom[:, None]) & (hist != PAD)
    return n_dom, positive, np.where(in_dom, hist_local, -1)


# A domain at most this many times n_negatives is drawn by random keys (rejection would need many rounds).
DENSE_DRAW_FACTOR = 8


def _candidate_room(cases: EvalCases, items: ItemSpace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per case: its domain's size (N,), the excluded local ids (N, 1 + L; positive first, < 0 = unused) and the
    number of allowed negatives (N,): the domain minus the positive and the history items in it."""
    n_dom, positive, hist_local = _case_arrays(cases, items)
    n, width = hist_local.shape
    # Empty history slots get distinct negative sentinels that can never match an item.
    sentinels = -1 - np.arange(width, dtype=np.int64)
    excluded = np.concatenate([positive[:, None], np.where(hist_local >= 0, hist_local, sentinels)], axis=1)
    srt = np.sort(excluded, axis=1)
    n_distinct = ((srt >= 0) & np.concatenate([np.ones((n, 1), bool), srt[:, 1:] != srt[:, :-1]], axis=1)).sum(1)
    return n_dom, excluded, n_dom - n_distinct


def check_candidate_room(dataset: "CrossDomainDataset", n_negatives: int, source: str = "eval.n_negatives") -> None:
    """Raise DataError when a validation or test case of `dataset` has fewer allowed negatives than `n_negatives`
    (what `draw_candidates` would find only when evaluating, after training): found when the data is loaded.
    `source` names where the value came from."""
    from dpgdiff.data.dataset import DataError

    for which in ("valid", "test"):
        cases = _split_cases(dataset, which)
        n_dom, _, room = _candidate_room(cases, dataset.items)
        if len(room) and (room < n_negatives).any():
            i = int(np.argmin(room))
            domain = DOMAIN_NAMES[int(cases.target_domain[i])]
            names = getattr(dataset, "domain_names", None)
            own = names[int(cases.target_domain[i])] if names and tuple(names) != DOMAIN_NAMES else None
            label = f"{domain!r}" + (f" ({own!r})" if own is not None else "")
            raise DataError(
                f"dataset {dataset.name!r}: {source}={n_negatives} sampled negatives per case, but {which} case {i} "
                f"has only {int(room[i])} allowed (domain {label} has {int(n_dom[i])} items, minus the positive and "
                f"the history); every case needs n_negatives + 1 items outside its history. Set eval.n_negatives to "
                f"at most {int(room.min())} (--set eval.n_negatives=N), or use more data")


def draw_candidates(cases: EvalCases, items: ItemSpace, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """Positive plus `n_negatives` distinct negatives per case, as local ids of the target's domain.

    returns int32 (N, 1 + n_negatives); column 0 is the positive. Negatives are uniform without
    replacement over the target's domain minus the positive and the case's history items.
    Cases are drawn domain by domain (X, then Y), so the result depends only on the cases and the rng.
    """
    n_dom, excluded, room = _candidate_room(cases, items)
    n = len(room)
    if n and (room < n_negatives).any():
        i = int(np.argmin(room))
        raise ValueError(
            f"eval.n_negatives={n_negatives} is too large: case {i} has only {int(room[i])} allowed "
            f"negatives in domain {DOMAIN_NAMES[int(cases.target_domain[i])]!r} "
            f"({int(n_dom[i])} items minus positive and history); lower eval.n_negatives"
        )
    cand = np.empty((n, n_negatives), dtype=np.int64)
    dom = np.asarray(cases.target_domain)
    for d in (DOMAIN_X, DOMAIN_Y):
        rows = np.flatnonzero(dom == d)
        if rows.size == 0:
            continue
        size = items.n_items(d)
        draw = _draw_dense if size <= DENSE_DRAW_FACTOR * n_negatives else _draw_rejection
        cand[rows] = draw(excluded[rows], size, n_negatives, rng)
    return np.concatenate([excluded[:, :1], cand], axis=1).astype(np.int32)


def _draw_rejection(excluded: np.ndarray, size: int, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """(N, n_negatives) distinct ids in [0, size) avoiding each row's `excluded` ids (N, k; < 0 = unused).

    Vectorised rejection: draw with replacement, then redraw every entry that repeats an earlier entry
    of its row or an excluded id, until none does. The result is the first n_negatives distinct
    allowed values of an i.i.d. uniform stream, i.e. a uniform random subset. Fast when n_negatives
    is small against `size` (food_kitchen: 999 of 29k-35k items, about 1 s for 8k cases).
    """
    n, k = excluded.shape
    cand = rng.integers(0, size, size=(n, n_negatives), dtype=np.int64)
    # Sort (value, column) pairs packed in one int64 key: a plain sort is much faster than a stable
    # argsort, and equal values stay in column order, so the excluded ids (first columns) and the
    # earliest copy of a repeated value are kept and only later copies are flagged.
    shift = int(k + n_negatives).bit_length()
    excluded_key = ((excluded + k + 1) << shift) + np.arange(k)  # sentinels shifted to >= 0
    col_key = np.arange(k, k + n_negatives)
    rows = np.arange(n)
    while rows.size:
        keys = np.concatenate([excluded_key[rows], ((cand[rows] + k + 1) << shift) + col_key], axis=1)
        keys.sort(axis=1)
        repeat = np.zeros(keys.shape, dtype=bool)
        repeat[:, 1:] = (keys[:, 1:] >> shift) == (keys[:, :-1] >> shift)
        r_idx, pos_idx = np.nonzero(repeat)
        c_idx = (keys[r_idx, pos_idx] & ((1 << shift) - 1)) - k
        is_neg = c_idx >= 0  # a repeated history item is not a negative to redraw
        r_idx, c_idx = r_idx[is_neg], c_idx[is_neg]
        if r_idx.size == 0:
            break
        cand[rows[r_idx], c_idx] = rng.integers(0, size, size=r_idx.size, dtype=np.int64)
        rows = rows[np.unique(r_idx)]
    return cand


def _draw_dense(excluded: np.ndarray, size: int, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """Same contract as `_draw_rejection`, for small domains: the n_negatives allowed ids with the
    smallest i.i.d. uniform keys (a uniform random subset), sorted; rows are processed in chunks."""
    n, k = excluded.shape
    out = np.empty((n, n_negatives), dtype=np.int64)
    chunk = max(1, (1 << 22) // size)
    for lo in range(0, n, chunk):
        ex = excluded[lo: lo + chunk]
        keys = rng.random((ex.shape[0], size))
        r, c = np.nonzero(ex >= 0)
        keys[r, ex[r, c]] = 2.0  # above every uniform key: never among the smallest
        out[lo: lo + chunk] = np.sort(np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives], axis=1)
    return out


def _cases_digest(cases: EvalCases) -> str:
    """sha256 of the case arrays, so a candidate file is never applied to different cases."""
    h = hashlib.sha256()
    for arr in (cases.history, cases.target, cases.target_domain):
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.int64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<i4").tobytes()).hexdigest()


def candidate_path(dataset: "CrossDomainDataset", which: str, n_negatives: int, seed: int) -> Path:
    """Cache file for one split's candidates: named by dataset fingerprint, split, n_negatives and seed."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset.name))
    return Path(dataset.cache_dir) / (
        f"candidates-v{CANDIDATES_VERSION}-{safe_name}-{dataset.fingerprint[:16]}-{which}"
        f"-neg{n_negatives}-seed{seed}.npz"
    )


def _read_candidates(path: Path, meta: dict[str, Any], shape: tuple[int, int]) -> Optional[np.ndarray]:
    """The saved candidates if the file exists, is intact and matches `meta`; else None (with a reason warned)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {key: f[key] for key in f.files}
    except Exception as exc:  # truncated/garbled zip, wrong format: regenerate rather than fail
        warnings.warn(f"{path}: unreadable candidate file ({exc}); drawing them again", stacklevel=3)
        return None
    problems = []
    for key, want in meta.items():
        got = stored.get(key)
        got = None if got is None else got.item()
        if got != want:
            problems.append(f"{key}={got!r}, expected {want!r}")
    cand = stored.get("candidates")
    if cand is None or cand.shape != shape or cand.dtype != np.int32:
        problems.append(f"candidates array {None if cand is None else (cand.shape, str(cand.dtype))}, "
                        f"expected {shape} int32")
    elif str(stored.get("sha256", np.array("")).item()) != _array_digest(cand):
        problems.append("sha256 of the candidate array does not match (corrupt file)")
    if problems:
        warnings.warn(f"{path}: not reused ({'; '.join(problems)}); drawing the candidates again", stacklevel=3)
        return None
    return cand


def _write_candidates(path: Path, cand: np.ndarray, meta: dict[str, Any]) -> None:
    """Atomic write (temp file in the same folder + rename), so readers never see half a file."""
    buf = io.BytesIO()
    np.savez(buf, candidates=cand, sha256=np.array(_array_digest(cand)),
             **{key: np.array(value) for key, value in meta.items()})
    # mkstemp makes 0600; a cache beside shared data should stay readable to others
    atomic_write_bytes(path, buf.getvalue(), mode=0o644)


def load_or_draw_candidates(
    dataset: "CrossDomainDataset", which: str, n_negatives: int, seed: int
) -> tuple[np.ndarray, Optional[Path]]:
    """The split's fixed candidates: read from dataset.cache_dir when a valid file is there, else drawn and saved.

    returns (int32 (N, 1 + n_negatives) local ids with the positive in column 0, the file path or None
    when it could not be written; the candidates are still deterministic from the seed then).
    """
    cases = _split_cases(dataset, which)
    path = candidate_path(dataset, which, n_negatives, seed)
    meta = {
        "version": CANDIDATES_VERSION, "fingerprint": str(dataset.fingerprint), "split": which,
        "n_negatives": int(n_negatives), "seed": int(seed), "cases_sha256": _cases_digest(cases),
    }
    shape = (len(cases), 1 + n_negatives)
    cand = _read_candidates(path, meta, shape)
    if cand is not None:
        return cand, path
    cand = draw_candidates(cases, dataset.items, n_negatives, np.random.default_rng(seed))
    try:
        _write_candidates(path, cand, meta)
    except OSError as exc:
        warnings.warn(f"cannot save candidates to {path} ({exc.strerror}); using them unsaved", stacklevel=2)
        return cand, None
    return cand, path


# --------------------------------------------------------------------------------------------
# RQ3 noise
# --------------------------------------------------------------------------------------------


def inject_noise(history: np.ndarray, items: ItemSpace, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Perturb histories with random same-domain substitutions and insertions (RQ3, spec §4.3 last bullet).

    history: int64 (N, L) or (L,), left-padded internal ids, most recent last
    returns a new array of the same shape and padding convention.

    For each history with n real items, round(rate * n) distinct positions (half rounds up) are picked;
    each gets, with probability 1/2, a substitution (a different random item of the same domain) or an
    insertion (a random item of that domain placed just before it). Insertions push the oldest items out
    on the left, so at most L items are kept. PAD and MASK positions are never picked.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    h = np.asarray(history, dtype=np.int64)
    squeeze = h.ndim == 1
    h = np.atleast_2d(h)
    if h.ndim != 2:
        raise ValueError(f"history must be (N, L) or (L,), got shape {np.shape(history)}")
    n, width = h.shape
    dom = items.domain_of(h).astype(np.int64)
    real = dom != DOMAIN_NONE
    n_real = real.sum(1)
    k = np.minimum(np.floor(rate * n_real + 0.5 + 1e-9).astype(np.int64), n_real)

    # Pick k random real positions per row: the k smallest random keys among real positions.
    keys = np.where(real, rng.random((n, width)), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    picked = real & (rank < k[:, None])
    insert = picked & (rng.random((n, width)) < 0.5)
    substitute = picked & ~insert

    size = np.where(dom == DOMAIN_X, items.n_items_x, items.n_items_y)
    offset = np.where(dom == DOMAIN_X, items.offset(DOMAIN_X), items.offset(DOMAIN_Y))
    u_new, u_sub = rng.random((n, width)), rng.random((n, width))
    new_item = offset + np.minimum((u_new * size).astype(np.int64), size - 1)
    # A substitute is uniform over the domain minus the current item: draw from size-1, skip the item.
    local = h - offset
    sub_local = np.minimum((u_sub * (size - 1)).astype(np.int64), np.maximum(size - 2, 0))
    sub_local = sub_local + (sub_local >= local)
    kept = np.where(substitute & (size > 1), offset + sub_local, h)

    # Each position emits 0 (PAD), 1 or 2 (insertion + item) tokens; place them right-aligned in a
    # (N, 2L) buffer and keep the last L columns.
    present = h != PAD  # items and MASK tokens are kept; only items are ever picked
    emit = present.astype(np.int64) + insert
    end = np.cumsum(emit, axis=1)  # exclusive end of each position's tokens, counted from the row start
    start_col = 2 * width - end[:, -1:]
    out = np.full((n, 2 * width), PAD, dtype=np.int64)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, width))
    out[rows[present], (start_col + end - 1)[present]] = kept[present]
    out[rows[insert], (start_col + end - 2)[insert]] = new_item[insert]
    out = out[:, width:]
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------


def _split_cases(dataset: "CrossDomainDataset", which: str) -> EvalCases:
    if which not in ("valid", "test"):
        raise ValueError(f"which={which!r}: expected 'valid' or 'test'")
    return getattr(dataset, which)


@dataclass
class _DomainBlock:
    """Everything the evaluator needs for the cases of one target domain, precomputed once."""

    rows: np.ndarray  # int64 (N_d,) positions of these cases in the split
    history: torch.Tensor  # int64 (N_d, L) what the scorer sees (noisy when noise_rate > 0)
    candidates: torch.Tensor  # int64 (N_d, 1 + n_neg) local ids, positive first
    exclude: torch.Tensor  # int64 (N_d, L) local ids of the clean history items to leave out (0 where not)
    exclude_valid: torch.Tensor  # bool (N_d, L) distinct in-domain history items, never the positive


class Evaluator:
    """Ranks a split's cases with any Scorer or per-domain score matrix; see the module docstring.

    config.noise_rate > 0 perturbs the *test* histories with `inject_noise` (seeded by noise_seed); the
    validation split is always clean, so model selection never sees noise. Candidates and the items
    excluded from full ranking stay those of the clean case.
    """

    def __init__(self, dataset: "CrossDomainDataset", which: str, config: EvalConfig) -> None:
        cases = _split_cases(dataset, which)
        self.dataset, self.which, self.config = dataset, which, config
        self.items: ItemSpace = dataset.items
        if config.ties not in ("avg", "pess"):
            raise ValueError(f"eval.ties={config.ties!r} is not allowed; choose 'avg' or 'pess'")
        self.candidates, self.candidate_file = load_or_draw_candidates(
            dataset, which, config.n_negatives, config.candidate_seed
        )
        history = np.asarray(cases.history, dtype=np.int64)
        self.noise_rate = config.noise_rate if which == "test" else 0.0
        if config.noise_rate > 0 and which != "test":
            warnings.warn(f"eval.noise_rate={config.noise_rate:g} applies to test cases only; "
                          f"the {which} cases are scored clean", stacklevel=2)
        if self.noise_rate > 0:
            history = inject_noise(history, self.items, self.noise_rate, np.random.default_rng(config.noise_seed))
        self.history = history

        _, positive, hist_local = _case_arrays(cases, self.items)
        # First occurrence of each in-domain history item, never the positive: what full ranking leaves out.
        valid = hist_local >= 0
        if valid.any():
            same = hist_local[:, :, None] == hist_local[:, None, :]
            earlier = np.tril(np.ones(same.shape[1:], dtype=bool), k=-1)
            valid &= ~(same & earlier).any(2)
        valid &= hist_local != positive[:, None]

        dom = np.asarray(cases.target_domain)
        self.blocks: dict[int, _DomainBlock] = {}
        for d in (DOMAIN_X, DOMAIN_Y):
            rows = np.flatnonzero(dom == d)
            self.blocks[d] = _DomainBlock(
                rows=rows,
                history=torch.from_numpy(np.ascontiguousarray(history[rows])),
                candidates=torch.from_numpy(self.candidates[rows].astype(np.int64)),
                exclude=torch.from_numpy(np.ascontiguousarray(np.where(valid, hist_local, 0)[rows])),
                exclude_valid=torch.from_numpy(np.ascontiguousarray(valid[rows])),
            )
        self.n_cases = {DOMAIN_NAMES[d]: int(b.rows.size) for d, b in self.blocks.items()}
        name = getattr(dataset, "name", "dataset")
        noise = f", noise {self.noise_rate:g}" if self.noise_rate > 0 else ""
        self.label = f"{name} {which} ({len(cases)} cases, ties={config.ties}{noise})"

    def __len__(self) -> int:
        return int(self.candidates.shape[0])

    def evaluate(self, scorer: ScoreSource) -> EvalResult:
        """Rank every case and return the metrics per target domain.

        scorer: a Scorer, or {domain: scores} with scores (N_d, n_items(d)) for that domain's cases in
        dataset order, or (N, n_items(d)) for all cases (rows of other domains ignored); keys may be
        DOMAIN_X/DOMAIN_Y or "x"/"y".
        """
        cfg = self.config
        per_domain: dict[str, dict[str, float]] = {}
        ranks: dict[str, np.ndarray] = {}
        full_ranks: dict[str, np.ndarray] = {}
        for d, block in self.blocks.items():
            name = DOMAIN_NAMES[d]
            n_items = self.items.n_items(d)
            matrix = None if callable(scorer) else _matrix_for(scorer, d, block, len(self), n_items)
            n = block.rows.size
            g_s, e_s, g_f, e_f = (np.empty(n, dtype=np.int64) for _ in range(4))
            for lo in range(0, n, cfg.batch_size):
                hi = min(lo + cfg.batch_size, n)
                if matrix is None:
                    scores = _as_tensor(scorer(block.history[lo:hi].clone(), d))
                else:
                    scores = matrix[lo:hi]
                if scores.shape != (hi - lo, n_items):
                    raise ValueError(
                        f"scorer returned shape {tuple(scores.shape)} for domain {name!r}; expected "
                        f"({hi - lo}, {n_items}) = (batch, n_items of the domain)"
                    )
                if _use_numpy(scores):
                    if scores.dtype in (torch.bfloat16, torch.float16):
                        scores = scores.float()  # exact: keeps every order and tie
                    arr = scores.numpy()
                    idx = [t[lo:hi].numpy() for t in (block.candidates, block.exclude, block.exclude_valid)]
                else:
                    arr = scores
                    idx = [t[lo:hi].to(scores.device, non_blocking=True)
                           for t in (block.candidates, block.exclude, block.exclude_valid)]
                if _has_nan(arr):
                    raise NaNScoresError(f"scorer returned NaN scores for domain {name!r} (cases {lo}..{hi - 1})")
                cand, exclude, exclude_valid = idx
                g_s[lo:hi], e_s[lo:hi] = _to_numpy(count_sampled(arr, cand))
                if cfg.full_ranking:
                    g_f[lo:hi], e_f[lo:hi] = _to_numpy(count_full(arr, cand[:, :1], exclude, exclude_valid))
            ranks[name] = ranks_from_counts(g_s, e_s, cfg.ties)
            metrics = metrics_from_ranks(ranks[name])
            if cfg.full_ranking:
                full_ranks[name] = ranks_from_counts(g_f, e_f, cfg.ties)
                metrics.update({f"full_{m}": v for m, v in metrics_from_ranks(full_ranks[name]).items()})
            per_domain[name] = metrics
        present = [ms["mrr"] for name, ms in per_domain.items() if self.n_cases[name] > 0]
        return EvalResult(
            per_domain=per_domain,
            mrr_sum=float(sum(present)) if present else float("nan"),
            n_cases=dict(self.n_cases),
            n_candidates=int(self.candidates.shape[1]),
            n_items={DOMAIN_NAMES[d]: self.items.n_items(d) for d in self.blocks},
            label=self.label,
            ranks=ranks,
            full_ranks=full_ranks,
        )


def _use_numpy(scores: torch.Tensor) -> bool:
    """Rank CPU scores with numpy: its compare-and-count is several times faster than torch's on CPU."""
    return scores.device.type == "cpu"


def _has_nan(a: Array) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.issubdtype(a.dtype, np.floating) and np.isnan(a).any())
    return bool(a.is_floating_point() and torch.isnan(a).any())


def _to_numpy(pair: tuple[Array, Array]) -> tuple[np.ndarray, np.ndarray]:
    return tuple(x if isinstance(x, np.ndarray) else x.cpu().numpy() for x in pair)  # type: ignore[return-value]


def _as_tensor(scores: Any) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores.detach()
    if isinstance(scores, np.ndarray):
        return torch.from_numpy(scores)
    raise TypeError(f"a scorer must return a torch.Tensor or numpy array, got {type(scores).__name__}")


def _matrix_for(source: Mapping[Any, Any], d: int, block: _DomainBlock, n_all: int, n_items: int) -> torch.Tensor:
    """The rows of a per-domain score matrix that belong to this domain's cases, in block order."""
    name = DOMAIN_NAMES[d]
    if d in source:
        m = source[d]
    elif name in source:
        m = source[name]
    elif block.rows.size == 0:
        return torch.empty(0, n_items)
    else:
        raise KeyError(f"score matrices given for {sorted(map(str, source))}; missing domain {d} ({name!r})")
    m = _as_tensor(m)
    if m.ndim != 2 or m.shape[1] != n_items or m.shape[0] not in (block.rows.size, n_all):
        raise ValueError(
            f"score matrix for domain {name!r} has shape {tuple(m.shape)}; expected ({block.rows.size}, {n_items}) "
            f"(this domain's cases) or ({n_all}, {n_items}) (all cases)"
        )
    if m.shape[0] == n_all and n_all != block.rows.size:
        m = m[torch.from_numpy(block.rows).to(m.device)]
    return m
