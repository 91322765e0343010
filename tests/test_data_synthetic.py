"""Synthetic data: deterministic files, the C2DSR quirks it plants, and a signal beyond popularity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpgdiff.data import DOMAIN_X, DOMAIN_Y, PAD, DataError, load_dataset
from dpgdiff.data.sources import C2DSR_FILES

SMALL = dict(n_users=120, n_items_x=300, n_items_y=400)


def test_same_seed_same_files_and_fingerprint(tmp_path):
    a = load_dataset("synthetic", data_dir=tmp_path / "a", seed=3, **SMALL)
    b = load_dataset("synthetic", data_dir=tmp_path / "b", seed=3, **SMALL)
    assert a.fingerprint == b.fingerprint
    for name in C2DSR_FILES:
        assert (Path(a.source) / name).read_bytes() == (Path(b.source) / name).read_bytes()
    c = load_dataset("synthetic", data_dir=tmp_path / "a", seed=4, **SMALL)
    assert c.fingerprint != a.fingerprint
    assert (c.items.n_items_x, c.items.n_items_y, c.n_users) == (300, 400, 120)


def test_reload_reuses_files(tmp_path):
    a = load_dataset("synthetic", data_dir=tmp_path, **SMALL)
    folder = Path(a.source)
    stamp = (folder / "validdata_new.txt").stat().st_mtime_ns
    b = load_dataset("synthetic", data_dir=tmp_path, split="c2dsr-histories", **SMALL)
    assert (folder / "validdata_new.txt").stat().st_mtime_ns == stamp
    assert b.split == "c2dsr-histories" and b.fingerprint != a.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temp folders left


def test_eval_histories_hold_both_domains(synthetic_dataset):
    ds = synthetic_dataset
    for cases in (ds.valid, ds.test):
        dom = ds.items.domain_of(cases.history)
        assert ((dom == DOMAIN_X).sum(1) >= 1).all() and ((dom == DOMAIN_Y).sum(1) >= 1).all()
        assert not (cases.history == cases.target[:, None]).any()  # the target is never in its own history
    assert len(ds.valid) + len(ds.test) == ds.n_users  # one evaluation sequence per user


def _parse(path):
    lines = []
    for line in path.read_text().splitlines():
        lines.append([(int(t.split("|")[0]), int(t.split("|")[1])) for t in line.split("\t")[2:]])
    return lines


def test_file_quirks_ties_and_out_of_order_tokens(synthetic_dataset):
    folder = Path(synthetic_dataset.source)
    n_x = synthetic_dataset.items.n_items_x
    lines = _parse(folder / "validdata_new.txt") + _parse(folder / "testdata_new.txt")
    stable_targets = [sorted(toks, key=lambda t: t[1])[-1][0] for toks in lines]
    assert [t + 1 for t in stable_targets] == synthetic_dataset.valid.target.tolist() + synthetic_dataset.test.target.tolist()
    # Ties at the target exist, and breaking them by id instead of file order changes some targets.
    by_id = [sorted(toks, key=lambda t: (t[1], -t[0]))[-1][0] for toks in lines]
    assert sum(a != b for a, b in zip(stable_targets, by_id)) >= 0.05 * len(lines)
    # As in C2DSR's files, a line whose true last item is X ends with an (earlier) Y item.
    x_last = [toks for toks, tgt in zip(lines, stable_targets) if tgt < n_x]
    assert x_last and sum(toks[-1][0] >= n_x for toks in x_last) >= 0.8 * len(x_last)


def test_has_signal_beyond_popularity(synthetic_dataset):
    """Item co-occurrence (incl. across domains) ranks test targets far better than popularity."""
    ds = synthetic_dataset
    n = ds.items.n_tokens
    co = np.zeros((n, n), dtype=np.float32)
    for seq in ds.train_sequences:
        co[np.ix_(seq, seq)] += 1
    np.fill_diagonal(co, 0)
    pop = ds.item_counts().astype(np.float32)

    def mrr(score_of) -> float:
        rr = []
        for hist, target, dom in zip(ds.test.history, ds.test.target, ds.test.target_domain):
            lo, hi = ds.items.offset(dom), ds.items.offset(dom) + ds.items.n_items(dom)
            scores = score_of(hist[hist != PAD])[lo:hi]
            rr.append(1.0 / (1 + (scores > scores[target - lo]).sum()))
        return float(np.mean(rr))

    pop_mrr = mrr(lambda h: pop)
    knn_mrr = mrr(lambda h: co[h].sum(0) + 1e-3 * pop)
    print(knn_mrr, pop_mrr)
    assert knn_mrr > 1.5 * pop_mrr, (knn_mrr, pop_mrr)


def test_bad_options(tmp_path):
    with pytest.raises(DataError, match="unknown synthetic option 'users'"):
        load_dataset("synthetic", data_dir=tmp_path, users=5)
    with pytest.raises(DataError, match="n_users=.*'many'.*int"):
        load_dataset("synthetic", data_dir=tmp_path, n_users="many")
    with pytest.raises(DataError, match="noise must be in"):
        load_dataset("synthetic", data_dir=tmp_path, noise=1.5)
    with pytest.raises(DataError, match="n_items_x must be >="):
        load_dataset("synthetic", data_dir=tmp_path, n_items_x=10)
    assert not any(tmp_path.iterdir())


def test_string_options_from_cli_are_converted(tmp_path):
    ds = load_dataset("synthetic", data_dir=tmp_path, n_users="50", n_items_x="100", n_items_y="120", noise="0.2")
    assert (ds.n_users, ds.items.n_items_x, ds.items.n_items_y) == (50, 100, 120)


def test_options_reload_the_same_dataset(tmp_path):
    ds = load_dataset("synthetic", data_dir=tmp_path, seed=5, **SMALL)
    assert ds.options["seed"] == 5 and ds.options["n_users"] == 120 and ds.options["max_len"] == 15
    assert load_dataset("synthetic", ds.split, data_dir=tmp_path, **ds.options).fingerprint == ds.fingerprint


def test_sequence_length_options_are_not_history_length(tmp_path):
    ds = load_dataset("synthetic", data_dir=tmp_path, max_len=8, min_seq_len=10, max_seq_len=12, **SMALL)
    assert ds.max_len == 8 and ds.options["max_len"] == 8 and ds.options["max_seq_len"] == 12
    assert min(len(s) for s in ds.train_sequences) == 10 and max(len(s) for s in ds.train_sequences) == 12
    assert ds.valid.history.shape[1] == 8
