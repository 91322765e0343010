"""RQ3 noise: random same-domain substitutions and insertions in test histories (spec §4.3, last bullet)."""

from __future__ import annotations

import numpy as np

from dpgdiff.data.dataset import DOMAIN_NONE, DOMAIN_X, DOMAIN_Y, PAD, ItemSpace


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
