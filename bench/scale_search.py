"""The search at scale: the project's layer against stock Ray Tune on Tune's "bookkeeping overhead" workload.

    python bench/scale_search.py --trials 1000 --cpus 16 --trial-seconds 1 --out /tmp/scale
    python bench/scale_search.py --trials 1000 --cpus 16 --trial-seconds 1 --out /tmp/scale --profile

Every trial is a stub that sleeps `--trial-seconds` in total, reports once per epoch (`--epochs`, default 2) and
writes a small checkpoint each time; `--cpus` logical CPUs are declared to a local Ray (more than the machine has is
fine: the stubs sleep). The same workload runs twice, each in a process of its own:

- stock: Ray Tune as it comes: a function trainable, its default searcher (random sampling), FIFO, no callbacks
  beyond Tune's default loggers; actor reuse and verbose=2 as in Ray's own scalability workloads;
- project: `tune/search.py`'s `main` -> `tune.driver.run_search` with `train_fn` = the stub, i.e. Optuna TPE with the
  study in SQLite, ASHA, the MLflow tracker (SQLite store), the trial table, the final report, the selected trial
  tested and registered.

The stub reports the same validation value for every trial at a given epoch, so ASHA stops none and both sides run
the same epochs (the printed epoch counts check it); TPE, ASHA and MLflow still do all their bookkeeping. The
project's trials return a real checkpoint (a tiny model trained once, before the timed runs) because the search
ends by testing and registering the selected trial.

Printed per side: start-up (process start -> `Tuner.fit`), fit, wrap-up (fit -> process end), and the driver seconds
inside: the searcher (suggest + results/completions), the scheduler, experiment-state saves, the MLflow tracker,
the trial table, Tune's CSV/JSON loggers. Then `tune/report.py` over the project's search, and last
`project/stock wall ratio: R` (whole process walls). The ideal fit is trials x trial-seconds / cpus.
`--profile` also writes cProfile output of the project's driver (OUT/project.prof) and prints its top entries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "scale"
TINY_DATA = ["--data-option", "n_users=300", "--data-option", "n_items_x=150", "--data-option", "n_items_y=150"]
# the smoke space's values of the tiny model trained once (its best.pt is every project trial's checkpoint)
PRETRAIN_SET = ["model.dim=16", "model.n_heads=1", "model.n_enc_layers=1", "model.n_c_layers=1",
                "model.n_dec_layers=1", "diffusion.steps=8", "diffusion.sampler=ddim", "diffusion.infer_steps=2",
                "eval.full_ranking=false", "eval.n_negatives=99", "train.epochs=1", "model.xt_injection=concat_token"]
SECONDS_ENV, PRETRAINED_ENV = "DPGDIFF_BENCH_TRIAL_SECONDS", "DPGDIFF_BENCH_PRETRAINED"
# driver-side phases: (module, class, methods) timed in each side's process
PHASES = {
    "searcher": [("ray.tune.search.search_generator", "SearchGenerator", ("next_trial", "on_trial_result",
                                                                          "on_trial_complete")),
                 ("ray.tune.search.basic_variant", "BasicVariantGenerator", ("next_trial", "on_trial_result",
                                                                             "on_trial_complete"))],
    "scheduler": [("ray.tune.schedulers.async_hyperband", "AsyncHyperBandScheduler", ("on_trial_result",
                                                                                      "on_trial_complete")),
                  ("ray.tune.schedulers.trial_scheduler", "FIFOScheduler", ("on_trial_result", "on_trial_complete"))],
    "experiment-state saves": [("ray.tune.execution.tune_controller", "TuneController", ("checkpoint",))],
    "MLflow tracker": [("tune.tracking", "MLflowTrialTracker", ("on_trial_start", "on_trial_result",
                                                               "on_trial_complete", "on_trial_error",
                                                               "on_experiment_end"))],
    "trial table": [("tune.progress", "ProgressReporter", ("should_report", "report"))],
    "CSV/JSON loggers": [("ray.tune.logger.csv", "CSVLoggerCallback", ("log_trial_result", "log_trial_end")),
                         ("ray.tune.logger.json", "JsonLoggerCallback", ("log_trial_start", "log_trial_result",
                                                                         "log_trial_end"))],
}


# ------------------------------------------------------------------------------------- the stubs (in the trials)

def _metrics(epoch: int) -> dict[str, float]:
    """The same values for every trial at one epoch: ASHA's cut never falls below a trial, so none stops early."""
    return {"train_loss": 1.0 / epoch, "val_mrr_sum": 0.1 * epoch, "val_x_mrr": 0.05 * epoch,
            "val_y_mrr": 0.05 * epoch, "epoch_seconds": 0.0}


