"""Bad input (issue 11 §4): every case ends with exit 2 and a message naming the flag, key or file, and nothing
starts before that: no local Ray, no MLflow run.

The search rows call `tune.search.main` in this process with a fresh tracking store; none of them gets as far
as `ray.init`, and every one but the data rows stops before the dataset is loaded (no Ray import either).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tok, write_c2dsr_dir
from tests.test_search_helpers import REPO, TINY_DATA

SMOKE = REPO / "search_spaces" / "smoke.yaml"
SYNTHETIC_SPACE = REPO / "search_spaces" / "synthetic.yaml"
SMOKE_PARAMS_LINE = SMOKE.read_text().splitlines().index("params:") + 1  # 1-based; the file's comments may change  # the default space: eval.n_negatives 999


def _space_with_utf8_error(tmp: Path) -> str:
    path = tmp / "latin1.yaml"
    path.write_bytes(SMOKE.read_bytes().replace(b"smoke test space", b"smoke test space \xe9t\xe9"))
    return str(path)


def _space_with_duplicate_key(tmp: Path) -> str:
    path = tmp / "twice.yaml"
    text = SMOKE.read_text()
    path.write_text(text.replace("params:\n", "params:\n  model.dim: {type: categorical, values: [8]}\n", 1))
    return str(path)


def _empty_validdata(tmp: Path) -> str:
    valid = [f"{u}\t{u}\t{tok(1, 1)}\t{tok(3, 2)}" for u in range(3)]
    folder = write_c2dsr_dir(tmp / "c2dsr", 2, 2, 3, valid=valid, test=valid)
    (folder / "validdata_new.txt").write_text("")
    return str(folder)


def _small_log(tmp: Path) -> str:
    """A valid interaction log with 20 items per domain: far fewer than the default space's 999 negatives."""
    rows = ["user_id,item_id,domain,timestamp"]
    rows += [f"u{u},{'ab'[t % 2]}{(u + t) % 20},{'xy'[t % 2]},{t}" for u in range(12) for t in range(6)]
    path = tmp / "small.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _a_file(tmp: Path) -> str:
    path = tmp / "not_a_folder"
    path.write_text("x")
    return str(path)


def _foreign_search(tmp: Path) -> Path:
    """A search folder outside --storage-path (tmp/ray_results) whose settings must never be read."""
    folder = tmp / "x" / "kt1"
    folder.mkdir(parents=True)
    (folder / "dpgdiff_search.json").write_text('{"tracking_uri": "sqlite:////elsewhere/mlflow.db"}')
    return folder


