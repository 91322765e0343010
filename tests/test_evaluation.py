"""Evaluation protocol: metrics against hand-computed values, candidate rules and caching, RQ3 noise."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dpgdiff.config import EvalConfig
from dpgdiff.data import CrossDomainDataset, EvalCases, ItemSpace
from dpgdiff.data.dataset import DOMAIN_NONE, DOMAIN_X, DOMAIN_Y, PAD
from dpgdiff.evaluation import candidates as candidates_mod  # the modules that read what tests patch
from dpgdiff.evaluation import evaluator as evaluator_mod
from dpgdiff.evaluation import (
    METRICS,
    Evaluator,
    NaNScoresError,
    count_full,
    count_sampled,
    draw_candidates,
    inject_noise,
    load_or_draw_candidates,
    metrics_from_ranks,
    ranks_from_counts,
)


def make_dataset(cache_dir: Path, items: ItemSpace, test: EvalCases, valid: EvalCases | None = None,
                 train_sequences: list[np.ndarray] | None = None, name: str = "tiny") -> CrossDomainDataset:
    """A hand-made dataset whose derived files go to `cache_dir`."""
    valid = valid if valid is not None else test
    return CrossDomainDataset(
        name=name, split="c2dsr", items=items, max_len=test.history.shape[1],
        train_sequences=train_sequences or [], valid=valid, test=test,
        fingerprint="f" * 64, cache_dir=Path(cache_dir),
    )


def cases(histories: list[list[int]], targets: list[int], items: ItemSpace, width: int) -> EvalCases:
    """EvalCases from unpadded histories (internal ids, oldest first)."""
    h = np.zeros((len(histories), width), dtype=np.int64)
    for i, row in enumerate(histories):
        h[i, width - len(row):] = row
    t = np.asarray(targets, dtype=np.int64)
    return EvalCases(history=h, target=t, target_domain=items.domain_of(t).astype(np.int8),
                     user=np.arange(len(t), dtype=np.int64))


def random_cases(items: ItemSpace, n: int, width: int, seed: int) -> EvalCases:
    """n cases with 5..width-1 distinct history items from both domains and a target outside the history."""
    rng = np.random.default_rng(seed)
    all_ids = np.arange(1, items.n_items_x + items.n_items_y + 1)
    hist, tgt = [], []
    for _ in range(n):
        seq = rng.choice(all_ids, size=int(rng.integers(6, width + 1)), replace=False)
        hist.append(list(seq[:-1]))
        tgt.append(int(seq[-1]))
    return cases(hist, tgt, items, width)


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_from_ranks_hand_computed():
    m = metrics_from_ranks(np.array([1.0, 2.5, 11.0, 4.0]))
    assert m["mrr"] == pytest.approx((1 + 1 / 2.5 + 1 / 11 + 1 / 4) / 4)
    assert m["mrr10"] == pytest.approx((1 + 0.4 + 0 + 0.25) / 4)  # rank 11 is beyond the cut-off
    assert m["hr1"] == pytest.approx(0.25)
    assert m["hr5"] == pytest.approx(0.75)
    assert m["hr10"] == pytest.approx(0.75)
    assert m["ndcg5"] == pytest.approx((1 + 1 / math.log2(3.5) + 1 / math.log2(5)) / 4)
    assert m["ndcg10"] == pytest.approx((1 + 1 / math.log2(3.5) + 1 / math.log2(5)) / 4)
    assert metrics_from_ranks(np.array([6.0]))["ndcg5"] == 0.0
    assert metrics_from_ranks(np.array([6.0]))["ndcg10"] == pytest.approx(1 / math.log2(7))
    assert all(math.isnan(v) for v in metrics_from_ranks(np.array([])).values())
    with pytest.raises(ValueError, match=">= 1"):
        metrics_from_ranks(np.array([0.5]))


def test_tie_rules():
    assert ranks_from_counts(np.array([2]), np.array([3]), "avg")[0] == 4.5  # 1 + 2 + 0.5 * 3
    assert ranks_from_counts(np.array([2]), np.array([3]), "pess")[0] == 6.0  # 1 + 2 + 3
    with pytest.raises(ValueError, match="ties"):
        ranks_from_counts(np.array([0]), np.array([0]), "optimistic")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_counts_on_crafted_scores(backend):
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9, 0.5],
                       [3.0, 1.0, 2.0, 2.0, 0.0, 5.0]], dtype=np.float32)
    cand = np.array([[0, 1, 2, 3], [2, 0, 3, 4]])  # positive first
    positive = cand[:, :1]
    exclude = np.array([[4, 1, 0], [5, 0, 0]])
    valid = np.array([[True, False, False], [True, False, False]])  # row 0 excludes item 4, row 1 item 5
    if backend == "torch":
        scores, cand, positive, exclude, valid = map(torch.as_tensor, (scores, cand, positive, exclude, valid))
    g, e = count_sampled(scores, cand)
    assert list(np.asarray(g)) == [1, 1]  # row 0: 0.9 above 0.5, one tie; row 1: 3.0 above 2.0, one tie
    assert list(np.asarray(e)) == [1, 1]
    g, e = count_full(scores, positive, exclude, valid)
    assert list(np.asarray(g)) == [1, 1]  # row 0: item 4 (0.9) excluded; row 1: item 5 (5.0) excluded
    assert list(np.asarray(e)) == [2, 1]  # row 0: items 2 and 5 tie with 0.5


# ------------------------------------------------------------------------------------------ evaluator


ITEMS = ItemSpace(30, 20)  # X internal 1..30, Y 31..50
# A: X target, rank 1 unless history is wrongly kept; B: X target scored lowest; C: Y, all tied; D: Y, rank 4.
HAND = dict(
    histories=[[1, 2, 31, 3], [5, 32, 6, 7, 33], [31, 8, 32], [35, 9, 36, 37]],
    targets=[10, 20, 40, 45],
)


def hand_scores(ev: Evaluator) -> dict[int, np.ndarray]:
    """Crafted per-domain score matrices (N_d, n_items) for HAND, in dataset order within each domain."""
    sx = np.tile(np.arange(30, dtype=np.float32) / 100, (2, 1))
    sx[0, [0, 1, 2]] = 100.0  # case A's X history above everything, but excluded in full ranking
    sx[0, 9] = 50.0  # positive (local 9) above every other item
    sx[1, :] = 1.0  # case B: every competitor above the positive (local 19), no ties
    sx[1, 19] = 0.0
    sy = np.zeros((2, 20), dtype=np.float32)  # case C: all tied
    cand_d = ev.candidates[3]  # case D: positive local 14; three sampled negatives above it
    sy[1, :] = 0.0
    sy[1, 14] = 1.0
    sy[1, cand_d[1:4]] = 2.0
    sy[1, [4, 5, 6]] = 9.0  # D's Y history (internal 35..37): excluded in full ranking
    return {DOMAIN_X: sx, DOMAIN_Y: sy}


@pytest.fixture
def hand_dataset(tmp_path):
    return make_dataset(tmp_path, ITEMS, cases(HAND["histories"], HAND["targets"], ITEMS, width=6))


@pytest.mark.parametrize("ties", ["avg", "pess"])
def test_evaluator_hand_computed(hand_dataset, ties):
    ev = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10, ties=ties, batch_size=1))
    res = ev.evaluate(hand_scores(ev))
    # sampled ranks: A 1, B 11 | C all tied among 1+10, D 4
    c_sampled = 6.0 if ties == "avg" else 11.0
    # full ranks: A 1 (history excluded), B 1 + (30 - 1 - 3 history) = 27 | C: 20 - 1 - 2 history = 17 tied, D 4
    c_full = 1 + 17 / 2 if ties == "avg" else 18.0
    np.testing.assert_allclose(res.ranks["x"], [1, 11])
    np.testing.assert_allclose(res.full_ranks["x"], [1, 27])
    np.testing.assert_allclose(res.ranks["y"], [c_sampled, 4])
    np.testing.assert_allclose(res.full_ranks["y"], [c_full, 4])
    x, y = res.per_domain["x"], res.per_domain["y"]
    assert x["mrr"] == pytest.approx((1 + 1 / 11) / 2)
    assert x["full_mrr"] == pytest.approx((1 + 1 / 27) / 2)
    assert x["hr1"] == x["hr10"] == x["mrr10"] == x["ndcg10"] == pytest.approx(0.5)
    assert y["mrr"] == pytest.approx((1 / c_sampled + 1 / 4) / 2)
    assert y["hr1"] == 0.0 and y["hr5"] == pytest.approx(0.5)
    assert y["hr10"] == pytest.approx(1.0 if ties == "avg" else 0.5)
    assert y["ndcg10"] == pytest.approx((1 / math.log2(c_sampled + 1) * (c_sampled <= 10) + 1 / math.log2(5)) / 2)
    assert y["full_mrr10"] == pytest.approx((1 / c_full * (c_full <= 10) + 1 / 4) / 2)
    assert res.mrr_sum == pytest.approx(x["mrr"] + y["mrr"])
    assert res.n_cases == {"x": 2, "y": 2}


def test_scorer_and_matrices_agree(hand_dataset):
    """A callable scorer (batched), per-domain matrices and all-case matrices give the same result."""

    def scorer(history: torch.Tensor, d: int) -> torch.Tensor:
        n = ITEMS.n_items(d)
        return torch.sin(history[:, -1:].double() * torch.arange(1, n + 1) * 0.37) + 0.01 * history[:, -2:-1]

    ev = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10, batch_size=1))
    by_call = ev.evaluate(scorer)
    h = torch.from_numpy(hand_dataset.test.history)
    full = {d: scorer(h, d) for d in (DOMAIN_X, DOMAIN_Y)}
    rows = {d: np.flatnonzero(hand_dataset.test.target_domain == d) for d in full}
    per_domain = {("x", "y")[d]: full[d][rows[d]].numpy() for d in full}
    for source in (full, per_domain):
        other = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10, batch_size=3)).evaluate(source)
        assert other.flat("t") == pytest.approx(by_call.flat("t"))


def test_torch_ranking_path_matches_numpy(synthetic_dataset, monkeypatch):
    """Scores on an accelerator are ranked with torch ops; force that path on CPU and compare."""
    ev = Evaluator(synthetic_dataset, "valid", EvalConfig(batch_size=64))
    g = torch.Generator().manual_seed(0)
    scores = {d: torch.randint(0, 50, (len(ev), synthetic_dataset.items.n_items(d)), generator=g).float()
              for d in (DOMAIN_X, DOMAIN_Y)}  # many ties
    ref = ev.evaluate(scores)
    monkeypatch.setattr(evaluator_mod, "_use_numpy", lambda s: False)
    assert ev.evaluate(scores).flat("t") == pytest.approx(ref.flat("t"))
    scores[DOMAIN_X][:, 5] = float("nan")  # every row: some of them are X cases
    with pytest.raises(NaNScoresError):
        ev.evaluate(scores)


def test_low_precision_scores_keep_ties(hand_dataset):
    ev = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10))
    ref = ev.evaluate(hand_scores(ev))
    bf16 = ev.evaluate({d: torch.from_numpy(m).to(torch.bfloat16) for d, m in hand_scores(ev).items()})
    assert bf16.flat("t") == pytest.approx(ref.flat("t"))


def test_bad_scores_are_reported(hand_dataset):
    ev = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10))
    scores = hand_scores(ev)
    scores[DOMAIN_Y][1, 3] = np.nan
    with pytest.raises(NaNScoresError, match="'y'"):
        ev.evaluate(scores)
    with pytest.raises(ValueError, match=r"expected \(2, 30\)"):
        ev.evaluate(lambda h, d: torch.zeros(h.shape[0], 20 if d == DOMAIN_X else 19))
    with pytest.raises(KeyError, match="missing domain 1"):
        ev.evaluate({DOMAIN_X: hand_scores(ev)[DOMAIN_X]})


def test_flat_names_and_table(hand_dataset):
    ev = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10))
    res = ev.evaluate(hand_scores(ev))
    flat = res.flat("val")
    expected = {f"val_{d}_{p}{m}" for d in "xy" for p in ("", "full_") for m in METRICS} | {"val_mrr_sum"}
    assert set(flat) == expected
    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in flat)
    assert flat["val_mrr_sum"] == res.mrr_sum
    with pytest.raises(ValueError, match="prefix"):
        res.flat("Val-1")
    table = res.table()
    assert "MRR@10" in table and "NDCG@5" in table and "sampled (1+10)" in table and "full (30 - hist)" in table
    lines = table.splitlines()
    assert len({len(line) for line in lines[1:7]}) == 1  # header, rule and four rows aligned
    sampled_only = Evaluator(hand_dataset, "test", EvalConfig(n_negatives=10, full_ranking=False))
    res2 = sampled_only.evaluate(hand_scores(sampled_only))
    assert len(res2.flat("val")) == 15 and "full (" not in res2.table()


def test_split_name_checked(hand_dataset):
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        Evaluator(hand_dataset, "train", EvalConfig(n_negatives=10))


# ------------------------------------------------------------------------------------------ candidates


def check_candidate_rules(cand: np.ndarray, c: EvalCases, items: ItemSpace, n_negatives: int) -> None:
    assert cand.shape == (len(c), 1 + n_negatives)
    offset = np.where(c.target_domain == DOMAIN_X, items.offset(DOMAIN_X), items.offset(DOMAIN_Y))
    size = np.where(c.target_domain == DOMAIN_X, items.n_items_x, items.n_items_y)
    np.testing.assert_array_equal(cand[:, 0] + offset, c.target)
    neg = cand[:, 1:].astype(np.int64)
    assert (neg >= 0).all() and (neg < size[:, None]).all()  # local ids of the target's domain
    srt = np.sort(neg + offset[:, None], axis=1)  # internal ids
    assert not (srt[:, 1:] == srt[:, :-1]).any()  # no repeats
    # (row, id) pairs as one integer: the flattened sorted rows are globally sorted, so one
    # searchsorted finds whether a row's positive or history items are among its negatives.
    row_key = np.arange(len(c))[:, None] * (items.n_tokens + 1)
    flat = (srt + row_key).ravel()
    probe = np.concatenate([c.target[:, None], c.history], axis=1) + row_key
    at = np.minimum(np.searchsorted(flat, probe), flat.size - 1)
    assert not (flat[at] == probe).any()  # neither the positive nor an item of the row's history


@pytest.fixture(params=["rejection", "dense"])
def draw_method(request, monkeypatch):
    """Run a test with each of the two drawing methods forced (each is uniform over the allowed subsets)."""
    monkeypatch.setattr(candidates_mod, "DENSE_DRAW_FACTOR", 0 if request.param == "rejection" else 10**9)
    return request.param


def test_candidate_rules_synthetic(synthetic_dataset, draw_method):
    for which in ("valid", "test"):
        c = getattr(synthetic_dataset, which)
        cand = draw_candidates(c, synthetic_dataset.items, 999, np.random.default_rng(1))
        check_candidate_rules(cand, c, synthetic_dataset.items, 999)


@pytest.mark.data
def test_candidate_rules_food_kitchen(food_kitchen):
    """The real file's candidates (drawn by rejection: 999 of 29k/35k items) obey every rule."""
    cand, path = load_or_draw_candidates(food_kitchen, "test", 999, 2040)
    assert path is not None and path.is_file()
    check_candidate_rules(cand, food_kitchen.test, food_kitchen.items, 999)


