"""Training examples (spec §1.4) on a hand-made dataset, the vectorised builder against a plain loop, and the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpgdiff.data import DOMAIN_X, DOMAIN_Y, PAD, CrossDomainDataset, EvalCases, ItemSpace
from dpgdiff.data.dataset import build_examples

ITEMS = ItemSpace(3, 3)  # X = 1..3, Y = 4..6


def hand_made(max_len: int = 3) -> CrossDomainDataset:
    empty = EvalCases(np.zeros((0, max_len), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64))
    seqs = [[1, 4, 2, 5], [4, 5, 1, 6, 2], [1], [1, 2, 3]]
    return CrossDomainDataset(
        name="hand", split="c2dsr", items=ITEMS, max_len=max_len,
        train_sequences=[np.array(s, dtype=np.int64) for s in seqs],
        valid=empty, test=empty, fingerprint="0" * 64, cache_dir=Path("."),
    )


def test_prefix_mode_expected_values():
    ex = hand_made().training_examples("prefix")
    # [1,4,2,5]: prefixes [1,4] -> 2, [1,4,2] -> 5 ([1] has no Y).
    # [4,5,1,6,2]: [4,5,1] -> 6, [4,5,1,6] -> 2 (last 3 items: 5,1,6). [1] and [1,2,3]: none.
    assert ex.history.tolist() == [[PAD, 1, 4], [1, 4, 2], [4, 5, 1], [5, 1, 6]]
    assert ex.target.tolist() == [2, 5, 6, 2]
    assert ex.target_domain.tolist() == [DOMAIN_X, DOMAIN_Y, DOMAIN_Y, DOMAIN_X]
    assert ex.history.dtype == np.int64 and ex.target.dtype == np.int64 and ex.target_domain.dtype == np.int8


def test_last_mode_expected_values():
    ex = hand_made().training_examples("last")
    assert ex.history.tolist() == [[1, 4, 2], [5, 1, 6], [PAD, 1, 2]]
    assert ex.target.tolist() == [5, 2, 3]
    assert ex.target_domain.tolist() == [DOMAIN_Y, DOMAIN_X, DOMAIN_X]


def test_examples_are_cached_and_mode_checked():
    ds = hand_made()
    assert ds.training_examples("prefix") is ds.training_examples("prefix")
    with pytest.raises(ValueError, match="perpos"):
        ds.training_examples("perpos")


def test_item_counts_and_card():
    ds = hand_made()
    assert ds.item_counts().tolist() == [0, 4, 3, 1, 2, 2, 1, 0]  # PAD, X1..3, Y4..6, MASK
    card = ds.card()
    assert (card.train_sequences, card.train_examples_prefix, card.train_examples_last) == (4, 4, 3)
    assert card.train_interactions == 13 and card.avg_len_train == pytest.approx(13 / 4)
    text = str(card)
    assert "training examples prefix / last    4 / 3" in text and card.to_dict()["items_x"] == 3


def naive_examples(seqs, items, max_len, mode):
    hist, tgt = [], []
    for s in seqs:
        s = s.tolist()
        ends = [len(s) - 1] if mode == "last" and len(s) >= 2 else []
        if mode == "prefix":
            dom = items.domain_of(np.array(s)).tolist()
            ends = [i for i in range(1, len(s)) if DOMAIN_X in dom[:i] and DOMAIN_Y in dom[:i]]
        for i in ends:
            h = s[:i][-max_len:]
            hist.append([PAD] * (max_len - len(h)) + h)
            tgt.append(s[i])
    return hist, tgt


@pytest.mark.parametrize("mode", ["prefix", "last"])
def test_vectorised_builder_matches_loop(synthetic_dataset, mode):
    seqs = synthetic_dataset.train_sequences[:300]
    for max_len in (4, 15):
        ex = build_examples(seqs, synthetic_dataset.items, max_len, mode)
        hist, tgt = naive_examples(seqs, synthetic_dataset.items, max_len, mode)
        assert ex.history.tolist() == hist and ex.target.tolist() == tgt


def test_empty_sequence_list():
    ex = build_examples([], ITEMS, 15, "prefix")
    assert ex.history.shape == (0, 15) and len(ex) == 0