NAME_RULE = "a search name is 1 to 100 characters"
# (id, extra arguments (a function of the tmp folder for files), fragments the message must hold)
SEARCH_CASES = [
    # issue 27 §2: one name check, for new and resumed searches, before anything is read
    ("name-outside-storage-resume", lambda t: [_foreign_search(t) and "--name", "../x/kt1", "--resume"],
     ["--name", "'../x/kt1'", NAME_RULE]),
    ("name-outside-storage", lambda t: ["--name", "../x/kt2"], ["--name", "'../x/kt2'", NAME_RULE]),
    ("name-quote", lambda t: ["--name", "my search 'x'"], ["--name", "my search", NAME_RULE]),
    ("name-300-characters", lambda t: ["--name", "a" * 300], ["--name", "(got 300)", NAME_RULE]),
    ("name-300-characters-resume", lambda t: ["--name", "b" * 300, "--resume"], ["--name", "(got 300)"]),
    ("name-hidden", lambda t: ["--name", ".hidden"], ["--name", "not starting with '.'"]),
    ("reduction-factor", lambda t: ["--reduction-factor", "0.5"], ["--reduction-factor", "0.5", "> 1"]),
    ("grace-period", lambda t: ["--grace-period", "-1"], ["--grace-period", "-1", ">= 1"]),
    ("grace-period-zero", lambda t: ["--grace-period", "0"], ["--grace-period", ">= 1"]),
    ("epochs", lambda t: ["--epochs", "0"], ["--epochs", ">= 1"]),
    ("max-concurrent", lambda t: ["--max-concurrent", "0"], ["--max-concurrent", ">= 1"]),
    ("startup-trials", lambda t: ["--startup-trials", "-3"], ["--startup-trials", ">= 0"]),
    ("num-cpus", lambda t: ["--num-cpus", "0"], ["--num-cpus", ">= 1"]),
    ("num-samples", lambda t: ["--num-samples", "0"], ["--num-samples", "> 0"]),
    ("max-failures", lambda t: ["--max-failures", "-1"], ["--max-failures", ">= 0"]),
    ("storage-path-is-a-file", lambda t: ["--storage-path", _a_file(t)], ["--storage-path", "not_a_folder",
                                                                           "not a folder"]),
    ("storage-path-under-a-file", lambda t: ["--storage-path", _a_file(t) + "/results"],
     ["--storage-path", "not_a_folder", "not a folder"]),
    ("tracking-uri-scheme", lambda t: ["--tracking-uri", "foo://bar"], ["--tracking-uri", "foo://bar", "scheme"]),
    ("space-not-utf8", lambda t: ["--space", _space_with_utf8_error(t)], ["latin1.yaml", "UTF-8"]),
    ("space-duplicate-key", lambda t: ["--space", _space_with_duplicate_key(t)],
     ["twice.yaml", f"line {SMOKE_PARAMS_LINE + 2}", "model.dim", "duplicate"]),
    ("set-unknown-field", lambda t: ["--set", "model.dimm=32"], ["--set", "model.dimm", "did you mean model.dim"]),
    ("set-wrong-type", lambda t: ["--set", "model.dim=abc"], ["--set", "model.dim", "'abc'", "integer"]),
    ("set-no-equals", lambda t: ["--set", "model.dim"], ["--set", "model.dim", "section.key=value"]),
    # issue 27 §5: what used to pass the checks and fail (or hang) after Ray started
    ("experiment-empty", lambda t: ["--experiment", ""], ["--experiment ''", "cannot be empty"]),
    ("tracking-uri-unreachable", lambda t: ["--tracking-uri", "http://127.0.0.1:1"],
     ["--tracking-uri http://127.0.0.1:1", "no MLflow server answers", "within 3 s"]),
    ("tracking-uri-no-folder", lambda t: ["--tracking-uri", f"sqlite:///{t}/no/such/dir/x.db"],
     ["--tracking-uri", "no/such/dir does not exist"]),
    # a plain folder or file: URI, refused by MLflow 3 only when a trial opens it; with a warm start it used to
    # crash in the warm start's store read before the URI was checked
    ("tracking-uri-file-store", lambda t: ["--tracking-uri", f"file://{t}/mlruns"],
     ["--tracking-uri", "refuses a plain file store", "--tracking-uri sqlite:///", "/mlruns/mlflow.db"]),
    ("tracking-uri-folder-with-warm-start", lambda t: ["--tracking-uri", f"{t}/mlruns", "--warm-start", "x"],
     ["--tracking-uri", "refuses a plain file store", "--tracking-uri sqlite:///", "/mlruns/mlflow.db"]),
    ("address-unreachable", lambda t: ["--address", "127.0.0.1:1"],
     ["--address 127.0.0.1:1", "no Ray cluster answers", "within 3 s"]),
    # issue 42 §5-6: refused before Ray starts (they used to fail after it started, or never)
    ("seed-negative", lambda t: ["--seed", "-1"], ["--seed -1", "between 0 and 4294967295"]),
    ("seed-too-large", lambda t: ["--seed", "99999999999999999999"], ["--seed 99999999999999999999", "between 0"]),
    ("ray-temp-dir-too-long", lambda t: ["--ray-temp-dir", "/tmp/" + "d" * 60],
     ["--ray-temp-dir", "socket paths under it would be 131 bytes", "over the 107 bytes"]),
    ("storage-path-under-proc", lambda t: ["--storage-path", "/proc/dpgdiff/results"],
     ["--storage-path /proc/dpgdiff/results", "cannot write there"]),
    ("optuna-storage-no-folder", lambda t: ["--optuna-storage", f"sqlite:///{t}/missing/dir/o.db"],
     ["--optuna-storage", "missing/dir does not exist"]),
    ("tracking-uri-not-sqlite", lambda t: ["--tracking-uri", f"sqlite:///{_a_file(t)}"],
     ["not_a_folder: not a SQLite database", "MLflow store", "nothing was changed"]),
    ("cpus-per-trial-above-local", lambda t: ["--cpus-per-trial", str((os.cpu_count() or 1) + 1)],
     ["--cpus-per-trial", "the local Ray has"]),
    ("log-with-fewer-items-than-negatives", lambda t: ["--dataset", _small_log(t), "--space", str(SYNTHETIC_SPACE)],
     ["dataset 'small'", "eval.n_negatives=999", "allowed", "--set eval.n_negatives=N"]),
    ("empty-validdata", lambda t: ["--dataset", _empty_validdata(t), "--split", "c2dsr-histories"],
     ["validdata_new.txt", "no sequences"]),
    ("data-option-not-int", lambda t: ["--data-option", "max_len=abc"], ["max_len", "'abc'", "integer"]),
]  # the data rows last: they import Ray (not start it), so the rows before them can check that they do not