def _small_checkpoint(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"epoch": epoch, "weights": [0.0] * 64}))
    return folder


def project_train(config, dataset, reporter=None, resume_from=None, out_dir=None, test=True, **kwargs):
    """`dpgdiff.train`'s signature and Reporter contract: sleeps, reports per epoch, returns the pretrained model."""
    import shutil
    import tempfile

    from dpgdiff.training.loop import TrainResult

    epochs, seconds = int(config.train.epochs), float(os.environ[SECONDS_ENV])
    start = 1 + (json.loads((Path(resume_from) / "state.json").read_text())["epoch"] if resume_from else 0)
    out = Path(out_dir or tempfile.mkdtemp())
    history = []
    for epoch in range(start, epochs + 1):
        time.sleep(seconds / epochs)
        history.append({**_metrics(epoch), "epoch": epoch})
        if reporter is not None:
            reporter(epoch, _metrics(epoch), _small_checkpoint(out / "checkpoint", epoch))
    best = out / "best.pt"
    shutil.copy2(os.environ[PRETRAINED_ENV], best)
    return TrainResult(best_epoch=epochs, best_val=_metrics(epochs), test={}, history=history, checkpoint_path=best)


def stock_trainable(config):
    """Stock Tune's function trainable: the same sleeps, reports and checkpoints."""
    import tempfile

    from ray import tune

    epochs, seconds = config["epochs"], config["seconds"]
    for epoch in range(1, epochs + 1):
        time.sleep(seconds / epochs)
        with tempfile.TemporaryDirectory() as tmp:
            tune.report({**_metrics(epoch), "epoch": epoch},
                        checkpoint=tune.Checkpoint.from_directory(str(_small_checkpoint(Path(tmp), epoch))))


# ------------------------------------------------------------------------------------- one side (a process)

