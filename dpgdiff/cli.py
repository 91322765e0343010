"""Command line: `python -m dpgdiff <command>`; one small function per subcommand.

    python -m dpgdiff data --dataset food_kitchen --split c2dsr-histories [--data-dir DIR]
    python -m dpgdiff data --dataset synthetic --synthetic n_users=60000,n_items_x=36845,n_items_y=63937
    python -m dpgdiff data --dataset my_log.csv
    python -m dpgdiff train --dataset food_kitchen --split c2dsr-histories --config configs/cpu-small.yaml --out runs/a
    python -m dpgdiff evaluate --checkpoint runs/a/best.pt --infer-steps 1,2,4,8,16,32 --sampler ddim
    python -m dpgdiff diagnose --checkpoint runs/a/best.pt
    python -m dpgdiff compare --a runs/a1,runs/a2,runs/a3 --b runs/b1,runs/b2,runs/b3
    python -m dpgdiff recommend --checkpoint runs/a/best.pt --history 12,55,301 --domain y --k 10
    python -m dpgdiff recommend --checkpoint runs/a/best.pt --input users.csv --output top10.jsonl
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from dpgdiff.config import ConfigError
from dpgdiff.data import SPLITS, CrossDomainDataset, DataError
from dpgdiff.data.ref import DatasetRef, add_dataset_args, dataset_ref_from_args, parse_options  # noqa: F401
from dpgdiff.recommend import RecommendError
from dpgdiff.training import CheckpointError


def exit_process(code: int | None) -> NoReturn:
    """sys.exit(code) for a command-line entry point, without the interpreter's last full garbage collection.

    Once a run has imported torch (and for `tune/`, Ray, MLflow, Optuna), that collection walks millions of
    objects: 1.8-3.7 s between a command's last line and the prompt (BENCHMARKS.md, "Exit of the command-line
    entry points"). gc.freeze() moves every object to the permanent generation, which the collection skips.
    The rest of a normal exit still happens: atexit handlers (Ray's shutdown, MLflow's and logging's flushes),
    stdout and stderr flushed, modules torn down and their objects freed by reference count. Only objects in
    reference cycles are left to the OS, which CPython does not promise to finalize at exit anyway.
    Entry points only: inside a library call it would exempt the caller's objects from later collections."""
    gc.freeze()
    sys.exit(code)


def dataset_from_args(args: argparse.Namespace) -> CrossDomainDataset:
    """Load the dataset the shared flags (`add_dataset_args`) describe."""
    return dataset_ref_from_args(args).load()


def cmd_data(args: argparse.Namespace) -> int:
    """Load (downloading or generating if needed) and print the dataset card."""
    card = dataset_from_args(args).card()
    print(card.to_json() if args.json else card)
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="load a dataset and print its card",
                            description="Load a dataset (downloading or generating it if needed) and print its card.")
    add_dataset_args(parser)
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.set_defaults(func=cmd_data)


# --------------------------------------------------------------------------------------------
# train / evaluate (training helper's part)
# --------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Train with early stopping on validation MRR_X + MRR_Y; print the test table of the best state."""
    from dpgdiff.config import Config
    from dpgdiff.training import TrainingDivergedError, train

    if Path(args.out).exists() and not Path(args.out).is_dir():  # before the data is loaded: nothing is written
        raise ConfigError(f"--out {args.out}: a file is there; --out names the output folder (new or existing)")
    config = Config.from_yaml(args.config) if args.config else Config()
    config = config.with_overrides(args.set)
    dataset = dataset_from_args(args)  # load_dataset records its options: checkpoints can reload it
    print(f"training {config.model.name} (d={config.model.dim}, mode {config.train.mode}) on {dataset.name} / "
          f"{dataset.split}; output in {args.out}", file=sys.stderr)
    try:
        result = train(config, dataset, resume_from=args.resume, out_dir=args.out, progress=not args.no_progress)
    except TrainingDivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    d = config.diffusion
    print(f"best validation pass: epoch {result.best_epoch}, MRR_X + MRR_Y = {result.best_val['val_mrr_sum']:.4f}")
    print(f"test at the best state ({d.sampler}, {d.infer_steps or d.steps} steps):")
    print(result.test_result.table())
    print(f"wrote {result.checkpoint_path}, config.yaml and metrics.json in {args.out}")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train a model, select it on validation, test it",
        description="Train DPG-Diff (or a baseline: model.name) with early stopping on validation MRR_X + MRR_Y. "
                    "Writes best.pt, config.yaml (resolved), metrics.json and checkpoint/ (resumable) under --out.")
    add_dataset_args(parser)
    parser.add_argument("--config", default=None, help="YAML config (see configs/); default: built-in defaults")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config field (repeatable), e.g. --set model.dim=64")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue exactly from a checkpoint folder (e.g. OUT/checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_train)


