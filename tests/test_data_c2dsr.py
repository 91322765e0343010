"""C2DSR-format reader: stable-sort targets, id shift, splits, bad-input errors, and the Food-Kitchen counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpgdiff.data import DOMAIN_X, DOMAIN_Y, PAD, DataError, load_dataset
from dpgdiff.data.c2dsr import load_c2dsr_folder, read_sequences
from tests.conftest import tok

# Tiny pair: X file ids 0..3 (internal 1..4), Y file ids 4..7 (internal 5..8), 3 users.
N_X, N_Y, N_USERS = 4, 4, 3


def tiny(make_c2dsr_dir, valid=None, test=None, train=None):
    valid = valid or [f"0\t0\t{tok(0, 10)}\t{tok(4, 20)}\t{tok(1, 30)}"]
    test = test or [f"1\t1\t{tok(5, 10)}\t{tok(2, 20)}\t{tok(6, 30)}"]
    return make_c2dsr_dir(N_X, N_Y, N_USERS, valid, test, train)


def test_ties_keep_file_order(make_c2dsr_dir):
    # Line tokens (file order): X0@10, Y5@30, X1@20, X2@30, Y6@30. Stable sort by ts:
    # X0, X1, Y5, X2, Y6 -> target Y6 (file id 6, internal 7). Sorting ties by id instead would differ.
    line = f"2\t0\t{tok(0, 10)}\t{tok(5, 30)}\t{tok(1, 20)}\t{tok(2, 30)}\t{tok(6, 30)}"
    folder = tiny(make_c2dsr_dir, valid=[line])
    ds = load_c2dsr_folder(folder, "tiny", "c2dsr-histories", max_len=6)
    assert ds.valid.target.tolist() == [7]
    assert ds.valid.history[0].tolist() == [PAD, PAD, 1, 2, 6, 3]
    assert ds.valid.user.tolist() == [2]
    # The tie rule matters on this line: ordering ties by descending id gives Y6, Y5, X2 -> target X2.
    fields = [t.split("|") for t in line.split("\t")[2:]]
    by_desc = sorted(fields, key=lambda f: (int(f[1]), -int(f[0])))
    assert int(by_desc[-1][0]) + 1 != ds.valid.target[0]


def test_lf_and_crlf_lines_read_the_same(tmp_path):
    lines = [f"0\t0\t{tok(3, 5)}\t{tok(7, 5)}\t{tok(0, 1)}", f"1\t1\t{tok(1, 2)}\t{tok(4, 2)}"]
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(("\n".join(lines) + "\n").encode())
    crlf.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    a, ua = read_sequences(lf, 8, 2, min_items=1)
    b, ub = read_sequences(crlf, 8, 2, min_items=1)
    assert [s.tolist() for s in a] == [s.tolist() for s in b] == [[1, 4, 8], [2, 5]]
    assert ua.tolist() == ub.tolist() == [0, 1]


def test_ids_shift_by_one_and_domains(make_c2dsr_dir):
    folder = tiny(make_c2dsr_dir)
    ds = load_c2dsr_folder(folder, "tiny", "c2dsr-histories")
    assert (ds.items.n_items_x, ds.items.n_items_y, ds.n_users) == (N_X, N_Y, N_USERS)
    # File id 4 = first Y item (>= |A|, C2DSR's off-by-one avoided) -> internal 5 = offset(Y).
    assert ds.valid.history[0, -2:].tolist() == [1, 5]
    assert ds.items.domain_of(np.array([5]))[0] == DOMAIN_Y == ds.valid.target_domain[0] + 1
    assert ds.valid.target_domain.tolist() == [DOMAIN_X] and ds.test.target_domain.tolist() == [DOMAIN_Y]
    assert ds.valid.history.dtype == np.int64 and ds.valid.history.shape == (1, 15)


def test_histories_split_never_trains_on_eval_targets(make_c2dsr_dir):
    folder = tiny(make_c2dsr_dir)
    ds = load_c2dsr_folder(folder, "tiny", "c2dsr-histories", max_len=3)
    assert [s.tolist() for s in ds.train_sequences] == [[1, 5], [6, 3]]
    assert ds.training_examples("prefix").target.tolist() == []  # no prefix of length >= 2 with both domains and a next item
    assert ds.training_examples("last").target.tolist() == [5, 3]


def test_c2dsr_split_reads_training_file(make_c2dsr_dir):
    train = [f"0\t2\t{tok(4, 1)}\t{tok(0, 2)}\t{tok(3, 3)}", f"2\t3\t{tok(7, 9)}\t{tok(1, 8)}"]
    folder = tiny(make_c2dsr_dir, train=train)
    ds = load_c2dsr_folder(folder, "tiny", "c2dsr")
    assert [s.tolist() for s in ds.train_sequences] == [[5, 1, 4], [2, 8]]
    assert ds.item_counts().tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 1, 0]
    other = load_c2dsr_folder(folder, "tiny", "c2dsr-histories")
    assert other.fingerprint != ds.fingerprint


def test_c2dsr_split_without_training_file_suggests_histories(make_c2dsr_dir):
    folder = tiny(make_c2dsr_dir)
    with pytest.raises(DataError, match=r"traindata_new\.txt.*c2dsr-histories"):
        load_c2dsr_folder(folder, "tiny", "c2dsr")


@pytest.mark.parametrize("missing", ["Alist.txt", "Blist.txt", "userlist.txt", "validdata_new.txt", "testdata_new.txt"])
def test_missing_file_is_named(make_c2dsr_dir, missing):
    folder = tiny(make_c2dsr_dir)
    (folder / missing).unlink()
    with pytest.raises(DataError, match=missing.replace(".", r"\.")):
        load_c2dsr_folder(folder, "tiny", "c2dsr-histories")


GOOD = f"0\t0\t{tok(0, 1)}\t{tok(4, 2)}"


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ("0", "expected 'user_index"),  # missing fields
        ("0\t0", "empty sequence"),
        (f"0\t0\t{tok(0, 1)}", "sequence of 1 item"),  # an evaluation line needs a history and a target
        (f"a\t0\t{tok(0, 1)}\t{tok(4, 2)}", "user index 'a'"),
        (f"0\tz\t{tok(0, 1)}\t{tok(4, 2)}", "sequence index 'z'"),
        (f"7\t0\t{tok(0, 1)}\t{tok(4, 2)}", "user index 7 out of range"),
        (f"0\t0\tx1|5|d|\t{tok(4, 2)}", "item id 'x1'"),
        (f"0\t0\t{tok(0, 1)}\t4|yesterday|d|", "timestamp 'yesterday'"),
        (f"0\t0\t{tok(0, 1)}\t12", "bad token '12'"),
        (f"0\t0\t{tok(0, 1)}\t{tok(4, 2)}\t", "bad token ''"),  # trailing tab
        (f"0\t0\t{tok(0, 1)}\t{tok(8, 2)}", "item id 8 out of range"),
        (f"0\t0\t{tok(-1, 1)}\t{tok(4, 2)}", "item id -1 out of range"),
        ("", "expected 'user_index"),  # blank line
    ],
)
def test_bad_sequence_line_names_file_and_line(make_c2dsr_dir, bad, pattern):
    folder = tiny(make_c2dsr_dir, test=[GOOD, bad])
    with pytest.raises(DataError, match=pattern) as info:
        load_c2dsr_folder(folder, "tiny", "c2dsr-histories")
    assert f"testdata_new.txt:2:" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "fname, content, pattern",
    [
        ("Alist.txt", "0\tA0\t0\n1\tA1\n", r"Alist\.txt:2: expected 3 tab-separated fields"),
        ("Alist.txt", "0\tA0\t0\n1\tA1\tone\n", r"Alist\.txt:2: index field 'one' is not an integer"),
        ("Blist.txt", "4\tB0\t0\n5\tB1\t5\n", r"Blist\.txt:2: index 5 out of order"),
        ("userlist.txt", "U0\t0\nU1\n", r"userlist\.txt:2: expected 2"),
        ("userlist.txt", "", r"userlist\.txt: file is empty"),
    ],
)
def test_bad_vocabulary_line(make_c2dsr_dir, fname, content, pattern):
    folder = tiny(make_c2dsr_dir)
    (folder / fname).write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_c2dsr_folder(folder, "tiny", "c2dsr-histories")


def test_training_file_errors_name_it(make_c2dsr_dir):
    folder = tiny(make_c2dsr_dir, train=[f"0\t2\t{tok(0, 1)}", "1\t3\t"])
    with pytest.raises(DataError, match=r"traindata_new\.txt:2: empty sequence"):
        load_c2dsr_folder(folder, "tiny", "c2dsr")


def test_unknown_names_and_splits(make_c2dsr_dir):
    with pytest.raises(DataError, match="unknown dataset 'food'"):
        load_dataset("food")
    with pytest.raises(DataError, match="split 'loo'"):
        load_dataset("food_kitchen", split="loo")
    with pytest.raises(DataError, match="split 'bogus'"):
        load_c2dsr_folder(tiny(make_c2dsr_dir), "tiny", "bogus")


# ---------------------------------------------------------------------------- real Food-Kitchen files


@pytest.mark.data
def test_food_kitchen_counts_match_readme(food_kitchen):
    ds = food_kitchen
    assert (ds.items.n_items_x, ds.items.n_items_y, ds.n_users) == (29_207, 34_886, 16_579)
    assert (ds.valid.count(DOMAIN_X), ds.valid.count(DOMAIN_Y)) == (2_722, 5_451)
    assert (ds.test.count(DOMAIN_X), ds.test.count(DOMAIN_Y)) == (2_747, 5_659)
    assert round(ds.card().avg_len_eval, 3) == 9.846
    lengths = np.concatenate([(ds.valid.history != PAD).sum(1), (ds.test.history != PAD).sum(1)])
    assert lengths.min() == 5 and lengths.max() == 14
    for cases in (ds.valid, ds.test):  # every history holds both domains (README)
        dom = ds.items.domain_of(cases.history)
        assert ((dom == DOMAIN_X).sum(1) >= 2).all() and ((dom == DOMAIN_Y).sum(1) >= 2).all()


@pytest.mark.data
def test_food_kitchen_histories_split(food_kitchen):
    ds = food_kitchen
    assert ds.split == "c2dsr-histories" and len(ds.train_sequences) == 16_579
    eval_cases = [(ds.valid, i) for i in range(len(ds.valid))] + [(ds.test, i) for i in range(len(ds.test))]
    for seq, (cases, i) in zip(ds.train_sequences, eval_cases):
        hist = cases.history[i]
        assert seq.tolist() == hist[hist != PAD].tolist()  # the training sequence is exactly the history
        assert cases.target[i] not in seq  # ... so the evaluation target is never a training target
    assert ds.card().train_examples_last == 16_579


@pytest.mark.data
def test_food_kitchen_unstable_tie_break_would_change_counts(food_kitchen_dir: Path):
    # README: breaking ties by descending id makes 4,849 validation targets X instead of 2,722.
    n_x = 29_207
    x_targets = 0
    for line in (food_kitchen_dir / "validdata_new.txt").read_text().splitlines():
        fields = [t.split("|") for t in line.split("\t")[2:]]
        last = sorted(fields, key=lambda f: (int(f[1]), -int(f[0])))[-1]
        x_targets += int(last[0]) < n_x
    assert x_targets == 4_849


def test_own_folder_in_c2dsr_format(make_c2dsr_dir):
    folder = tiny(make_c2dsr_dir)
    ds = load_dataset(folder, split="c2dsr-histories")
    assert ds.name == "tiny" and len(ds.valid) == len(ds.test) == 1
    with pytest.raises(DataError, match=r"traindata_new\.txt: file missing.*c2dsr-histories"):
        load_dataset(str(folder))  # default split c2dsr needs the training file
