"""Command line `train` and `evaluate`: smoke runs, sweeps, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dpgdiff.cli import main
from dpgdiff.evaluation import load_ranks

from tests.busy import scaled
from tests.conftest import SYNTHETIC_TEST_OPTIONS

SYNTHETIC = ",".join(f"{k}={v}" for k, v in SYNTHETIC_TEST_OPTIONS.items())
TINY = [
    "--set", "model.dim=16", "--set", "model.n_c_layers=1", "--set", "train.epochs=1",
    "--set", "train.mode=last", "--set", "train.batch_size=256", "--set", "train.num_threads=1",
    "--set", "diffusion.sampler=ddim", "--set", "diffusion.infer_steps=2", "--set", "diffusion.val_infer_steps=2",
    "--set", "train.device=cpu",
]


def data_args(data_dir: Path) -> list[str]:
    return ["--dataset", "synthetic", "--synthetic", SYNTHETIC, "--data-dir", str(data_dir)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data_dir, synthetic_dataset) -> Path:
    """One tiny CLI training run shared by the evaluate tests -> its output folder."""
    out = tmp_path_factory.mktemp("cli_run")
    assert main(["train", *data_args(synthetic_data_dir), *TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_checkpoint_config_and_metrics(trained, capsys):
    assert (trained / "best.pt").is_file() and (trained / "checkpoint" / "model.pt").is_file()
    resolved = yaml.safe_load((trained / "config.yaml").read_text())
    assert resolved["model"]["dim"] == 16 and resolved["train"]["epochs"] == 1
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and "test_mrr_sum" in metrics["test"]
    # The per-case test ranks reproduce the reported test metrics (what paired significance tests read).
    ranks = load_ranks(trained / "test_ranks.npz")
    assert sorted(ranks) == ["full_x", "full_y", "x", "y"]
    for d in ("x", "y"):
        assert metrics["test"][f"test_{d}_mrr"] == pytest.approx(float(np.mean(1.0 / ranks[d])))
        assert metrics["test"][f"test_{d}_full_mrr"] == pytest.approx(float(np.mean(1.0 / ranks[f"full_{d}"])))
    best = torch.load(trained / "best.pt", weights_only=True)
    assert best["dataset"]["name"] == "synthetic" and str(best["dataset"]["options"]["n_users"]) == "400"
    assert len(best["dataset"]["fingerprint"]) == 64


def test_train_prints_the_per_domain_table(synthetic_data_dir, tmp_path, capsys):
    rc = main(["train", *data_args(synthetic_data_dir), *TINY, "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "best validation pass: epoch 1" in out
    assert "MRR_X + MRR_Y (sampled)" in out and "NDCG@10" in out and "full" in out


def test_evaluate_default_prints_a_table(trained, synthetic_data_dir, capsys):
    rc = main(["evaluate", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ddim, 2 steps, noise rate 0" in out and "MRR_X + MRR_Y (sampled)" in out
    # Same model, same data, same seeded noise: the test metric equals the one train reported.
    metrics = json.loads((trained / "metrics.json").read_text())
    assert f"MRR_X + MRR_Y (sampled) = {metrics['test']['test_mrr_sum']:.4f}" in out


def test_evaluate_sweeps_steps_and_noise(trained, synthetic_data_dir, tmp_path, capsys):
    report = tmp_path / "sweep.json"
    rc = main(["evaluate", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir),
               "--infer-steps", "1,2", "--noise-rate", "0,0.3", "--sampler", "ddim", "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "sec/pass" in out and "X MRR" in out
    records = json.loads(report.read_text())
    assert [(r["noise_rate"], r["infer_steps"]) for r in records] == [(0.0, 1), (0.0, 2), (0.3, 1), (0.3, 2)]
    assert all(r["seconds"] > 0 and "test_x_mrr" in r["metrics"] for r in records)
    clean, noisy = records[1]["metrics"], records[3]["metrics"]
    assert clean != noisy  # the noise reached the test histories


def test_evaluate_refuses_other_data(trained, synthetic_data_dir, tmp_path, capsys):
    best = torch.load(trained / "best.pt", weights_only=True)
    best["dataset"]["fingerprint"] = "f" * 64
    torch.save(best, tmp_path / "other.pt")
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "other.pt"), "--data-dir", str(synthetic_data_dir)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "fingerprint" in err and "refusing" in err


@pytest.mark.parametrize("argv, expected", [
    (["--set", "model.dimm=3"], "model.dimm"),
    (["--set", "model.dim=abc"], "model.dim='abc' must be an integer"),
    (["--set", "train.lr"], "must look like section.key=value"),
    (["--set", "train.epochs=0"], "train.epochs=0 is out of range"),
])
def test_train_bad_set_is_a_clear_error(argv, expected, tmp_path, capsys):
    rc = main(["train", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err


def test_evaluate_bad_arguments(trained, synthetic_data_dir, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir)]
    assert main([*base, "--infer-steps", "0"]) == 2
    assert "--infer-steps 0: must be in 1..32" in capsys.readouterr().err
    assert main([*base, "--noise-rate", "a,b"]) == 2
    assert "--noise-rate" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such" in capsys.readouterr().err


def test_evaluate_set_changes_inference_only(trained, synthetic_data_dir, tmp_path, capsys):
    """--set on evaluate: inference-only fields of the checkpoint's config (K, Eq. 15's α and softmax, ...)."""
    base = ["evaluate", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir)]
    report = tmp_path / "r.json"
    assert main([*base, "--json", str(report)]) == 0
    plain = json.loads(report.read_text())[0]
    assert main([*base, "--set", "diffusion.sampler=ddpm", "--set", "model.score_softmax=literal",
                 "--json", str(report)]) == 0
    (record,) = json.loads(report.read_text())
    assert record["set"] == ["diffusion.sampler=ddpm", "model.score_softmax=literal"]
    assert record["metrics"] != plain["metrics"]  # another chain and Eq. 15 as printed: other scores
    capsys.readouterr()
    assert main([*base, "--set", "model.dim=8"]) == 2
    assert "'model.dim' cannot change on a trained model" in capsys.readouterr().err
    assert main([*base, "--set", "diffusion.n_samples=3"]) == 2  # retired (issue 37)
    assert "'diffusion.n_samples' cannot change on a trained model" in capsys.readouterr().err
    assert main(["diagnose", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir),
                 "--set", "loss.lambda_diff=0"]) == 2
    assert "cannot change on a trained model" in capsys.readouterr().err


def test_python_dash_m_train(synthetic_data_dir, tmp_path):
    """The installed entry point end to end, in a child process (waited for; nothing left running)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "dpgdiff", "train", *data_args(synthetic_data_dir), *TINY, "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=scaled(300),
    )
    assert proc.returncode == 0, proc.stderr
    assert "MRR_X + MRR_Y (sampled)" in proc.stdout
    assert (tmp_path / "best.pt").is_file()