@pytest.mark.parametrize("make_args, fragments", [c[1:] for c in SEARCH_CASES], ids=[c[0] for c in SEARCH_CASES])
def test_search_refuses_bad_input_before_anything_starts(make_args, fragments, tmp_path, monkeypatch, capsys):
    from tune.search import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = tmp_path / "mlruns" / "mlflow.db"
    store.parent.mkdir()
    extra = make_args(tmp_path)
    data = [] if "--dataset" in extra else [*TINY_DATA, "--data-dir", str(tmp_path / "data")]
    args = ["--space", str(SMOKE), *data, "--epochs", "2", "--num-samples", "2",
            "--storage-path", str(tmp_path / "ray_results"), "--tracking-uri", f"sqlite:///{store}", "--quiet", *extra]
    ray_imported_before = "ray" in sys.modules
    monkeypatch.setenv("RAY_AUTH_MODE", "-")  # --address sets it (tune.search): undone after the test
    monkeypatch.delenv("RAY_AUTH_MODE")
    t0 = time.time()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.time() - t0 < 60, "refused, but not quickly"
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if not {"--dataset", "--data-option"} & set(extra):  # refused before the driver (and Ray) is imported
        assert ray_imported_before or "ray" not in sys.modules
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized(), "Ray was started before the input was checked"
    assert not store.exists(), "the MLflow store was opened before the input was checked"
    assert not (tmp_path / "ray_results").exists() or not any((tmp_path / "ray_results").iterdir())


