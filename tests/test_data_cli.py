"""`python -m dpgdiff data`: prints the card for synthetic data, logs and Food-Kitchen; bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpgdiff.cli import main, parse_options
from dpgdiff.data import DataError


def test_data_synthetic_card(tmp_path, capsys):
    rc = main(["data", "--data-dir", str(tmp_path), "--synthetic", "n_users=60,n_items_x=100,n_items_y=150,seed=2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "synthetic" in out and "items X / Y                        100 / 150" in out and "fingerprint" in out


def test_data_json_and_histories_split(tmp_path, capsys):
    args = ["data", "--dataset", "synthetic", "--split", "c2dsr-histories", "--data-dir", str(tmp_path),
            "--synthetic", "n_users=60,n_items_x=100,n_items_y=150", "--json"]
    assert main(args) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["split"] == "c2dsr-histories" and card["users"] == 60
    assert card["train_sequences"] == card["valid_x"] + card["valid_y"] + card["test_x"] + card["test_y"]


def test_data_log(tmp_path, capsys):
    path = tmp_path / "clicks.csv"
    path.write_text("user_id,item_id,domain,timestamp\n" + "".join(f"u,i{k},{'ab'[k % 2]},{k}\n" for k in range(5)))
    assert main(["data", "--dataset", str(path), "--domains", "b,a"]) == 0
    out = capsys.readouterr().out
    assert "clicks" in out and "loo" in out and "validation cases X / Y             1 / 0" in out and "test cases X / Y                   0 / 1" in out


def test_bad_input_exits_2_with_message(tmp_path, capsys):
    assert main(["data", "--dataset", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["data", "--dataset", "food_kitchen", "--synthetic", "n_users=5"]) == 2
    assert "--synthetic only applies" in capsys.readouterr().err
    assert main(["data", "--dataset", "food_kitchen", "--data-dir", str(tmp_path), "--no-download"]) == 2
    assert "Food-Kitchen/Alist.txt: file missing" in capsys.readouterr().err


def test_parse_options():
    assert parse_options("a=1, b = x,") == {"a": "1", "b": "x"}
    with pytest.raises(DataError, match="key=value"):
        parse_options("a=1,b")


@pytest.mark.data
def test_module_entry_point_food_kitchen(data_dir: Path, food_kitchen_dir: Path):
    cmd = [sys.executable, "-m", "dpgdiff", "data", "--dataset", "food_kitchen", "--split", "c2dsr-histories",
           "--data-dir", str(data_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "validation cases X / Y             2,722 / 5,451" in done.stdout
    assert "test cases X / Y                   2,747 / 5,659" in done.stdout
