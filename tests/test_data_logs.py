"""Bring-your-own interaction logs: leave-one-out split, id mapping, stable ties, and errors naming row/column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpgdiff.data import DOMAIN_X, DOMAIN_Y, PAD, DataError, load_dataset

# user u1: 5 interactions (ties at t=3 keep file order: m2 before b1); u2: 2 (training only); u3: 3.
ROWS = [
    ("u1", "m1", "movie", 1),
    ("u1", "b2", "book", 2),
    ("u2", "m3", "movie", 1),
    ("u1", "m2", "movie", 3),
    ("u1", "b1", "book", 3),
    ("u3", "b1", "book", 5),
    ("u1", "m3", "movie", 9),
    ("u2", "b2", "book", 2),
    ("u3", "m1", "movie", 6),
    ("u3", "m2", "movie", 7),
]


def write_log(tmp_path, rows=ROWS, name="log.csv", columns=("user_id", "item_id", "domain", "timestamp")):
    frame = pd.DataFrame(rows, columns=list(columns))
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def check_split(ds):
    # Domain X = "book" (first in sorted order): b1 -> 1, b2 -> 2; Y = "movie": m1 -> 3, m2 -> 4, m3 -> 5.
    assert (ds.items.n_items_x, ds.items.n_items_y, ds.n_users) == (2, 3, 3)
    m1, m2, m3, b1, b2 = 3, 4, 5, 1, 2
    # u1 in time order: m1, b2, m2, b1 (tie at t=3: file order), m3.
    assert [s.tolist() for s in ds.train_sequences] == [[m1, b2, m2], [m3, b2], [b1]]
    assert ds.valid.target.tolist() == [b1, m1] and ds.valid.user.tolist() == [0, 2]
    assert ds.test.target.tolist() == [m3, m2]
    assert ds.valid.history[0, -3:].tolist() == [m1, b2, m2] and ds.valid.history[0, -4] == PAD
    assert ds.test.history[0, -4:].tolist() == [m1, b2, m2, b1]  # the test history includes the validation item
    assert ds.test.history[1, -2:].tolist() == [b1, m1]
    assert ds.valid.target_domain.tolist() == [DOMAIN_X, DOMAIN_Y]
    assert ds.split == "loo" and ds.name == "log"


def test_csv_leave_one_out(tmp_path):
    check_split(load_dataset(str(write_log(tmp_path))))


def test_parquet_leave_one_out(tmp_path):
    pytest.importorskip("pyarrow")
    check_split(load_dataset(write_log(tmp_path, name="log.parquet")))


def test_explicit_domains_and_numeric_ids(tmp_path):
    rows = [(10, 7, "a", 1), (10, 30, "b", 2), (10, 100, "a", 3), (10, 8, "b", 4), (2, 100, "a", 1)]
    path = write_log(tmp_path, rows)
    ds = load_dataset(path, domains=("b", "a"))  # X = "b" although "a" sorts first
    assert (ds.items.n_items_x, ds.items.n_items_y) == (2, 2)
    # Numeric ids sort numerically: X = b: 8 -> 1, 30 -> 2; Y = a: 7 -> 3, 100 -> 4. User 2 sorts before 10.
    assert [s.tolist() for s in ds.train_sequences] == [[4], [3, 2]]
    assert ds.valid.target.tolist() == [4] and ds.test.target.tolist() == [1]
    assert ds.test.user.tolist() == [1]


def test_dates_as_timestamps(tmp_path):
    rows = [("u", "x1", "x", "2020-01-03"), ("u", "y1", "y", "2020-01-01"), ("u", "x2", "x", "2020-01-02")]
    ds = load_dataset(write_log(tmp_path, rows))
    assert ds.train_sequences[0].tolist() == [3] and ds.valid.target.tolist() == [2] and ds.test.target.tolist() == [1]


def test_card_and_fingerprint(tmp_path):
    ds = load_dataset(write_log(tmp_path))
    card = ds.card()
    assert (card.valid_x, card.valid_y, card.test_x, card.test_y) == (1, 1, 0, 2)
    assert card.users == 3 and len(ds.fingerprint) == 64
    assert ds.cache_dir.is_dir() and ds.fingerprint[:12] in ds.cache_dir.name
    other = load_dataset(write_log(tmp_path), domains=("movie", "book"))
    assert other.fingerprint != ds.fingerprint


def test_derived_files_go_to_the_user_cache_never_into_the_data_folder(tmp_path, monkeypatch):
    """Issue 42 §7: the loader made `<data folder>/dpgdiff-cache/...`, in a folder that may be shared or read-only.
    Derived files (the evaluation candidates) go to the per-user cache, or to DPGDIFF_DERIVED_DIR when it is set;
    a process with an empty cache (a Ray worker on another node) draws the identical candidates again."""
    from dpgdiff.evaluation.candidates import load_or_draw_candidates

    data = tmp_path / "data"
    data.mkdir()
    rows = [(f"u{u}", f"{d}{(u + k) % 8}", d, 4 * u + k) for u in range(4) for k, d in enumerate("mbmb")]
    log = write_log(data, rows)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DPGDIFF_DERIVED_DIR", raising=False)
    ds = load_dataset(log)
    cand, path = load_or_draw_candidates(ds, "test", 1, seed=7)
    assert path is not None and path.is_file() and path.is_relative_to(tmp_path / "cache" / "dpgdiff" / "derived")
    assert sorted(data.iterdir()) == [log], "nothing written beside the data"

    monkeypatch.setenv("DPGDIFF_DERIVED_DIR", str(tmp_path / "shared"))  # asked for: a folder of one's choice
    elsewhere = load_dataset(log)
    again, shared = load_or_draw_candidates(elsewhere, "test", 1, seed=7)
    assert shared is not None and shared.is_relative_to(tmp_path / "shared") and shared.name == path.name
    assert np.array_equal(again, cand) and sorted(data.iterdir()) == [log]


@pytest.mark.parametrize(
    "rows, columns, pattern",
    [
        (ROWS, ("user", "item_id", "domain", "timestamp"), r"missing column\(s\) user_id"),
        (ROWS[:3] + [("u1", "", "book", 4)], None, r"line 5, column 'item_id': empty value"),
        (ROWS[:3] + [("u1", "m9", "music", 4)], None, r"exactly two values, found 3"),
        (ROWS[:3] + [("u1", "m9", "book", "soon")], None, r"line 5, column 'timestamp': 'soon' is not a number"),
        ([("u1", "m1", "book", "later"), ("u1", "m2", "movie", "never")], None, r"line 2, column 'timestamp'.*neither a number nor a date"),
        (ROWS[:2], None, r"no user has >= 3 interactions"),
    ],
)
def test_bad_logs(tmp_path, rows, columns, pattern):
    path = write_log(tmp_path, rows, columns=columns or ("user_id", "item_id", "domain", "timestamp"))
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(path)
    assert "log.csv" in str(info.value)


def test_bad_domain_option_and_split(tmp_path):
    path = write_log(tmp_path)
    with pytest.raises(DataError, match=r"line 2, column 'domain': 'movie' is neither 'book' \(X\) nor 'music'"):
        load_dataset(path, domains=("book", "music"))
    with pytest.raises(DataError, match="only split 'loo'"):
        load_dataset(path, split="c2dsr")
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "absent.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read"):
        load_dataset(tmp_path / "broken.parquet")


def test_many_users_vectorised(tmp_path):
    rng = np.random.default_rng(0)
    n = 20_000
    frame = pd.DataFrame({
        "user_id": rng.integers(0, 2000, n), "item_id": rng.integers(0, 500, n),
        "domain": rng.choice(["x", "y"], n), "timestamp": rng.integers(0, 100, n),
    })
    frame.to_csv(tmp_path / "big.csv", index=False)
    ds = load_dataset(tmp_path / "big.csv")
    counts = frame.groupby("user_id").size()
    assert len(ds.valid) == len(ds.test) == int((counts >= 3).sum())
    assert sum(len(s) for s in ds.train_sequences) + 2 * len(ds.valid) == n


def test_options_reload_the_same_dataset(tmp_path):
    path = write_log(tmp_path)
    ds = load_dataset(path, domains=("movie", "book"), max_len=4)
    assert ds.options == {"max_len": 4, "domains": ["movie", "book"]}
    again = load_dataset(path, ds.split, **ds.options)
    assert again.fingerprint == ds.fingerprint and again.valid.history.shape[1] == 4


def test_evaluate_a_model_trained_on_a_log_that_moved(tmp_path, capsys):
    """Issue 27 §4: the checkpoint of a model trained on a user's log records the log's resolved path (and its
    fingerprint): `python -m dpgdiff evaluate` finds it there, and after the file moved, through --data PATH or
    --data-dir FOLDER; without either it names both flags; a changed file is refused by the fingerprint check."""
    import shutil

    from dpgdiff import train
    from dpgdiff.cli import main
    from dpgdiff.config import Config
    from dpgdiff.training import load_model

    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"{'bm'[t % 2]}{int(rng.integers(25))}", ["book", "movie"][t % 2], t)
            for u in range(30) for t in range(6)]
    first = tmp_path / "first"
    first.mkdir()
    log = write_log(first, rows, name="valid_copy.csv")
    out = tmp_path / "run"
    train(Config().with_overrides(["model.dim=16", "model.n_c_layers=1", "train.epochs=1", "train.batch_size=256",
                                   "train.device=cpu", "diffusion.sampler=ddim", "diffusion.infer_steps=2",
                                   "diffusion.val_infer_steps=2", "eval.n_negatives=5"]),
          load_dataset(log), out_dir=out)
    _, _, info = load_model(out / "best.pt")
    assert info["dataset"]["path"] == str(log.resolve()) and info["dataset"]["fingerprint"]
    checkpoint = ["evaluate", "--checkpoint", str(out / "best.pt"), "--device", "cpu"]
    assert main(checkpoint) == 0, capsys.readouterr().err  # where it was trained

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(log), moved / log.name)
    assert main(checkpoint) == 2
    err = capsys.readouterr().err
    assert "valid_copy.csv" in err and "--data PATH" in err and "--data-dir" in err and "Traceback" not in err, err
    assert main([*checkpoint, "--data", str(moved / log.name)]) == 0, capsys.readouterr().err
    assert "MRR" in capsys.readouterr().out
    assert main([*checkpoint, "--data-dir", str(moved)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    (moved / log.name).write_text((moved / log.name).read_text().replace("u0,", "u99,", 1))  # other data
    assert main([*checkpoint, "--data", str(moved / log.name)]) == 2
    assert "fingerprint" in capsys.readouterr().err