def test_a_misspelled_dataset_prints_only_the_error_with_the_closest_name(tmp_path, monkeypatch, capsys):
    from tune.search import main

    monkeypatch.chdir(tmp_path)
    assert main(["--dataset", "food_kitchn", "--storage-path", str(tmp_path / "ray_results"), "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == "", out  # not the synthetic space first (the space's default follows the dataset name)
    assert err.strip().splitlines() == [err.strip()] and "unknown dataset 'food_kitchn'; did you mean food_kitchen?" in err
    assert not (tmp_path / "mlruns").exists()


def test_a_grace_period_of_all_epochs_says_asha_will_not_prune(tmp_path, capsys):
    """Issue 27 §5: --grace-period 5 --epochs 1 is accepted, with a note that ASHA will stop no trial."""
    from tune.search import build_parser
    from tune.settings import settings_from_args

    def settings(epochs: str, grace: str) -> None:
        argv = ["--space", str(SMOKE), *TINY_DATA, "--epochs", epochs, "--grace-period", grace, "--storage-path",
                str(tmp_path / "ray_results"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
        args = build_parser().parse_args(argv)
        args.argv = argv
        settings_from_args(args)

    settings("1", "5")
    assert "--grace-period 5 >= 1 epoch(s): ASHA's first rung is the last epoch" in capsys.readouterr().out
    settings("3", "1")
    assert "ASHA" not in capsys.readouterr().out


def test_data_command_names_an_empty_evaluation_file(tmp_path, capsys):
    from dpgdiff.cli import main

    assert main(["data", "--dataset", _empty_validdata(tmp_path), "--split", "c2dsr-histories"]) == 2
    err = capsys.readouterr().err
    assert "validdata_new.txt" in err and "no sequences" in err


@pytest.mark.parametrize("content", [b"", b"hello", b"model:\n  dim: 8\n", b"\x80\x02}q\x00.", b"PK\x03\x04junk"],
                         ids=["empty", "text", "yaml", "pickle", "broken-zip"])
def test_a_file_that_is_not_a_checkpoint_says_so(content, tmp_path, capsys):
    from dpgdiff.cli import main

    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "not a dpgdiff model checkpoint" in err, err
    assert "Traceback" not in err


def test_interrupted_search_summary_and_unfinished_line_count_alike():
    """After Ctrl-C: Tune's saved state decides what is done; a trial with epochs but no final result that Tune
    saved as RUNNING (or never saved) is interrupted, not 'stopped early' (the two lines used to disagree)."""
    from types import SimpleNamespace

    from tune.finish import DONE_OUTCOMES, outcome_counts
    from tune.names import TrialStatus

    rows = [{"trial_id": t, "status": s} for t, s in (
        ("a", TrialStatus.STOPPED_EARLY), ("b", TrialStatus.STOPPED_EARLY), ("c", TrialStatus.ERROR),
        ("d", TrialStatus.FINISHED), ("e", TrialStatus.STOPPED_EARLY), ("f", TrialStatus.NOT_RUN))]
    saved = [SimpleNamespace(trial_id=t, status=s) for t, s in
             (("a", "TERMINATED"), ("b", "RUNNING"), ("c", "ERROR"), ("d", "TERMINATED"), ("f", "PENDING"))]
    counts = outcome_counts(rows, saved, planned=8)
    assert counts == {"finished": 1, "stopped early by ASHA": 1, "failed": 1, "interrupted": 3, "not started": 2}
    done = sum(counts[k] for k in DONE_OUTCOMES)
    assert done == sum(t.status in ("TERMINATED", "ERROR") for t in saved)  # the UNFINISHED line's "N of M done"
    assert sum(counts.values()) == 8


def test_a_config_file_with_a_key_twice_is_refused_naming_file_and_line(tmp_path):
    from dpgdiff.config import Config, ConfigError

    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  dim: 32\ntrain:\n  lr: 0.001\nmodel:\n  dim: 64\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: not valid YAML, line 5 .*duplicate key 'model' \(first defined "
                                          r"on line 1\)"):
        Config.from_yaml(path)


def test_yaml_merge_keys_may_still_be_overridden():
    from dpgdiff.config import ConfigError, parse_yaml

    assert parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n", "inline", ConfigError)["d"] == {"x": 1, "y": 3}


def test_train_on_a_one_user_log_is_refused_at_load_with_nothing_written(tmp_path, capsys):
    """Issue 27 §5: a one-user log has one validation case in a domain of a dozen items: the default 999 negatives
    cannot be drawn. `train` says so at load (exit 2, naming the dataset and the setting); --out is not created."""
    from dpgdiff.cli import main

    rows = ["user_id,item_id,domain,timestamp"] + [f"u1,i{t % 13},{'xy'[t % 2]},{t}" for t in range(30)]
    (tmp_path / "one.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["train", "--dataset", str(tmp_path / "one.csv"), "--out", str(out), "--no-progress",
                 "--set", "model.dim=16", "--set", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "dataset 'one': eval.n_negatives=999" in err and "--set eval.n_negatives=N" in err, err
    assert not out.exists(), "nothing may be written for refused input"
