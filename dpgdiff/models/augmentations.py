"""The five sequence augmentations for the Tri-CL view s_aug (crop, mask, reorder, substitute, insert; spec §4.3).

All ops act on a left-padded (B, L) batch of internal ids at once (no Python loop over rows); one op
is chosen uniformly per sequence (CoSeRec `Random`). Substitute / Insert use the most similar item of
the *same domain* (ItemCF-IUF over the training sequences, precomputed once) or, with
sim_model = random, a fresh random item of the same domain.

Short sequences (issue #8 §4): the spec's rates are fractions of n, and CDSR prefix examples are
short (median 6 items), so ⌊β·n⌋ and ⌊γ·n⌋ are often 0 or 1 and the view would equal s_c. For
n >= 2 every op therefore changes the sequence: Crop keeps at most n - 1 items, Mask masks at least
one item, Reorder shuffles a window of at least 2 items with a permutation other than the identity.
(CoSeRec handles short sequences by allowing only Insert / Substitute below `augment_threshold`;
the floors here keep all five ops and their spec'd rates for longer sequences.) A single-item
sequence is changed only by Substitute and Insert.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from dpgdiff.config import AugmentConfig
from dpgdiff.data.dataset import ItemSpace
from dpgdiff.models.encoder import left_compact

N_OPS = 5  # crop, mask, reorder, substitute, insert


def item_similarity(sequences: Sequence[np.ndarray], items: ItemSpace, seed: int = 0) -> np.ndarray:
    """Most similar same-domain item per internal id by ItemCF-IUF (CoSeRec `ItemCF_IUF`), int64 (n_tokens,).

    sim(i, j) = Σ_u 1[i, j ∈ u] / log(1 + |u|)  /  sqrt(N_i · N_j), over users' item sets.
    Items with no same-domain co-occurrence get a random same-domain item (seeded). PAD -> PAD, MASK -> MASK."""
    n_tok = items.n_tokens
    nx, ny = items.n_items_x, items.n_items_y
    sets = [np.unique(np.asarray(s, dtype=np.int64)) for s in sequences]
    sets = [s[(s >= 1) & (s <= nx + ny)] for s in sets]
    counts = np.zeros(n_tok, dtype=np.float64)
    keys, weights = [], []
    lengths = np.array([len(s) for s in sets])
    for n in np.unique(lengths):  # group by length: one broadcast per group instead of one loop per user
        if n < 2:
            continue
        members = np.nonzero(lengths == n)[0]
        chunk = max(1, 4_000_000 // (n * n))  # bound the (U, n*n) pair arrays for long sequences
        for c in range(0, len(members), chunk):
            block = np.stack([sets[i] for i in members[c:c + chunk]])  # (U, n)
            np.add.at(counts, block.ravel(), 1.0)
            a = np.repeat(block, n, axis=1)  # (U, n*n): item i of each pair
            b = np.tile(block, (1, n))  # item j
            keep = (a != b) & ((a <= nx) == (b <= nx))  # same-domain pairs only
            keys.append((a * n_tok + b)[keep])
            weights.append(np.full(int(keep.sum()), 1.0 / np.log1p(n)))
    best = np.zeros(n_tok, dtype=np.int64)
    has = np.zeros(n_tok, dtype=bool)
    if keys:
        uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
        co = np.bincount(inv, weights=np.concatenate(weights))
        i, j = uniq // n_tok, uniq % n_tok
        sim = co / np.sqrt(counts[i] * counts[j])
        order = np.lexsort((j, -sim, i))  # per row i: highest sim first, ties -> smallest id
        i, j = i[order], j[order]
        first = np.ones(len(i), dtype=bool)
        first[1:] = i[1:] != i[:-1]
        best[i[first]] = j[first]
        has[i[first]] = True
    rng = np.random.default_rng(seed)
    ids = np.arange(n_tok)
    for lo, n in ((1, nx), (nx + 1, ny)):
        miss = ids[lo:lo + n][~has[lo:lo + n]]
        if len(miss) and n > 1:
            r = rng.integers(0, n - 1, size=len(miss))  # a random other item of the same domain
            r = r + (r >= miss - lo)
            best[miss] = lo + r
        elif len(miss):
            best[miss] = miss
    best[0] = 0
    best[items.mask] = items.mask
    return best


def _rand(shape, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn from `generator` on its own device."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


class Augmenter(nn.Module):
    """Applies one of the five augmentations per sequence to a left-padded (B, L) batch (spec §4.3)."""

    def __init__(self, items: ItemSpace, config: AugmentConfig, similar: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.items = items
        self.cfg = config
        if config.sim_model == "itemcf":
            if similar is None:
                raise ValueError("augment.sim_model=itemcf needs the item similarity map (training sequences)")
            self.register_buffer("similar", torch.as_tensor(similar, dtype=torch.int64), persistent=False)
        else:
            self.similar = None

    # ---------------------------------------------------------------- helpers

    def replacement(self, ids: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Same-domain replacement for each id: its most similar item (itemcf) or a random one."""
        if self.similar is not None:
            return self.similar[ids]
        nx, ny = self.items.n_items_x, self.items.n_items_y
        u = _rand(ids.shape, generator, ids.device)
        rx = 1 + (u * nx).long().clamp_max(nx - 1)
        ry = nx + 1 + (u * ny).long().clamp_max(ny - 1)
        return torch.where(ids == 0, 0, torch.where(ids <= nx, rx, ry))

    @staticmethod
    def _choose(valid: torch.Tensor, m: torch.Tensor, generator, device) -> torch.Tensor:
        """(B, L) bool: m[b] distinct random valid positions per row."""
        r = _rand(valid.shape, generator, device).masked_fill(~valid, 2.0)
        rank = r.argsort(1).argsort(1)
        return rank < m[:, None]

    # ---------------------------------------------------------------- the five ops

    def crop(self, ids, valid, n, generator):
        """Keep a random contiguous window of max(1, ⌊η·n⌋) items, at most n - 1 when n >= 2."""
        b, l = ids.shape
        k = torch.minimum((self.cfg.crop_eta * n).floor().long(), n - 1).clamp_min(1)
        s = (_rand((b,), generator, ids.device) * (n - k + 1)).floor().long()
        p = torch.arange(l, device=ids.device)[None]
        src = (l - n + s)[:, None] + p - (l - k)[:, None]
        out = ids.gather(1, src.clamp(0, l - 1))
        return torch.where(p >= (l - k)[:, None], out, 0)

    def mask(self, ids, valid, n, generator):
        """Replace ⌊γ·n⌋ random items by MASK, at least one when n >= 2 (and γ > 0)."""
        m = (self.cfg.mask_gamma * n).floor().long()
        if self.cfg.mask_gamma > 0:
            m = torch.where(n >= 2, m.clamp_min(1), m)
        chosen = self._choose(valid, m, generator, ids.device)
        return torch.where(chosen, self.items.mask, ids)

    def reorder(self, ids, valid, n, generator):
        """Shuffle a random contiguous window of ⌊β·n⌋ items, at least 2 when n >= 2 (and β > 0).

        A shuffle that happens to be the identity (probability 1/k!, i.e. 1/2 for k = 2) is replaced
        by the window's reversal, so for n >= 2 the order always changes."""
        b, l = ids.shape
        k = (self.cfg.reorder_beta * n).floor().long()
        if self.cfg.reorder_beta > 0:
            k = torch.where(n >= 2, k.clamp(2, None), k)
        s = (_rand((b,), generator, ids.device) * (n - k + 1)).floor().long()
        p = torch.arange(l, device=ids.device)[None].float()
        lo = (l - n + s)[:, None].float()
        inside = (p >= lo) & (p < lo + k[:, None])
        # Keys inside the window are random in [lo - 0.5, lo + k - 0.5): they permute among themselves only.
        key = torch.where(inside, lo - 0.5 + _rand((b, l), generator, ids.device) * k[:, None], p)
        perm = key.argsort(1)
        identity = (perm == torch.arange(l, device=ids.device)).all(1, keepdim=True)
        # Reversal of the window: position p inside maps to 2·lo + k - 1 - p.
        reverse = torch.where(inside, 2 * lo + k[:, None] - 1 - p, p).long()
        return ids.gather(1, torch.where(identity, reverse, perm))

    def substitute(self, ids, valid, n, generator):
        """Replace max(1, ⌊ρ_s·n⌋) random items by a same-domain replacement."""
        m = (self.cfg.substitute_rho * n).floor().long().clamp_min(1)
        chosen = self._choose(valid, m, generator, ids.device)
        return torch.where(chosen, self.replacement(ids, generator), ids)

    def insert(self, ids, valid, n, generator):
        """Before max(1, ⌊ρ_i·n⌋) random items insert a same-domain replacement; keep the last L."""
        b, l = ids.shape
        m = (self.cfg.insert_rho * n).floor().long().clamp_min(1)
        chosen = self._choose(valid, m, generator, ids.device)
        extra = torch.where(chosen, self.replacement(ids, generator), 0)
        both = torch.stack([extra, ids], 2).view(b, 2 * l)  # slot 2p: inserted item, slot 2p+1: original
        return left_compact(both, both != 0, width=l)

    def forward(self, ids: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """ids (B, L) left-padded -> augmented (B, L), one uniformly chosen op per row."""
        valid = ids != 0
        n = valid.sum(1)
        ops = (self.crop, self.mask, self.reorder, self.substitute, self.insert)
        outs = torch.stack([op(ids, valid, n, generator) for op in ops])  # (5, B, L): cheap at L = 15
        gen_device = generator.device if generator is not None else ids.device
        choice = torch.randint(0, N_OPS, (ids.shape[0],), generator=generator, device=gen_device).to(ids.device)
        return outs[choice, torch.arange(ids.shape[0], device=ids.device)]
