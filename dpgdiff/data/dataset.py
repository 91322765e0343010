"""In-memory cross-domain dataset: item id space, training sequences, evaluation cases, card.

Every loader (C2DSR files, synthetic, a generic interaction log) produces a `CrossDomainDataset`,
so models, the evaluator and the search see one representation.

Internal item ids (spec §1.2): 0 = PAD, X items 1..Nx, Y items Nx+1..Nx+Ny, MASK = Nx+Ny+1.
Histories are left-padded: the most recent item sits at index -1. Training examples (spec §1.4)
are built from the training sequences by one vectorised pass (`build_examples`). Bad data raises
`DataError` (a ValueError) naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

PAD = 0
DOMAIN_X = 0
DOMAIN_Y = 1
DOMAIN_NONE = -1  # PAD and MASK
DOMAIN_NAMES = ("x", "y")
TRAIN_MODES = ("prefix", "last")


class DataError(ValueError):
    """A data file is missing, malformed or fails verification; the message names the file (and line)."""


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


def left_pad(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """int64 (N, max_len): the last `max_len` items of each sequence, left-padded with PAD."""
    out = np.zeros((len(sequences), max_len), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-max_len:]
        if len(tail):
            out[row, max_len - len(tail):] = tail
    return out


def build_examples(sequences: list[np.ndarray], items: ItemSpace, max_len: int, mode: str) -> TrainExamples:
    """Training examples of spec §1.4, vectorised over all sequences at once.

    prefix: every prefix S[1..i] (i < n) holding >= 1 X and >= 1 Y item -> target S[i+1];
    last:   one example per sequence of length >= 2 -> history S[1..n-1], target S[n].
    The history is the last `max_len` items of the prefix, left-padded.
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"training example mode {mode!r} is not one of {', '.join(TRAIN_MODES)}")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if lengths.sum() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return TrainExamples(np.zeros((0, max_len), np.int64), empty, np.zeros(0, np.int8))
    flat = np.concatenate(sequences).astype(np.int64)
    starts = np.cumsum(lengths) - lengths  # flat index of each sequence's first item
    seq_of = np.repeat(np.arange(len(lengths)), lengths)  # sequence index of each flat position
    if mode == "last":
        pos = (starts + lengths - 1)[lengths >= 2]
    else:
        dom = items.domain_of(flat)
        is_x, is_y = (dom == DOMAIN_X).astype(np.int64), (dom == DOMAIN_Y).astype(np.int64)
        # X / Y items strictly before each position, counted within its own sequence.
        before_x = np.cumsum(is_x) - is_x
        before_y = np.cumsum(is_y) - is_y
        before_x -= before_x[starts][seq_of]
        before_y -= before_y[starts][seq_of]
        pos = np.nonzero((before_x >= 1) & (before_y >= 1))[0]  # implies the position is not a sequence start
    idx = pos[:, None] + np.arange(-max_len, 0)[None, :]  # (N, max_len) flat indices of the history
    history = np.where(idx >= starts[seq_of[pos]][:, None], flat[np.clip(idx, 0, None)], PAD)
    target = flat[pos]
    return TrainExamples(
        history=history.astype(np.int64), target=target.astype(np.int64), target_domain=items.domain_of(target)
    )


