"""In-memory cross-domain dataset: item id space, training sequences, evaluation cases, card.

Every loader (C2DSR files, synthetic, a generic interaction log) produces a `CrossDomainDataset`,
so models, the evaluator and the search see one representation.

Internal item ids (spec §1.2): 0 = PAD, X items 1..Nx, Y items Nx+1..Nx+Ny, MASK = Nx+Ny+1.
Histories are left-padded: the most recent item sits at index -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

PAD = 0
DOMAIN_X = 0
DOMAIN_Y = 1
DOMAIN_NONE = -1  # PAD and MASK
DOMAIN_NAMES = ("x", "y")


@dataclass(frozen=True)
class ItemSpace:
    """The shared id space of both domains."""

    n_items_x: int
    n_items_y: int

    @property
    def mask(self) -> int:
        return self.n_items_x + self.n_items_y + 1

    @property
    def n_tokens(self) -> int:
        """Size of an embedding table covering PAD, every item and MASK."""
        return self.n_items_x + self.n_items_y + 2

    def n_items(self, domain: int) -> int:
        return self.n_items_x if domain == DOMAIN_X else self.n_items_y

    def offset(self, domain: int) -> int:
        """Internal id of the domain's local item 0."""
        return 1 if domain == DOMAIN_X else 1 + self.n_items_x

    def domain_of(self, ids: np.ndarray) -> np.ndarray:
        """int8 array: DOMAIN_X, DOMAIN_Y, or DOMAIN_NONE for PAD and MASK."""
        ids = np.asarray(ids)
        out = np.full(ids.shape, DOMAIN_NONE, dtype=np.int8)
        out[(ids >= 1) & (ids <= self.n_items_x)] = DOMAIN_X
        out[(ids > self.n_items_x) & (ids <= self.n_items_x + self.n_items_y)] = DOMAIN_Y
        return out

    def to_local(self, ids: np.ndarray, domain: int) -> np.ndarray:
        return np.asarray(ids) - self.offset(domain)

    def to_internal(self, local: np.ndarray, domain: int) -> np.ndarray:
        return np.asarray(local) + self.offset(domain)


@dataclass
class EvalCases:
    """Validation or test cases, one per line of the evaluation file.

    history:       int64 (N, max_len), left-padded internal ids, most recent last
    target:        int64 (N,), internal id of the held-out item
    target_domain: int8 (N,), DOMAIN_X or DOMAIN_Y (the domain of `target`)
    user:          int64 (N,), user index (for tracing, never used by models)
    """

    history: np.ndarray
    target: np.ndarray
    target_domain: np.ndarray
    user: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def count(self, domain: int) -> int:
        return int((self.target_domain == domain).sum())


@dataclass
class TrainExamples:
    """(history, next item) pairs built from the training sequences (spec §1.4).

    history:       int64 (N, max_len), left-padded internal ids
    target:        int64 (N,), internal id of the next item
    target_domain: int8 (N,)
    """

    history: np.ndarray
    target: np.ndarray
    target_domain: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])
