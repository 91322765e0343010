"""Recommendations in the user's own ids: the id map in checkpoints, `Recommender`, `python -m dpgdiff recommend`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpgdiff.cli import main
from dpgdiff.config import Config
from dpgdiff.data import load_dataset
from dpgdiff.data.ids import ItemIdMap
from dpgdiff.models import build_model
from dpgdiff.recommend import Recommender, RecommendError, read_requests
from dpgdiff import train
from tests.busy import scaled

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.dim=16", "model.n_c_layers=1", "train.epochs=1", "train.mode=last", "train.batch_size=256",
        "train.num_threads=1", "train.device=cpu", "diffusion.sampler=ddim", "diffusion.infer_steps=2",
        "diffusion.val_infer_steps=2"]


def tiny_config(*extra: str) -> Config:
    return Config().with_overrides([*TINY, *extra])


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, synthetic_dataset) -> Path:
    out = tmp_path_factory.mktemp("rec_synthetic")
    train(tiny_config(), synthetic_dataset, out_dir=out)
    return out


@pytest.fixture(scope="module")
def log_run(tmp_path_factory) -> tuple[Path, object]:
    """A tiny interaction log with text ids; "7" is an item of both domains (two different items)."""
    folder = tmp_path_factory.mktemp("rec_log")
    rng = np.random.default_rng(0)
    x_items = [f"bk{i}" for i in range(30)] + ["7"]
    y_items = [f"mv{i}" for i in range(30)] + ["7"]
    rows = []
    for u in range(40):
        for t in range(8):
            dom = "books" if (u + t) % 2 else "movies"
            pool = x_items if dom == "books" else y_items
            rows.append((f"user{u}", pool[int(rng.integers(len(pool)))], dom, t))
    pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "timestamp"]).to_csv(folder / "log.csv", index=False)
    dataset = load_dataset(folder / "log.csv")
    train(tiny_config("eval.n_negatives=5"), dataset, out_dir=folder / "run")
    return folder / "run", dataset


def test_checkpoint_records_the_item_id_map(synthetic_run, synthetic_dataset):
    best = torch.load(synthetic_run / "best.pt", weights_only=True)
    ids = ItemIdMap.from_dict(best["dataset"]["item_ids"])
    assert ids.scheme == "c2dsr-global" and ids.items == synthetic_dataset.items
    assert ids.max_len == synthetic_dataset.max_len
    # metrics.json stays small: the map lives in the checkpoints only
    assert "item_ids" not in json.loads((synthetic_run / "metrics.json").read_text())["dataset"]


def test_top_k_in_the_files_global_ids(synthetic_run, synthetic_dataset):
    rec = Recommender.load(synthetic_run / "best.pt")
    nx, ny = synthetic_dataset.items.n_items_x, synthetic_dataset.items.n_items_y
    # global file ids: X 0..nx-1, Y nx..nx+ny-1; max_len (15) items, so older ones do not reach the model
    history = [12, 55, nx + 3, nx + 301] + list(range(100, 100 + synthetic_dataset.max_len - 4))
    first = rec.recommend([history, history], domain=["y", "x"], k=7)
    assert all(nx <= i < nx + ny for i in first[0].items) and all(0 <= i < nx for i in first[1].items)
    for r in first:
        assert len(r.items) == 7 and len(set(r.items)) == 7 and r.unknown == []
        assert r.scores == sorted(r.scores, reverse=True)
    # the best items, put into the history before the model's window, change nothing but are excluded
    again = rec.recommend([first[0].items[:3] + history], domain="y", k=7)[0]
    assert not set(first[0].items[:3]) & set(again.items)
    assert again.items[:4] == first[0].items[3:7]
    # same call, same answer (the reverse-process noise is seeded per call)
    assert rec.recommend([history], "y", 7)[0].items == rec.recommend([history], "y", 7)[0].items


def test_unknown_ids_are_dropped_and_reported(synthetic_run, synthetic_dataset):
    rec = Recommender.load(synthetic_run / "best.pt")
    n = synthetic_dataset.items.n_items_x + synthetic_dataset.items.n_items_y
    with_junk = rec.recommend([[12, "bogus", n, -1, "55"]], domain="y", k=5)[0]
    clean = rec.recommend([[12, 55]], domain="y", k=5)[0]
    assert with_junk.unknown == ["bogus", n, -1]
    assert with_junk.items == clean.items  # "55" (text) is the same item as 55


@pytest.mark.parametrize("history, domain, k, message", [
    ([], "y", 5, "row 0: empty history"),
    ("12,55", "y", 5, "row 0: history must be a list"),
    ([10 ** 9, "x"], "y", 5, "row 0: none of the history's item ids"),
    ([12], "z", 5, "row 0: unknown domain 'z'"),
    ([12], "y", 0, "row 0: k must be >= 1"),
    ([12], "y", 2.5, "row 0: k must be an integer"),
])
def test_bad_requests_are_clear_errors(synthetic_run, history, domain, k, message):
    rec = Recommender.load(synthetic_run / "best.pt")
    with pytest.raises(RecommendError, match=message):
        rec.recommend([history], domain=domain, k=k)


def test_log_ids_domain_values_and_ambiguous_ids(log_run):
    run, dataset = log_run
    rec = Recommender.load(run / "best.pt")
    assert set(rec.domains) == {"x", "y", "books", "movies"}
    out = rec.recommend([["bk1", "mv2", "7", "books:7"]], domain="movies", k=50)[0]
    assert out.unknown == ["7"]  # in both domains: ambiguous unless written x:7 / books:7
    y_ids = set(dataset.raw_item_ids[1])
    assert set(out.items) <= y_ids and "mv2" not in out.items and len(out.items) == len(y_ids) - 1
    assert all(isinstance(i, str) for i in out.items)
    qualified = rec.recommend([["bk1", "mv2", "y:7"]], domain="y", k=50)[0]
    assert "7" not in qualified.items and len(qualified.items) == len(y_ids) - 2


def test_checkpoint_without_the_map_reloads_its_c2dsr_dataset(synthetic_run, synthetic_data_dir, tmp_path):
    best = torch.load(synthetic_run / "best.pt", weights_only=True)
    del best["dataset"]["item_ids"]  # as written before the map was recorded
    torch.save(best, tmp_path / "old.pt")
    old = Recommender.load(tmp_path / "old.pt", data_dir=str(synthetic_data_dir))
    new = Recommender.load(synthetic_run / "best.pt")
    assert old.recommend([[12, 55]], "y", 5)[0].items == new.recommend([[12, 55]], "y", 5)[0].items


def test_a_checkpoint_with_a_popularity_bias_serves(synthetic_dataset, tmp_path):
    """Start values computed from the training counts (model.item_bias=popularity) are not needed to serve:
    Recommender.load builds from the id map alone (it failed on `item_counts` before), and the saved bias, not a
    fresh popularity start, is what it scores with."""
    train(tiny_config("model.item_bias=popularity"), synthetic_dataset, out_dir=tmp_path)
    rec = Recommender.load(tmp_path / "best.pt")
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    served, saved = rec.model.state_dict(), best["model"]
    assert served.keys() == saved.keys() and all(torch.equal(served[k], saved[k]) for k in saved)
    fresh = build_model(Config.from_saved(best["config"]), synthetic_dataset)  # the popularity start, untrained
    assert not torch.equal(rec.model.bias(0), fresh.bias(0)) and rec.model.bias(0).abs().sum() > 0
    top = rec.recommend([[12, 55, 301]], domain="x", k=5)[0]
    assert len(top.items) == 5 and top.scores == sorted(top.scores, reverse=True)


def test_cli_history_input_and_output(synthetic_run, tmp_path, capsys):
    ckpt = str(synthetic_run / "best.pt")
    assert main(["recommend", "--checkpoint", ckpt, "--history", "12,55,bogus", "--domain", "y", "--k", "3"]) == 0
    captured = capsys.readouterr()
    assert "dropped 1 unknown item id(s): bogus" in captured.err
    assert len([line for line in captured.out.splitlines() if line.strip()[:1].isdigit()]) == 3

    (tmp_path / "in.csv").write_text('user,history,domain,k\nu1,"12 55",y,2\nu2,1300;1400,x,\n')
    (tmp_path / "in.jsonl").write_text('{"history": [12, 55], "user": "u1", "k": 2}\n\n{"history": ["1300"], "domain": "x"}\n')
    for src in ("in.csv", "in.jsonl"):
        assert read_requests(tmp_path / src)[0].k == 2
        out = tmp_path / f"out-{src}.jsonl"
        assert main(["recommend", "--checkpoint", ckpt, "--input", str(tmp_path / src), "--output", str(out)]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [len(r["items"]) for r in records] == [2, 10] and records[0]["user"] == "u1"
        assert records[1]["domain"] == "x" and all(i < 1200 for i in records[1]["items"])
    assert main(["recommend", "--checkpoint", ckpt, "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["user", "domain", "items", "scores", "unknown"]
    assert len(str(table["items"][0]).split()) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_bad_input_exits_2_without_traceback(synthetic_run, tmp_path, capsys):
    """`python -m dpgdiff recommend` with bad input: exit status 2 and one line naming the problem. The first case
    runs as a process (the whole exit path); the others call the same main in this process (no torch import each)."""
    (tmp_path / "bad.jsonl").write_text('{"history": [12]}\n{"history": []}\n')
    base = ["recommend", "--checkpoint", str(synthetic_run / "best.pt")]
    proc = subprocess.run([sys.executable, "-m", "dpgdiff", *base, "--history", ","], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=scaled(120))
    assert proc.returncode == 2 and "--history: empty history" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (tmp_path / "latin1.csv").write_bytes("history,domain\n12 55,y\n13,caf\xe9\n".encode("latin-1"))
    (tmp_path / "binary.csv").write_bytes(b"history\n\x89PNG\x00\x00\xff\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"history": [12], "note": "d\xe9j\xe0"}\n'.encode("latin-1"))
    for args, message in [(["--input", str(tmp_path / "bad.jsonl")], "bad.jsonl:2: empty history"),
                          (["--history", "12", "--domain", "q"], "unknown domain 'q'"),
                          # issue 27 §5: not UTF-8 -> exit 2 naming the file and the encoding expected
                          (["--input", str(tmp_path / "latin1.csv")], "latin1.csv: not UTF-8 text (byte 0xe9"),
                          (["--input", str(tmp_path / "binary.csv")], "binary.csv: not UTF-8 text (byte 0x89"),
                          (["--input", str(tmp_path / "latin1.jsonl")], "latin1.jsonl: not UTF-8 text")]:
        assert main(base + args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_zero_reverse_steps_are_refused_not_taken_for_the_default(synthetic_run):
    """Issue 42 §6: --infer-steps 0 used to fall back to the checkpoint's K silently (evaluate refuses 0)."""
    with pytest.raises(RecommendError, match="infer_steps 0: must be in 1.."):
        Recommender.load(synthetic_run / "best.pt", infer_steps=0)