def _number_list(text: str | None, kind: type, flag: str) -> list[Any]:
    """"1,2,4" -> [1, 2, 4]; None -> [None] (use the checkpoint's config)."""
    if text is None:
        return [None]
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a comma-separated list of {kind.__name__} values") from None
    if not values:
        raise ConfigError(f"{flag} {text!r}: empty list")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate best.pt on its dataset's test cases; sweeps over noise rates (RQ3) and steps (RQ4)."""
    import dataclasses
    import json
    import time
    from pathlib import Path

    from dpgdiff.files import atomic_write_text
    from dpgdiff.evaluation import Evaluator
    from dpgdiff.training import evaluate_model, load_model_and_data, resolve_device

    steps_list = _number_list(args.infer_steps, int, "--infer-steps")
    noise_list = _number_list(args.noise_rate, float, "--noise-rate")
    model, config, info, dataset = load_model_and_data(args.checkpoint, args.data_dir, args.split,
                                                       resolve_device(args.device), data=args.data,
                                                       overrides=args.set)
    meta = info["dataset"]
    d = config.diffusion
    sampler = args.sampler or d.sampler
    _check_infer_steps(steps_list, config)
    for rate in noise_list:
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--noise-rate {rate:g}: must be in [0, 1]")

    print(f"{args.checkpoint}: {config.model.name} d={config.model.dim}, epoch {info['epoch']}; "
          f"{meta['name']} / {meta['split']} {args.which}" + (f"; --set {' '.join(args.set)}" if args.set else ""),
          file=sys.stderr)
    rows, records = [], []
    for rate in noise_list:
        eval_config = dataclasses.replace(config.eval, noise_rate=config.eval.noise_rate if rate is None else rate)
        run_config = dataclasses.replace(config, eval=eval_config)
        evaluator = Evaluator(dataset, args.which, eval_config)
        for k in steps_list:
            steps = k or d.infer_steps or d.steps
            start = time.perf_counter()
            result = evaluate_model(model, dataset, args.which, run_config, sampler=sampler, infer_steps=steps,
                                    evaluator=evaluator)
            seconds = time.perf_counter() - start
            rows.append((eval_config.noise_rate, steps, seconds, result))
            records.append({"noise_rate": eval_config.noise_rate, "sampler": sampler, "infer_steps": steps,
                            "set": list(args.set), "seconds": seconds, "metrics": result.flat(args.which)})
            if len(noise_list) * len(steps_list) == 1:
                print(f"{sampler}, {steps} steps, noise rate {eval_config.noise_rate:g}: {seconds:.1f} s per pass")
                print(result.table())
    if len(rows) > 1:
        print(_sweep_table(rows, sampler))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(records, indent=2) + "\n")
    return 0


def _check_infer_steps(steps: Sequence[Any], config: Any) -> None:
    """--infer-steps values against the model's T."""
    most = config.diffusion.steps
    for k in steps:
        if k is not None and not 1 <= k <= most:
            raise ConfigError(f"--infer-steps {k}: must be in 1..{most} (the model's diffusion.steps)")


def _add_inference_set(parser: argparse.ArgumentParser) -> None:
    from dpgdiff.config import INFERENCE_KEYS

    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override an inference-only field of the checkpoint's config (repeatable), e.g. "
                             "--set diffusion.infer_steps=4 --set model.score_alpha=0; allowed: "
                             + ", ".join(INFERENCE_KEYS))