class PhaseTimer:
    """Wraps the PHASES methods with wall-clock counters (driver side; the methods are not re-entrant)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {phase: 0.0 for phase in PHASES}
        self.calls: dict[str, int] = {phase: 0 for phase in PHASES}
        self.fit: list[float] = []

    def install(self) -> None:
        import importlib

        for phase, targets in PHASES.items():
            for module, cls_name, methods in targets:
                cls = getattr(importlib.import_module(module), cls_name)
                for method in methods:
                    if method in cls.__dict__:  # the class's own method (not one inherited from a timed class)
                        setattr(cls, method, self._wrap(phase, cls.__dict__[method]))
        from ray import tune

        fit = tune.Tuner.fit

        def timed_fit(tuner, *a, **k):
            self.fit.append(time.time())
            try:
                return fit(tuner, *a, **k)
            finally:
                self.fit.append(time.time())

        tune.Tuner.fit = timed_fit

    def _wrap(self, phase: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
                self.calls[phase] += 1

        wrapper.__name__ = fn.__name__
        return wrapper


def run_stock(args: argparse.Namespace, timer: PhaseTimer) -> None:
    import ray
    from ray import tune

    from tune import ray_internals
    from tune.ray_start import START_WAIT_ENV, START_WAIT_S

    # as patient with a slow node start as the project's side (tune/ray_start.py: the same wait, $DPGDIFF_RAY_START_S,
    # and once more): on a loaded machine Ray's own 30 s wait ended the stock side before it ran
    for attempt in (1, 2):
        try:
            with ray_internals.patient_node_start(float(os.environ.get(START_WAIT_ENV) or START_WAIT_S)):
                ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=args.ray_temp_dir)
            break
        except Exception as exc:  # noqa: BLE001  Ray raises a bare Exception when its node start times out
            if ray_internals.NODE_START_MESSAGE not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
            print("stock side: the local Ray did not start; trying once more", flush=True)
    space = {"lr": tune.loguniform(1e-3, 1e-2), "dim": tune.choice([16, 32]), "dropout": tune.uniform(0.0, 0.3),
             "schedule": tune.choice(["trunc_lin", "cosine"]), "epochs": args.epochs, "seconds": args.trial_seconds}
    # reuse_actors and verbose=2 as in Ray's own scalability workloads (ray.tune.utils.release_test_util)
    tuner = tune.Tuner(stock_trainable, param_space=space,
                       tune_config=tune.TuneConfig(num_samples=args.trials, metric="val_mrr_sum", mode="max",
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(name=NAME, storage_path=str(Path(args.out, "stock", "ray_results")),
                                                 verbose=2))
    results = tuner.fit()
    assert not results.errors, results.errors
    ray.shutdown()


def run_project(args: argparse.Namespace, timer: PhaseTimer) -> None:
    from tune.search import main

    work = Path(args.out, "project")
    argv = ["--space", str(REPO / "search_spaces" / "smoke.yaml"), *TINY_DATA, "--epochs", str(args.epochs),
            "--num-samples", str(args.trials), "--num-cpus", str(args.cpus), "--name", NAME,
            "--storage-path", str(work / "ray_results"), "--tracking-uri", f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
            "--ray-temp-dir", args.ray_temp_dir]
    (work / "mlruns").mkdir(parents=True, exist_ok=True)
    rc = main(argv, train_fn=project_train)
    if rc != 0:
        raise SystemExit(f"the project's search exited {rc}")


def run_side(args: argparse.Namespace) -> None:
    """One side, in this process; its timings -> OUT/<side>.json."""
    t0 = float(os.environ.get("DPGDIFF_BENCH_T0", time.time()))
    timer = PhaseTimer()
    timer.install()
    runner = run_stock if args.side == "stock" else run_project
    if args.profile and args.side == "project":
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(runner, args, timer)
        profiler.dump_stats(str(Path(args.out, "project.prof")))
    else:
        runner(args, timer)
    end = time.time()
    out = {"startup_s": timer.fit[0] - t0, "fit_s": timer.fit[1] - timer.fit[0], "wrapup_s": end - timer.fit[1],
           "wall_s": end - t0, "phases": timer.seconds, "calls": timer.calls}
    Path(args.out, f"{args.side}.json").write_text(json.dumps(out, indent=1))


# ------------------------------------------------------------------------------------- the comparison

def epochs_run(results: Path) -> tuple[int, int]:
    """(trials, epoch results) in a Tune experiment folder's result.json files."""
    trials = epochs = 0
    for f in results.glob("*/result.json"):
        trials += 1
        epochs += sum(1 for line in f.read_text().splitlines() if line.strip() and '"final"' not in line)
    return trials, epochs


