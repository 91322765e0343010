"""The one shared `Evaluator`: ranks a split's cases with any `Scorer` against the saved candidates.

Every model and baseline is evaluated by the same `Evaluator`, through a `Scorer`:

    scorer(history (B, max_len) int64 internal ids on CPU, target_domain: int) -> scores (B, n_items(domain))

Column j of the scores is local item j of the target domain (internal id = items.offset(domain) + j);
higher is better. The scorer moves the history to its device; the evaluator ranks on whatever device
the scores come back on and only brings (B,) rank counts back to the CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

import numpy as np
import torch

from dpgdiff.config import EvalConfig
from dpgdiff.data.dataset import DOMAIN_NAMES, DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.evaluation.candidates import case_arrays, load_or_draw_candidates, split_cases
from dpgdiff.evaluation.metrics import (
    Array,
    EvalResult,
    count_full,
    count_sampled,
    metrics_from_ranks,
    ranks_from_counts,
)
from dpgdiff.evaluation.noise import inject_noise

if TYPE_CHECKING:  # the dataset class lives in dpgdiff.data; only its attributes are used here
    from dpgdiff.data.dataset import CrossDomainDataset

Scorer = Callable[[torch.Tensor, int], torch.Tensor]
ScoreSource = Union[Scorer, Mapping[Any, Union[np.ndarray, torch.Tensor]]]


class NaNScoresError(ValueError):
    """A scorer returned NaN. NaN compares False with everything, which would rank the positive first."""


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
        cases = split_cases(dataset, which)
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

        _, positive, hist_local = case_arrays(cases, self.items)
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