def test_candidates_forced_when_domain_is_exhausted(draw_method):
    """With room for exactly n_negatives, the negatives must be every allowed item; one more is an error."""
    items = ItemSpace(6, 5)
    c = cases([[1, 7, 2], [8, 4], [1, 8, 9, 5]], [3, 9, 6], items, width=4)
    cand = draw_candidates(c, items, 3, np.random.default_rng(0))
    check_candidate_rules(cand, c, items, 3)
    assert [sorted(row[1:]) for row in cand.tolist()] == [[3, 4, 5], [0, 3, 4], [1, 2, 3]]
    with pytest.raises(ValueError, match="eval.n_negatives=4 is too large"):
        draw_candidates(c, items, 4, np.random.default_rng(0))


def test_candidates_are_uniform(draw_method):
    """Every allowed item is drawn about equally often; excluded items never."""
    items = ItemSpace(12, 3)
    n = 3000
    c = cases([[1, 13, 2]] * n, [3] * n, items, width=4)
    cand = draw_candidates(c, items, 5, np.random.default_rng(3))
    check_candidate_rules(cand, c, items, 5)
    counts = np.bincount(cand[:, 1:].ravel(), minlength=12)
    assert (counts[[0, 1, 2]] == 0).all()
    p = 5 / 9
    expected, sigma = n * p, math.sqrt(n * p * (1 - p))
    assert np.abs(counts[3:] - expected).max() < 5 * sigma, counts
    # Pairs, not only single items: each of the C(4, 2) = 6 allowed pairs is equally likely.
    items = ItemSpace(6, 3)
    c = cases([[1, 7]] * n, [6] * n, items, width=3)
    cand = draw_candidates(c, items, 2, np.random.default_rng(4))
    check_candidate_rules(cand, c, items, 2)
    pair = np.sort(cand[:, 1:], axis=1) @ np.array([10, 1])
    counts = np.unique(pair, return_counts=True)[1]
    p = 1 / 6
    assert len(counts) == 6 and np.abs(counts - n * p).max() < 5 * math.sqrt(n * p * (1 - p)), counts