@dataclass
class DatasetCard:
    """The numbers that identify a loaded dataset; str() is the CLI table, to_dict() the JSON form."""

    name: str
    split: str
    users: int
    items_x: int
    items_y: int
    train_sequences: int
    train_examples_prefix: int
    train_examples_last: int
    train_interactions: int
    valid_x: int
    valid_y: int
    test_x: int
    test_y: int
    avg_len_train: float  # mean training-sequence length
    avg_len_eval: float  # mean validation+test sequence length, target included (README: 9.846 for Food-Kitchen)
    max_len: int
    fingerprint: str
    cache_dir: str
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)  # file name -> git blob id

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def __str__(self) -> str:
        rows = [
            ("dataset", self.name),
            ("split", self.split),
            ("source", self.source),
            ("users", f"{self.users:,}"),
            ("items X / Y", f"{self.items_x:,} / {self.items_y:,}"),
            ("training sequences", f"{self.train_sequences:,}"),
            ("training interactions", f"{self.train_interactions:,}"),
            ("training examples prefix / last", f"{self.train_examples_prefix:,} / {self.train_examples_last:,}"),
            ("validation cases X / Y", f"{self.valid_x:,} / {self.valid_y:,}"),
            ("test cases X / Y", f"{self.test_x:,} / {self.test_y:,}"),
            ("avg. sequence length train / eval", f"{self.avg_len_train:.3f} / {self.avg_len_eval:.3f}"),
            ("max_len", str(self.max_len)),
            ("fingerprint", self.fingerprint),
            ("cache_dir", self.cache_dir),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        for fname, blob in self.files.items():
            lines.append(f"{'  file ' + fname:<{width}}  {blob}")
        return "\n".join(lines)


@dataclass
class CrossDomainDataset:
    """One cross-domain dataset with its split: training sequences plus validation and test cases.

    train_sequences: list of int64 arrays of internal ids in time order (full length, not truncated);
    training examples (spec §1.4) are built from them on demand and cached per mode.
    """

    name: str  # "food_kitchen", "movie_book", "synthetic", or the log file stem
    split: str  # "c2dsr" | "c2dsr-histories" | "loo"
    items: ItemSpace
    max_len: int
    train_sequences: list[np.ndarray]
    valid: EvalCases
    test: EvalCases
    fingerprint: str
    cache_dir: Path
    n_users: int = 0
    source: str = ""  # where the data came from (folder or file), for the card
    files: dict[str, str] = field(default_factory=dict)  # source file name -> git blob id / sha256
    eval_lengths: Optional[np.ndarray] = field(default=None, repr=False)  # valid+test sequence lengths (with target)
    # The load_dataset keyword options that reload this dataset: load_dataset(name, split, **options).
    options: dict[str, Any] = field(default_factory=dict)
    # Interaction logs: the raw (file) item id of each local index, per domain (X, Y). None for the
    # C2DSR format, whose raw id is the global file id = internal id - 1. See dpgdiff/data/ids.py.
    raw_item_ids: Optional[tuple[list[str], list[str]]] = field(default=None, repr=False)
    domain_names: tuple[str, str] = DOMAIN_NAMES  # logs: the domain column's X and Y values
    log_path: str = ""  # logs: the file's resolved path (checkpoints record it: `python -m dpgdiff evaluate`)
    _examples: dict[str, TrainExamples] = field(default_factory=dict, repr=False, compare=False)

    def training_examples(self, mode: str) -> TrainExamples:
        """(history, target) pairs of spec §1.4; mode "prefix" or "last". Built once per mode."""
        if mode not in self._examples:
            self._examples[mode] = build_examples(self.train_sequences, self.items, self.max_len, mode)
        return self._examples[mode]

    def item_counts(self) -> np.ndarray:
        """int64 (n_tokens,): how often each internal id occurs in the training sequences."""
        if not self.train_sequences:
            return np.zeros(self.items.n_tokens, dtype=np.int64)
        flat = np.concatenate(self.train_sequences)
        return np.bincount(flat, minlength=self.items.n_tokens).astype(np.int64)

    def card(self) -> DatasetCard:
        lengths = np.fromiter((len(s) for s in self.train_sequences), dtype=np.int64)
        if self.eval_lengths is not None and len(self.eval_lengths):
            avg_eval = float(np.mean(self.eval_lengths))
        else:  # without the raw lengths: history (non-pad) + target
            both = [self.valid.history, self.test.history]
            n = sum(len(h) for h in both)
            avg_eval = float(sum(int((h != PAD).sum()) for h in both) + n) / n if n else 0.0
        return DatasetCard(
            name=self.name,
            split=self.split,
            users=int(self.n_users),
            items_x=self.items.n_items_x,
            items_y=self.items.n_items_y,
            train_sequences=len(self.train_sequences),
            train_examples_prefix=len(self.training_examples("prefix")),
            train_examples_last=len(self.training_examples("last")),
            train_interactions=int(lengths.sum()),
            valid_x=self.valid.count(DOMAIN_X),
            valid_y=self.valid.count(DOMAIN_Y),
            test_x=self.test.count(DOMAIN_X),
            test_y=self.test.count(DOMAIN_Y),
            avg_len_train=float(lengths.mean()) if len(lengths) else 0.0,
            avg_len_eval=avg_eval,
            max_len=self.max_len,
            fingerprint=self.fingerprint,
            cache_dir=str(self.cache_dir),
            source=self.source,
            files=dict(self.files),
        )
