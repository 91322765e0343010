"""Open the links a search prints in a real browser (headless Chromium) and check what MLflow's UI shows.

    python bench/ui_links_check.py                    # chromium from the OS packages (apt-get install chromium)
    python bench/ui_links_check.py --browser /path/to/chrome --out /tmp/ui --trials 4

It builds a small MLflow store the way a search does (tune/tracking.py's tracker: a parent run and one child
run per trial, with validation metrics), plus a second search whose runs must NOT show, starts
`mlflow server` on 127.0.0.1 (a free port), and loads in headless Chromium:

  1. the "its trials (a list)" link (`tune.parent_run.ui_links`): the rendered page (`--dump-dom`) must name every
     trial run of the search and its parent, and none of the other search's runs; a screenshot is saved;
  2. the same query under the experiment's own route (`#/experiments/<id>?...`, the links before issue 25),
     for comparison: MLflow 3.17 ignores that route's query;
  3. the parent-run link: the page must name the parent run;
  (1-3 must show MLflow's model training view, not the GenAI one, where runs are "Evaluation runs")
  4. for information, the compare page of the search's trials (screenshot: its parallel-coordinates plot), and
     for information, the experiment's page without a query (what a user who opens the experiment `dpgdiff`
     in a fresh browser sees): the runs list (naming both searches' parent runs) or MLflow 3's GenAI overview.
     MLflow 3.17.2 keeps the GenAI / Model training choice in the browser (local storage), so a fresh profile
     lands on the overview whatever the experiment's `mlflow.experimentKind` tag says; the printed links
     carry `workflowType=machine_learning` and land on the runs view.

It prints one line per check (PASS/FAIL) and exits 1 if a check of the printed links fails. The server is
stopped by its PID; nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent


def build_store(folder: Path, n_trials: int) -> tuple[str, str, str, list[str], list[str], list[str]]:
    """-> (tracking uri, experiment id, parent run id, this search's run names, the other search's run names,
    this search's trial run ids)."""
    from tune import stores, tracking
    from tune.space import parse_space

    uri = stores.local_tracking_uri(folder / "mlruns")
    client = tracking.client_for(uri)
    exp = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(uri))
    space = parse_space({"params": {"model.dim": {"type": "categorical", "values": [16, 32]}}}, source="bench")
    names: dict[str, list[str]] = {}
    parents, trial_ids = {}, {}
    for search, n in (("ui-check", n_trials), ("other-search", 2)):
        parent, _ = tracking.start_parent_run(client, exp, search, {})
        parents[search] = parent
        tracker = tracking.MLflowTrialTracker(uri, exp, parent, search, space)
        for i in range(n):
            tid = f"{search[:2]}{i:03d}"
            trial = SimpleNamespace(trial_id=tid, config={"model.dim": 16 << (i % 2), "optuna_trial": i},
                                    status="RUNNING", last_result={}, custom_dirname=f"trial_{tid}")
            tracker.on_trial_start(0, [], trial)
            for epoch in (1, 2):
                tracker.on_trial_result(0, [], trial, {"epoch": epoch, "train_loss": 3.0 - epoch,
                                                       "val_mrr_sum": 0.1 * (i + 1) + 0.01 * epoch})
            trial.last_result, trial.status = {"epoch": 2, "final": 1}, "TERMINATED"
            tracker.on_trial_complete(0, [], trial)
        client.set_terminated(parent, "FINISHED")
        children = tracking.child_runs(client, exp, parent)
        names[search] = [r.info.run_name for r in children] + [search]
        trial_ids[search] = [r.info.run_id for r in children]
    return uri, exp, parents["ui-check"], names["ui-check"], names["other-search"], trial_ids["ui-check"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str, port: int, folder: Path) -> subprocess.Popen:
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the server's process group (its own session: the gunicorn/uvicorn workers too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def render(browser: str, url: str, screenshot: Path, budget_ms: int) -> str:
    """The page's DOM after `budget_ms` of virtual time, and a screenshot of it."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}", "--hide-scrollbars"]
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run([*common, f"--user-data-dir={profile}", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=300)
        dom = subprocess.run([*common, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True,
                             text=True, timeout=300)
        return dom.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--out", default=None, help="folder for the screenshots and the store (default: a temp folder)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--budget-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = p.parse_args(argv)
    if not shutil.which(args.browser) and not Path(args.browser).is_file():
        print(f"no browser at {args.browser!r}: install chromium (apt-get install chromium) or pass --browser")
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="ui-links-"))
    out.mkdir(parents=True, exist_ok=True)
    from tune.console import quiet_known_noise
    from tune.parent_run import runs_list_query, ui_links

    quiet_known_noise()

    uri, exp, parent, mine, others, trial_ids = build_store(out, args.trials)
    port = free_port()
    proc = start_server(uri, port, out)
    version = subprocess.run([args.browser, "--version"], capture_output=True, text=True).stdout.strip()
    import mlflow

    print(f"browser: {version}; mlflow {mlflow.__version__}; store {uri}; screenshots in {out}")
    failed = 0
    try:
        parent_link, list_link = (line.split()[-1] for line in ui_links(exp, parent, "ui-check", port).splitlines())
        old_link = f"http://127.0.0.1:{port}/#/experiments/{exp}?{runs_list_query('ui-check')}"
        from urllib.parse import quote

        compare = (f"http://127.0.0.1:{port}/#/compare-runs?runs={quote(json.dumps(trial_ids))}"
                   f"&experiments={quote(json.dumps([exp]))}")
        for label, url, want, unwanted, counts in (
                ("trials list (printed link)", list_link, mine, others, True),
                ("parent run (printed link)", parent_link, ["ui-check"], [], True),
                ("experiment page, no query (for information)", f"http://127.0.0.1:{port}/#/experiments/{exp}",
                 ["ui-check", "other-search"], [], False),
                ("old link, experiment route (for comparison)", old_link, mine, others, False),
                ("compare page of the trials (for information: its plots)", compare, mine[:-1], [], False)):
            shot = out / (label.split(" (")[0].replace(" ", "_").replace(",", "") + ".png")
            dom = render(args.browser, url, shot, args.budget_ms)
            shown = [n for n in want if n in dom]
            leaked = [n for n in unwanted if n in dom]
            genai = "Evaluation runs" in dom or "Token Usage" in dom  # the GenAI view's side bar / overview
            ok = len(shown) == len(want) and not leaked and not genai
            failed += counts and not ok
            if not label.startswith("compare"):  # the compare page is the same in both views
                label += ", GenAI view" if genai else ", model training view"
            print(f"{('PASS' if ok else 'FAIL') if counts else 'info'}: {label}: shows {len(shown)} of {len(want)} "
                  f"expected run names, {len(leaked)} of the other search's {len(unwanted)}; "
                  f"screenshot {shot.name}\n    {url}")
    finally:
        stop(proc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
