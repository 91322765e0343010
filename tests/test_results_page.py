"""RESULTS.md (tune/results_page.py) on hand-made MLflow runs: the verdict follows the tables, the searched
−Diffusion control goes to Table 3, unequal budgets are named, RQ4 says whether N@10 grows with K, at most 300 lines."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_report_confirmed import _log_run, _ranks
from tune import report, tracking
from tune.names import LABEL_TAG

BUDGET = {"num_samples": "12", "epochs": "3", "scheduler": "asha", "grace_period": "1", "train.patience": "0",
          "seed": "0", "space_source": "search_spaces/x.yaml"}


def _add_search(client, exp_id: str, tmp_path, rng, search: str, model: str, label: str, shift: float,
                trials: str) -> None:
    """A search parent with the budget's params and three confirmation runs whose ranks are `shift` better."""
    parent = client.create_run(exp_id, run_name=search, tags={tracking.SEARCH_TAG: search,
                                                              tracking.ROLE_TAG: "search", "dataset": "food_kitchen"})
    for key, value in {**BUDGET, "num_samples": trials}.items():
        client.log_param(parent.info.run_id, key, value)
    for seed in (1, 2, 3):
        run_id = _log_run(client, exp_id, parent.info.run_id, model, "best", seed, _ranks(rng, shift), tmp_path)
        client.set_tag(run_id, LABEL_TAG, label)
        if search == "dpg":  # RQ4: N@10 grows with K on X, falls on Y
            for k, value in ((1, 0.10), (2, 0.11), (4, 0.12), (8, 0.13)):
                client.log_metric(run_id, f"test_k{k}_x_ndcg10", value)
                client.log_metric(run_id, f"test_k{k}_y_ndcg10", 0.2 - value)


@pytest.fixture
def store(mlflow_store, tmp_path):
    client = tracking.client_for(mlflow_store)
    exp_id = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(mlflow_store))
    rng = np.random.default_rng(0)
    # DPG-Diff far ahead of SASRec (a clear win in every seed); the control level with DPG-Diff
    searches = (("dpg", "dpgdiff", "DPG-Diff (−DE)", 6.0, "12"), ("sas", "sasrec", "SASRec", 0.0, "12"),
                ("ctl", "dpgdiff", "DPG-Diff (−Diffusion, −DE)", 6.0, "8"))
    for search in searches:
        _add_search(client, exp_id, tmp_path, rng, *search)
    return mlflow_store


def test_the_page_leads_with_a_verdict_computed_from_its_tables(store, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(out), "--name", "sas", "--name", "dpg", "--name", "ctl",
                        "--tracking-uri", store]) == 0
    text = out.read_text()
    lines = text.splitlines()
    assert len(lines) <= 300
    assert f"python tune/report.py --results {out} --name sas --name dpg --name ctl --tracking-uri {store}" in text
    verdict = lines[lines.index("## Verdict") + 2:lines.index("## Verdict") + 7]
    assert verdict[0].startswith("1. Food-Kitchen: DPG-Diff (−DE) against SASRec, full-ranking N@10: Food ahead")
    assert "its −Diffusion control searched alike (ctl)" in verdict[1] and "Food level" in verdict[1]
    assert verdict[2].endswith("no (DPG-Diff (−DE)).")  # Y falls with K
    assert verdict[3] == "4. Food-Kitchen: budgets differ for DPG-Diff (−Diffusion, −DE)."
    assert verdict[4] == "5. Sparse proxy: not run under this protocol yet."
    table1 = text[text.index("### Table 1"):text.index("### Table 3")]
    assert "| SASRec [1] | DPG-Diff (−DE) [2] |" in table1 and "−Diffusion" not in table1.split("\n\n")[1]
    table3 = text[text.index("### Table 3"):text.index("### RQ4")]
    assert "| DPG-Diff (−Diffusion, −DE), searched (ctl) | 3 |" in table3
    assert "| ctl | x.yaml | 8 |" in text and "**Budgets differ**" in text


def test_with_several_baselines_the_verdict_names_the_strongest(store, tmp_path):
    """The verdict's first line tests DPG-Diff against the baseline with the highest full-ranking N@10 (the sum
    over both domains), and says that it is the strongest of several."""
    client = tracking.client_for(store)
    exp_id = client.get_experiment_by_name("dpgdiff").experiment_id
    _add_search(client, exp_id, tmp_path, np.random.default_rng(1), "dfr", "diffurec", "DiffuRec", 5.5, "12")
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(out), "--name", "sas", "--name", "dfr", "--name", "dpg", "--name", "ctl",
                        "--tracking-uri", store]) == 0
    lines = out.read_text().splitlines()
    first = lines[lines.index("## Verdict") + 2]
    assert first.startswith("1. Food-Kitchen: DPG-Diff (−DE) against the strongest baseline (DiffuRec), "
                            "full-ranking N@10: Food level"), first


def test_a_preface_opens_the_page_and_is_named_in_its_command(store, tmp_path, capsys):
    """--preface FILE: a hand-written finding (a lever's pre-registered verdict) above everything the page computes;
    the command at the top names the file, so a rerun keeps it. An unreadable file is refused by name."""
    preface = tmp_path / "preface.md"
    preface.write_text("**Not kept:** both levers, under the protocol of BENCHMARKS.md.\n")
    out = tmp_path / "RESULTS.md"
    argv = ["--results", str(out), "--name", "sas", "--name", "dpg", "--tracking-uri", store]
    assert report.main([*argv, "--preface", str(preface)]) == 0
    lines = out.read_text().splitlines()
    assert lines[:3] == ["# Results: where DPG-Diff stands", "", "**Not kept:** both levers, under the protocol of "
                         "BENCHMARKS.md."]
    assert lines.index("## Verdict") > 3 and f"--preface {preface} --tracking-uri" in out.read_text()
    assert report.main([*argv, "--preface", str(tmp_path / "missing.md")]) == 2
    assert "--preface " + str(tmp_path / "missing.md") + ": cannot read it" in capsys.readouterr().err