def test_diagnose_prints_per_t_figures_and_metrics_by_k(trained, synthetic_data_dir, tmp_path, capsys):
    report = tmp_path / "diag.json"
    rc = main(["diagnose", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir),
               "--cases", "150", "--infer-steps", "1,2", "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 0 and "sensitivity" in out and "X NDCG@10" in out and "test metrics (x100)" in out
    diag = json.loads(report.read_text())
    assert diag["which"] == "test"
    rows = diag["per_t"]
    assert [r["t"] for r in rows] == list(range(32)) and diag["n_cases"] == 150
    ab = [r["alpha_bar"] for r in rows]
    assert all(a > b for a, b in zip(ab, ab[1:])) and ab[-1] == 0.0 and rows[-1]["snr"] == 0.0
    assert all(r["mse"] >= 0 and 0 < r["mrr_x0"] <= 1 and r["sensitivity"] >= 0 for r in rows)
    # K = 2 with the model's own sampler (ddim) is the procedure train tested with: the same numbers.
    metrics = json.loads((trained / "metrics.json").read_text())["test"]
    by_k = {r["infer_steps"]: r["metrics"] for r in diag["per_k"]}
    assert sorted(by_k) == [1, 2]
    assert by_k[2]["x_mrr"] == pytest.approx(metrics["test_x_mrr"]) and by_k[2]["y_mrr"] == pytest.approx(metrics["test_y_mrr"])
    # --which valid measures (and labels) the validation cases
    assert main(["diagnose", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(synthetic_data_dir),
                 "--cases", "50", "--infer-steps", "1", "--which", "valid"]) == 0
    out = capsys.readouterr().out
    assert "valid metrics (x100)" in out and "test metrics" not in out


def test_exit_process_keeps_the_exit_code_output_and_atexit_handlers(tmp_path):
    """The entry points' fast exit (gc.freeze, then sys.exit) still runs atexit handlers, flushes buffered output
    and files, and exits with main's code."""
    code = f"""
import atexit, sys
from dpgdiff.cli import exit_process
log = open(r"{tmp_path / 'log.txt'}", "w")  # left open: its buffer is flushed when the module is torn down
log.write("buffered")
atexit.register(lambda: print("atexit ran"))
print("no newline, buffered", end="")
exit_process(3)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "no newline, bufferedatexit ran\n"
    assert (tmp_path / "log.txt").read_text() == "buffered"