def spawn(args: argparse.Namespace, side: str, env: dict[str, str]) -> None:
    cmd = [sys.executable, __file__, "--side", side, "--trials", str(args.trials), "--cpus", str(args.cpus),
           "--trial-seconds", str(args.trial_seconds), "--epochs", str(args.epochs), "--out", args.out,
           "--ray-temp-dir", str(Path(args.ray_temp_dir, side)), *(["--profile"] if args.profile else [])]
    log = Path(args.out, f"{side}.log")
    print(f"{side}: running ({log})", file=sys.stderr, flush=True)
    with log.open("w") as handle:
        rc = subprocess.run(cmd, env={**env, "DPGDIFF_BENCH_T0": str(time.time())}, cwd=Path(args.out, side),
                            stdout=handle, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{side} failed (rc {rc}); see {log}:\n{log.read_text()[-3000:]}")


def pretrain(out: Path) -> Path:
    """A tiny model trained once (1 epoch, tiny synthetic data): every project trial's best.pt."""
    folder = out / "pretrained"
    if not (folder / "best.pt").exists():
        cmd = [sys.executable, "-m", "dpgdiff", "train", *TINY_DATA, "--out", str(folder), "--no-progress",
               *[a for s in PRETRAIN_SET for a in ("--set", s)]]
        subprocess.run(cmd, check=True, cwd=out, capture_output=True)
    return folder / "best.pt"


def compare(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    for side in ("stock", "project"):
        Path(out, side).mkdir(exist_ok=True)
    env = {**os.environ, SECONDS_ENV: str(args.trial_seconds), PRETRAINED_ENV: str(pretrain(out)),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for side in ("stock", "project"):
        spawn(args, side, env)
    t0 = time.time()
    report = subprocess.run([sys.executable, str(REPO / "tune" / "report.py"), "--name", NAME, "--tracking-uri",
                             f"sqlite:///{out / 'project' / 'mlruns' / 'mlflow.db'}", "--out", str(out / "report.md")],
                            env=env, cwd=out, capture_output=True, text=True)
    report_s = time.time() - t0
    if report.returncode != 0:
        raise SystemExit(f"tune/report.py failed:\n{report.stdout[-2000:]}\n{report.stderr[-2000:]}")
    sides = {s: json.loads(Path(out, f"{s}.json").read_text()) for s in ("stock", "project")}
    ideal = args.trials * args.trial_seconds / args.cpus
    print(f"\n{args.trials} trials x {args.trial_seconds} s ({args.epochs} reports each), {args.cpus} logical CPUs; "
          f"ideal fit {ideal:.1f} s\n")
    print("| | stock Tune | project |")
    print("|---|---:|---:|")
    for key, label in (("startup_s", "start-up s"), ("fit_s", "fit s"), ("wrapup_s", "wrap-up s"), ("wall_s", "wall s")):
        print(f"| {label} | {sides['stock'][key]:.1f} | {sides['project'][key]:.1f} |")
    print(f"| fit / ideal | {sides['stock']['fit_s'] / ideal:.2f} | {sides['project']['fit_s'] / ideal:.2f} |")
    for side in ("stock", "project"):
        trials, epochs = epochs_run(Path(out, side, "ray_results", NAME))
        sides[side]["epochs"] = f"{trials} trials, {epochs} epoch results"
    print(f"| ran | {sides['stock']['epochs']} | {sides['project']['epochs']} |")
    for phase in PHASES:
        cells = [f"{sides[s]['phases'][phase]:.1f} ({sides[s]['calls'][phase]} calls)"
                 if sides[s]["calls"][phase] else "-" for s in ("stock", "project")]
        print(f"| driver s in {phase} | {cells[0]} | {cells[1]} |")
    for side in ("stock", "project"):
        per_trial = (sides[side]["fit_s"] - ideal) * args.cpus / args.trials
        print(f"{side}: fit overhead per trial {per_trial:.3f} s (fit - ideal, x cpus / trials)")
    print(f"tune/report.py over the project's search: {report_s:.1f} s")
    if args.profile:
        import pstats

        print("\nproject driver profile (cumulative, top 40):")
        pstats.Stats(str(out / "project.prof"), stream=sys.stdout).sort_stats("cumulative").print_stats(40)
    print(f"project/stock wall ratio: {sides['project']['wall_s'] / sides['stock']['wall_s']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--cpus", type=int, default=16, help="logical CPUs declared to the local Ray")
    p.add_argument("--trial-seconds", type=float, default=1.0, help="each trial's sleep, in total")
    p.add_argument("--epochs", type=int, default=2, help="reports (and checkpoints) per trial")
    p.add_argument("--out", required=True, help="working folder (kept: logs, stores, timings)")
    p.add_argument("--profile", action="store_true", help="cProfile the project's driver (OUT/project.prof)")
    p.add_argument("--side", choices=("stock", "project"), help=argparse.SUPPRESS)  # internal: one side
    p.add_argument("--ray-temp-dir", default=None, help="local Ray's temp folder (default: a new one under /tmp)")
    args = p.parse_args()
    if args.side:
        run_side(args)
        return
    if args.ray_temp_dir is None:
        import tempfile

        args.ray_temp_dir = tempfile.mkdtemp(prefix="rs")  # short: Ray's socket paths are length-limited
    compare(args)


if __name__ == "__main__":
    main()
