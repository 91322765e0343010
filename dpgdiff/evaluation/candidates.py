"""The saved candidates (spec §5.2, ours): 1 + n_negatives sampled per case, and what full ranking leaves out.

For each case, the positive plus `n_negatives` negatives drawn uniformly without replacement from the
target's domain, excluding the positive and the case's history items. They are drawn once from
`candidate_seed` and saved in `dataset.cache_dir`, so every trial, baseline and rerun ranks the identical
candidates. Full ranking ranks the positive against every item of the target domain except the case's
history items (`case_arrays` gives both the positive and those items as local ids).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from dpgdiff.data.dataset import DOMAIN_NAMES, DOMAIN_X, DOMAIN_Y, PAD, EvalCases, ItemSpace
from dpgdiff.files import atomic_write_bytes

if TYPE_CHECKING:  # the dataset class lives in dpgdiff.data; only its attributes are used here
    from dpgdiff.data.dataset import CrossDomainDataset

# Bump when the drawing algorithm changes, so old cache files are never reused for new semantics.
CANDIDATES_VERSION = 1


def split_cases(dataset: "CrossDomainDataset", which: str) -> EvalCases:
    """The validation or test cases of `dataset`; any other `which` is an error."""
    if which not in ("valid", "test"):
        raise ValueError(f"which={which!r}: expected 'valid' or 'test'")
    return getattr(dataset, which)


def case_arrays(cases: EvalCases, items: ItemSpace) -> tuple[np.ndarray, ...]:
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
    n_dom, positive, hist_local = case_arrays(cases, items)
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
        cases = split_cases(dataset, which)
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
    # mkstemp makes 0600; a DPGDIFF_DERIVED_DIR shared with others should stay readable to them
    atomic_write_bytes(path, buf.getvalue(), mode=0o644)


def load_or_draw_candidates(
    dataset: "CrossDomainDataset", which: str, n_negatives: int, seed: int
) -> tuple[np.ndarray, Optional[Path]]:
    """The split's fixed candidates: read from dataset.cache_dir when a valid file is there, else drawn and saved.

    returns (int32 (N, 1 + n_negatives) local ids with the positive in column 0, the file path or None
    when it could not be written; the candidates are still deterministic from the seed then).
    """
    cases = split_cases(dataset, which)
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