def test_candidates_deterministic_and_cached(tmp_path, monkeypatch, draw_method):
    items = ItemSpace(300, 200)
    ds = make_dataset(tmp_path, items, random_cases(items, 50, 8, seed=0))
    a = draw_candidates(ds.test, items, 99, np.random.default_rng(5))
    np.testing.assert_array_equal(a, draw_candidates(ds.test, items, 99, np.random.default_rng(5)))
    assert not np.array_equal(a, draw_candidates(ds.test, items, 99, np.random.default_rng(6)))

    first, path = load_or_draw_candidates(ds, "test", 99, 5)
    np.testing.assert_array_equal(first, a)  # the file holds the draw of candidate_seed
    assert path is not None and path.parent == tmp_path and path.is_file()
    for part in ("tiny", "test", "neg99", "seed5", "f" * 16):
        assert part in path.name
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file

    def no_draw(*args, **kwargs):
        raise AssertionError("candidates were drawn again although a valid file exists")

    monkeypatch.setattr(candidates_mod, "draw_candidates", no_draw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = load_or_draw_candidates(ds, "test", 99, 5)
    np.testing.assert_array_equal(again, first)
    ev = Evaluator(ds, "test", EvalConfig(n_negatives=99, candidate_seed=5))
    np.testing.assert_array_equal(ev.candidates, first)
    assert ev.candidate_file == path


def test_corrupt_candidate_files_are_redrawn(tmp_path):
    items = ItemSpace(300, 200)
    ds = make_dataset(tmp_path, items, random_cases(items, 50, 8, seed=0))
    good, path = load_or_draw_candidates(ds, "test", 99, 5)

    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        again, _ = load_or_draw_candidates(ds, "test", 99, 5)
    np.testing.assert_array_equal(again, good)

    with np.load(path) as f:  # valid zip, array changed behind the stored hash
        stored = {k: f[k] for k in f.files}
    stored["candidates"] = stored["candidates"].copy()
    stored["candidates"][0, 1] += 1
    np.savez(path, **stored)
    with pytest.warns(UserWarning, match="sha256"):
        again, _ = load_or_draw_candidates(ds, "test", 99, 5)
    np.testing.assert_array_equal(again, good)

    other = make_dataset(tmp_path, items, random_cases(items, 50, 8, seed=1))  # same name/fingerprint, other cases
    with pytest.warns(UserWarning, match="cases_sha256"):
        fresh, _ = load_or_draw_candidates(other, "test", 99, 5)
    check_candidate_rules(fresh, other.test, items, 99)
    with warnings.catch_warnings():  # the rewritten file is intact again
        warnings.simplefilter("error")
        load_or_draw_candidates(other, "test", 99, 5)


def test_unwritable_cache_still_evaluates(tmp_path):
    items = ItemSpace(300, 200)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ds = make_dataset(blocker / "cache", items, random_cases(items, 20, 8, seed=0))
    with pytest.warns(UserWarning, match="cannot save candidates"):
        cand, path = load_or_draw_candidates(ds, "valid", 99, 5)
    assert path is None
    np.testing.assert_array_equal(cand, draw_candidates(ds.valid, items, 99, np.random.default_rng(5)))


# ------------------------------------------------------------------------------------------ RQ3 noise


def _runs(domains: np.ndarray) -> list[int]:
    """Run-length-compressed domain sequence."""
    out: list[int] = []
    for d in domains.tolist():
        if not out or out[-1] != d:
            out.append(d)
    return out


def test_inject_noise_keeps_shape_padding_and_domains(synthetic_dataset):
    items = synthetic_dataset.items
    h = synthetic_dataset.test.history
    assert np.array_equal(inject_noise(h, items, 0.0, np.random.default_rng(0)), h)
    noisy = inject_noise(h, items, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy, inject_noise(h, items, 0.3, np.random.default_rng(0)))
    assert noisy.shape == h.shape and noisy.dtype == np.int64
    n_before, n_after = (h != PAD).sum(1), (noisy != PAD).sum(1)
    k = np.floor(0.3 * n_before + 0.5)
    assert (n_after >= n_before).all() and (n_after <= np.minimum(n_before + k, h.shape[1])).all()
    assert (n_after > n_before).any()  # some insertions happened
    for before, after, n, k_row in zip(h, noisy, n_after, k):
        assert (after[: h.shape[1] - n] == PAD).all() and (after[h.shape[1] - n:] != PAD).all()  # left-padded
        d_after = items.domain_of(after[after != PAD])
        assert (d_after != DOMAIN_NONE).all()
        # Substitutes keep their item's domain and an insertion copies the domain of the item it precedes,
        # so the domain runs of the result are those of the original (the oldest maybe cut off).
        r_before, r_after = _runs(items.domain_of(before[before != PAD])), _runs(d_after)
        assert r_before[len(r_before) - len(r_after):] == r_after
        assert len(np.setdiff1d(after[after != PAD], before)) <= k_row  # at most k new items
    # A substitution always changes its position and an insertion shifts the row: every row with k >= 1 changed.
    assert (noisy != h).any(1)[k >= 1].all()


def test_inject_noise_counts_on_one_history():
    items = ItemSpace(50, 50)
    h = np.array([0, 0, 0, 0, 0, 1, 60, 2, 70, 3], dtype=np.int64)  # 5 items, round(0.4 * 5) = 2 changes
    for seed in range(40):
        out = inject_noise(h, items, 0.4, np.random.default_rng(seed))
        assert out.shape == h.shape
        kept = np.isin(h[h != PAD], out).sum()
        n_out = int((out != PAD).sum())
        n_ins = n_out - 5
        assert 0 <= n_ins <= 2
        assert kept >= 5 - (2 - n_ins)  # every item not substituted survives (no truncation at length <= 7)
        assert len(np.setdiff1d(out[out != PAD], h)) <= 2
    # Domains of two items: a substitute must be the other item of the same domain.
    tiny = ItemSpace(2, 2)  # X 1..2, Y 3..4
    out = inject_noise(np.tile([0, 0, 1, 3], (200, 1)), tiny, 1.0, np.random.default_rng(0))
    only_subs = (out != PAD).sum(1) == 2
    assert only_subs.sum() > 20 and (out[only_subs] == [0, 0, 2, 4]).all()
    full = np.array([1, 60, 2, 70, 3, 4, 61], dtype=np.int64)  # no padding: insertions push items out
    out = inject_noise(np.tile(full, (200, 1)), items, 1.0, np.random.default_rng(1))
    assert (out != PAD).all()
    with_mask = np.array([0, 1, items.mask, 60], dtype=np.int64)  # MASK is kept in place, never picked
    out = inject_noise(np.tile(with_mask, (50, 1)), items, 1.0, np.random.default_rng(2))
    assert ((out == items.mask).sum(1) == 1).all()
    with pytest.raises(ValueError, match="rate"):
        inject_noise(h, items, 1.5, np.random.default_rng(0))


def test_evaluator_noise_only_on_test_and_keeps_candidates(synthetic_dataset):
    clean = Evaluator(synthetic_dataset, "test", EvalConfig())
    noisy = Evaluator(synthetic_dataset, "test", EvalConfig(noise_rate=0.2, noise_seed=3))
    np.testing.assert_array_equal(noisy.candidates, clean.candidates)
    assert not np.array_equal(noisy.history, clean.history)
    np.testing.assert_array_equal(noisy.history, inject_noise(
        synthetic_dataset.test.history, synthetic_dataset.items, 0.2, np.random.default_rng(3)))
    with pytest.warns(UserWarning, match="test cases only"):
        valid = Evaluator(synthetic_dataset, "valid", EvalConfig(noise_rate=0.2))
    np.testing.assert_array_equal(valid.history, synthetic_dataset.valid.history)
    seen = []
    noisy.evaluate(lambda h, d: seen.append(h.clone()) or torch.zeros(h.shape[0], synthetic_dataset.items.n_items(d)))
    assert sum(len(s) for s in seen) == len(synthetic_dataset.test)