def _sweep_table(rows: list[tuple[float, int, float, Any]], sampler: str) -> str:
    """One line per (noise rate, steps): per-domain sampled MRR / NDCG@10 / HR@10, full NDCG@10, seconds."""
    cols = [(dom, m) for dom in ("x", "y") for m in ("mrr", "ndcg10", "hr10", "full_ndcg10")]
    titles = {"mrr": "MRR", "ndcg10": "NDCG@10", "hr10": "HR@10", "full_ndcg10": "fullNDCG@10"}
    head = [f"{'noise':>5}", f"{'steps':>5}", f"{'sec/pass':>8}"] + [f"{d.upper() + ' ' + titles[m]:>13}" for d, m in cols]
    lines = [f"sampler {sampler}; sampled metrics over 1+negatives candidates, full = all domain items",
             "  ".join(head)]
    for rate, steps, seconds, result in rows:
        cells = [f"{rate:>5g}", f"{steps:>5d}", f"{seconds:>8.1f}"]
        cells += [f"{result.per_domain[d].get(m, float('nan')):>13.4f}" for d, m in cols]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate", help="evaluate a trained model (noise and inference-step sweeps)",
        description="Evaluate best.pt on the test cases of the dataset it was trained on (refused if the data's "
                    "fingerprint differs). Comma lists sweep: --infer-steps 1,2,4,8,16,32 (paper RQ4) and "
                    "--noise-rate 0,0.1,0.2,0.3 (RQ3, noise injected into the test histories).")
    parser.add_argument("--checkpoint", required=True, help="best.pt (or a checkpoint folder) written by train")
    parser.add_argument("--infer-steps", default=None, metavar="K[,K...]", help="reverse steps (default: config)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="default: config")
    parser.add_argument("--noise-rate", default=None, metavar="R[,R...]",
                        help="share of test-history positions perturbed (default: config, 0)")
    parser.add_argument("--which", choices=("test", "valid"), default="test", help="cases to rank (default test)")
    parser.add_argument("--split", choices=SPLITS, default=None, help="default: the split the model was trained on")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset (default: env DPGDIFF_DATA_DIR; "
                                                          "an interaction log: the folder it is in now)")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="an interaction log the model was trained on, where it is now (default: the path the "
                             "checkpoint recorded); its fingerprint must still match")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every result as JSON")
    _add_inference_set(parser)
    parser.set_defaults(func=cmd_evaluate)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Does x̂_0 depend on x_t, and does K matter? Per-timestep figures and test metrics by reverse steps."""
    import json
    from pathlib import Path

    from dpgdiff.diagnose import diagnose
    from dpgdiff.files import atomic_write_text
    from dpgdiff.training import load_model_and_data, resolve_device

    model, config, info, dataset = load_model_and_data(args.checkpoint, args.data_dir, device=resolve_device(args.device),
                                                       overrides=args.set)
    meta = info["dataset"]
    if not hasattr(model, "predict_x0") or not getattr(model, "use_diffusion", True):
        raise ConfigError(f"{args.checkpoint}: model.name={config.model.name!r}"
                          f"{' with model.diffusion=false' if config.model.name == 'dpgdiff' else ''} "
                          "is not a diffusion model")
    most = config.diffusion.steps
    if args.infer_steps:
        steps = _number_list(args.infer_steps, int, "--infer-steps")
        _check_infer_steps(steps, config)
    else:
        steps = [k for k in (1, 2, 4, 8, 16) if k <= most] + [None]
    steps = sorted({most if k is None else k for k in steps})
    if args.cases < 1:
        raise ConfigError(f"--cases {args.cases}: must be >= 1")
    report = diagnose(model, dataset, config, which=args.which, n_cases=args.cases, infer_steps=steps,
                      sampler=args.sampler, seed=args.seed)
    print(f"{args.checkpoint}: epoch {info['epoch']}; {meta['name']} / {meta['split']} {args.which}")
    print(report.table())
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def add_diagnose_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "diagnose", help="does the denoiser use x_t? SNR, x0-hat error and sensitivity by t; metrics by K",
        description="Diagnostics of a trained diffusion model (issue 8 §1): item-table scale, the SNR of q(x_t|x_0) "
                    "at each t, the x0-hat error and the target's rank by t, how much x0-hat moves when x_t is "
                    "replaced by fresh noise, and test NDCG@10 at K reverse steps.")
    parser.add_argument("--checkpoint", required=True, help="best.pt (or a checkpoint folder) written by train")
    parser.add_argument("--cases", type=int, default=2000, help="cases sampled for the per-t figures (default 2000)")
    parser.add_argument("--infer-steps", default=None, metavar="K[,K...]", help="default 1,2,4,8,16,T")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="default: config")
    parser.add_argument("--which", choices=("test", "valid"), default="test", help="cases to use (default test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case sample and the noise")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset (default: env DPGDIFF_DATA_DIR)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    _add_inference_set(parser)
    parser.set_defaults(func=cmd_diagnose)


def cmd_compare(args: argparse.Namespace) -> int:
    """Two sets of train output folders (seed i with seed i): test metrics and paired tests, as a markdown table."""
    from dpgdiff.significance import compare_runs, read_run

    groups = []
    for flag, value in (("--a", args.a), ("--b", args.b)):
        folders = [f for f in value.split(",") if f.strip()]
        if not folders:
            raise ConfigError(f"{flag}: expected one or more train output folders, comma-separated")
        try:
            groups.append([read_run(f.strip()) for f in folders])
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from exc
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        print(compare_runs(groups[0], groups[1], metrics))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare", help="paired test of two sets of trained models (train --out folders) on the same test cases",
        description="Compare models trained by `train` (their --out folders: metrics.json, config.yaml, "
                    "test_ranks.npz) on their saved per-case test ranks: mean ± std over runs per domain, and a "
                    "two-sided paired t-test of A - B with run i of A paired with run i of B (e.g. the same seed). "
                    "Every run must have been evaluated alike (same data, split and saved candidates).")
    parser.add_argument("--a", required=True, metavar="DIR[,DIR...]", help="train output folders of model A")
    parser.add_argument("--b", required=True, metavar="DIR[,DIR...]", help="train output folders of model B, same order")
    parser.add_argument("--metrics", default="ndcg10", metavar="M[,M...]",
                        help="per-case metrics: mrr, mrr10, ndcgK, hrK (default ndcg10)")
    parser.set_defaults(func=cmd_compare)


# --------------------------------------------------------------------------------------------
# recommend (dpgdiff/recommend.py: the same code path as the MLflow model in tune/serving.py)
# --------------------------------------------------------------------------------------------


def cmd_recommend(args: argparse.Namespace) -> int:
    """Top-k items for one history (--history) or a file of histories (--input), in the user's own ids."""
    import json

    from dpgdiff.recommend import Recommender, Request, read_requests, write_results

    if (args.history is None) == (args.input is None):
        raise ConfigError("give exactly one of --history ID,ID,... and --input FILE")
    if args.input is not None:
        requests = read_requests(args.input)
        if not requests:
            raise DataError(f"{args.input}: no histories")
        source = str(args.input)
    else:
        history = [t.strip() for t in args.history.split(",") if t.strip()]
        requests = [Request(history=history, line=0)]
        source = "--history"
    rec = Recommender.load(args.checkpoint, device=args.device, sampler=args.sampler,
                           infer_steps=args.infer_steps, batch_size=args.batch_size, data_dir=args.data_dir)
    domains = [r.domain if r.domain is not None else args.domain for r in requests]
    try:
        results = rec.recommend([r.history for r in requests], domains, [r.k or args.k for r in requests])
    except RecommendError as exc:
        where = source if exc.row is None or args.input is None else f"{source}:{requests[exc.row].line}"
        raise DataError(f"{where}: {exc.reason}") from None
    print(f"{args.checkpoint}: {rec.config.model.name}, {rec.sampler} with K={rec.infer_steps} reverse steps",
          file=sys.stderr)
    if args.output:
        write_results(args.output, requests, results, domains)
        dropped = sum(len(r.unknown) for r in results)
        print(f"wrote {len(results)} result(s) to {args.output}"
              + (f"; {dropped} unknown item id(s) dropped (see 'unknown')" if dropped else ""), file=sys.stderr)
    elif args.input is not None or args.json:
        for req, res, dom in zip(requests, results, domains):
            print(json.dumps({**req.extra, "domain": dom, **res.to_dict()}, default=str))
    else:
        res = results[0]
        if res.unknown:
            print(f"dropped {len(res.unknown)} unknown item id(s): {' '.join(map(str, res.unknown))}", file=sys.stderr)
        print(f"{'rank':>4}  {'item':>12}  score")
        for rank, (item, score) in enumerate(zip(res.items, res.scores), 1):
            print(f"{rank:>4}  {str(item):>12}  {score:.4f}")
    return 0


def add_recommend_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "recommend", help="top-k items for histories, in the dataset's own item ids",
        description="Recommend with a trained checkpoint (no dataset files needed). Item ids are the user's own: "
                    "the global ids of the C2DSR files, or the item_id values of an interaction log (an id in "
                    "both domains of a log is written x:ID or y:ID). History items are excluded; unknown ids "
                    "are dropped and reported. --input: CSV with a 'history' column (ids separated by spaces, "
                    "commas or semicolons; optional 'domain', 'k'; other columns are echoed) or JSON lines "
                    "({\"history\": [...], \"domain\": \"y\", \"k\": 10, ...}).")
    parser.add_argument("--checkpoint", required=True, help="best.pt (or a checkpoint folder) written by train")
    parser.add_argument("--history", default=None, metavar="ID,ID,...", help="one history, oldest first")
    parser.add_argument("--input", default=None, metavar="FILE", help="histories: .csv or .jsonl")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="write results (.csv or .jsonl, atomically) instead of printing them")
    parser.add_argument("--domain", default="y", help="target domain: x | y | a log's domain value (default y)")
    parser.add_argument("--k", type=int, default=10, help="items per history (default 10)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="default: the checkpoint's config")
    parser.add_argument("--infer-steps", type=int, default=None, metavar="K",
                        help="reverse steps (default: the checkpoint's diffusion.infer_steps, else T)")
    parser.add_argument("--batch-size", type=int, default=256, help="histories per forward pass (default 256)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda | cuda:N")
    parser.add_argument("--data-dir", default=None,
                        help="only for checkpoints saved before the item id map was recorded: the dataset folder")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.set_defaults(func=cmd_recommend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpgdiff", description="DPG-Diff for cross-domain sequential recommendation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{data,train,evaluate,diagnose,recommend}")
    add_data_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_diagnose_parser(sub)
    add_compare_parser(sub)
    add_recommend_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ConfigError, CheckpointError, RecommendError) as exc:  # bad input: a clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    exit_process(main())
