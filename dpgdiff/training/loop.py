"""The training loop: shuffled epochs, validation, early stopping, checkpoints, exact resume (spec §5.4).

    result = dpgdiff.train(config, dataset, out_dir="runs/x")   # -> TrainResult
    model, config, meta = load_model("runs/x/best.pt", dataset)  # what `python -m dpgdiff evaluate` uses

Per epoch the loop walks `dataset.training_examples(config.train.mode)` (spec §1.4) in an order drawn
from a seeded generator, in batches of `train.batch_size`. Every `train.eval_every` epochs (and after
the last one) it evaluates on the validation cases (`diffusion.val_sampler`, `diffusion.val_infer_steps`,
by default the test procedure; a freshly seeded noise generator so epochs are comparable), hands the
metrics (and, if asked, a checkpoint folder) to the reporter, and stops early when validation
MRR_X + MRR_Y (spec §5.4) has not improved for `train.patience` passes. The best state is evaluated
on the test cases at the end with the final sampler (`diffusion.sampler`, `diffusion.infer_steps`),
unless `train(..., test=False)` (search trials: only the trial the search selects is tested).

Every validation pass is timed: `infer_ms` is its wall time in milliseconds per 1,000 validation
cases (model scoring at the validation sampler and K, plus ranking the candidates), the inference
cost a multi-objective search trades against accuracy (tune/search.py --objectives).

With train.init_from and train.freeze_items_epochs = N (ADRec's staged training) the item tables are frozen for
epochs 1..N and trained after (`freeze_item_tables`); the state follows the epoch number, so a resumed run agrees.

After every validation pass the loop writes a checkpoint folder (training/checkpoints.py) that
holds everything a resumed run needs to continue exactly as an uninterrupted one: model and
optimizer state, every RNG state (training/reproducibility.py) and the `LoopState`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from dpgdiff import mkl_amd
from dpgdiff.config import Config
from dpgdiff.data.ids import ItemIdMap
from dpgdiff.data.ref import DatasetRef
from dpgdiff.evaluation import Evaluator
from dpgdiff.files import atomic_write_text
from dpgdiff.models import build_model
from dpgdiff.models.losses import LOGITS
from dpgdiff.optim import LRSchedule, make_optimizer
from dpgdiff.training.checkpoints import (
    CHECKPOINT_DIRNAME,
    LoopState,
    cpu_state,
    init_from_checkpoint,
    restore_training_checkpoint,
    save_best,
    save_checkpoint,
)
from dpgdiff.training.reproducibility import autocast, resolve_device, runtime_settings, seed_everything

log = logging.getLogger(__name__)

RANKS_FILE = "test_ranks.npz"  # in out_dir: the best state's per-case test ranks (EvalResult.save_ranks)
PROGRESS_EVERY_S = 5.0  # how often, at most, a reporter's optional `progress` hook hears from inside an epoch


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


@runtime_checkable
class Reporter(Protocol):
    """Receives validation metrics (e.g. Ray Tune's report, or a logger)."""

    wants_checkpoint: bool

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        """Called after every validation pass.

        metrics = {"epoch", "train_loss" and "train_<component>" per loss term (means over the
        last epoch's examples), "train_seconds" and "examples_per_second" (that epoch),
        "infer_ms" (this validation pass: ms per 1,000 cases), ...EvalResult.flat("val")}.
        `checkpoint_dir` (only when `wants_checkpoint`) is a folder holding model.pt + config.yaml
        that the callee may copy during the call; passing such a folder as
        `train(..., resume_from=)` continues the run exactly.

        A reporter may also have a method `progress(epoch, examples_done, examples_total, seconds)`:
        the loop calls it from inside an epoch, at most every PROGRESS_EVERY_S seconds of training
        (seconds: since the epoch began), so that a long epoch shows how far it is (tune/progress.py).
        """


@dataclass
class TrainResult:
    best_epoch: int
    best_val: dict[str, float]  # the reporter's metrics dict of the best validation pass
    test: dict[str, float]  # EvalResult.flat("test") of the best state, final sampler; {} with test=False
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics dict per validation pass
    checkpoint_path: Optional[Path] = None  # out_dir/best.pt when out_dir was given
    test_result: Any = field(default=None, repr=False)  # the EvalResult behind `test` (for .table())



# --------------------------------------------------------------------------------------------
# Scoring and evaluation
# --------------------------------------------------------------------------------------------


def make_scorer(
    model: torch.nn.Module,
    device: torch.device,
    *,
    sampler: str,
    infer_steps: int,
    seed: int,
    precision: str = "fp32",
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A Scorer (COMMON.md contract) around `model.score` with one seeded noise generator.

    The generator is created here, so every evaluation built with the same seed draws the same
    reverse-process noise (spec §3.6: epochs and trials stay comparable).
    history (B, L) on CPU -> scores (B, n_items(domain)) float32 on the model's device.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def scorer(history: torch.Tensor, target_domain: int) -> torch.Tensor:
        with torch.no_grad(), autocast(device, precision):
            scores = model.score(
                history.to(device, non_blocking=True), int(target_domain),
                sampler=sampler, infer_steps=infer_steps, generator=generator,
            )
        return scores.float()  # the Evaluator ranks on the scores' device

    return scorer


def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    which: str,
    config: Config,
    *,
    sampler: Optional[str] = None,
    infer_steps: Optional[int] = None,
    evaluator: Any = None,
) -> Any:
    """One pass of `model` over the `which` ("valid" | "test") cases -> EvalResult.

    sampler / infer_steps default to the final ones in config.diffusion (infer_steps None = T).
    The model is put in eval mode for the pass and its previous mode restored.
    """
    d = config.diffusion
    sampler = sampler or d.sampler
    infer_steps = infer_steps or d.infer_steps or d.steps
    device = next(model.parameters()).device
    evaluator = evaluator or Evaluator(dataset, which, config.eval)
    was_training = model.training
    model.eval()
    try:
        scorer = make_scorer(model, device, sampler=sampler, infer_steps=infer_steps,
                             seed=config.train.seed, precision=config.train.precision)
        return evaluator.evaluate(scorer)
    finally:
        model.train(was_training)


# The reverse-step counts of RQ4 (the paper's Fig. 4): test N@10 / H@10 against K.
STEPS_CURVE = (1, 2, 4, 8)
STEPS_CURVE_METRICS = ("ndcg10", "hr10", "full_ndcg10")


def steps_curve(model: torch.nn.Module, dataset: Any, config: Config, steps: Sequence[int] = STEPS_CURVE,
                evaluator: Any = None) -> dict[str, float]:
    """RQ4: the test pass at each K in `steps` (K <= T; the model's sampler) -> {"test_k{K}_{x|y}_{metric}"}.

    Empty for a model without a reverse process (SASRec, the −Diffusion control). One evaluator (and its saved
    candidates) serves every K."""
    uses_chain = config.model.name == "diffurec" or (config.model.name == "dpgdiff" and config.model.diffusion)
    if not uses_chain:
        return {}
    evaluator = evaluator or Evaluator(dataset, "test", config.eval)
    out = {}
    for k in (k for k in steps if k <= config.diffusion.steps):
        result = evaluate_model(model, dataset, "test", config, infer_steps=k, evaluator=evaluator)
        out.update({f"test_k{k}_{d}_{m}": float(ms[m]) for d, ms in result.per_domain.items()
                    for m in STEPS_CURVE_METRICS if m in ms})
    return out


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def train(
    config: Config,
    dataset: Any,
    reporter: Optional[Reporter] = None,
    resume_from: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
    test: bool = True,
) -> TrainResult:
    """Train `config.model.name` on `dataset`, select by validation MRR sum, test the best state.

    reporter:    called after every validation pass (see `Reporter`).
    resume_from: a checkpoint folder (or its model.pt) written by an earlier run with this config.
    out_dir:     when given, receives best.pt, config.yaml, metrics.json, test_ranks.npz (per-case test
                 ranks) and checkpoint/ (latest resumable state, replaced atomically after every
                 validation pass).
    progress:    show a tqdm bar per epoch (the CLI turns it on).
    test:        evaluate the best state on the test cases (False: TrainResult.test is {}, no
                 test_ranks.npz; a search's trials select on validation only).
    Raises TrainingDivergedError on a NaN/inf loss (the last checkpoint stays intact).
    """
    config.validate()
    from dpgdiff.evaluation import check_candidate_room

    check_candidate_room(dataset, config.eval.n_negatives)  # before anything is written (issue 27 §5)
    device = resolve_device(config.train.device)
    out = Path(out_dir) if out_dir is not None else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(runtime_settings(config, device))
        wants_ckpt = bool(reporter is not None and getattr(reporter, "wants_checkpoint", False))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            config.to_yaml(out / "config.yaml")
            ckpt_root: Optional[Path] = out
        elif wants_ckpt:
            ckpt_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dpgdiff-ckpt-")))
        else:
            ckpt_root = None
        return _train(config, dataset, device, reporter, resume_from, out, ckpt_root, progress, test)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    history: torch.Tensor,
    target: torch.Tensor,
    target_domain: torch.Tensor,
    config: Config,
    generator: Optional[torch.Generator] = None,
) -> dict[str, float]:
    """One optimizer step on a batch (tensors on the model's device) -> loss components as floats.

    history (B, L), target (B,), target_domain (B,) int64. Raises TrainingDivergedError, before
    touching the weights, when the total loss is NaN or infinite.
    """
    device = history.device
    with autocast(device, config.train.precision):
        losses = model.loss(history, target, target_domain, generator=generator)
    total = losses["total"]
    # One device sync for all components (they are scalars), not one per component.
    values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
    if not math.isfinite(values["total"]):
        raise TrainingDivergedError(
            f"loss is {values['total']} (batch of {len(target)}; "
            + ", ".join(f"{k}={v:.4g}" for k, v in values.items()) + ")")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if config.train.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    optimizer.step()
    return values


# train.freeze_items_epochs: the per-item tensors that stay frozen (those model.item_bias does not build are absent).
ITEM_TABLES = ("embedding.item_x", "embedding.item_y", "embedding.bias_x", "embedding.bias_y")


def freeze_item_tables(model: torch.nn.Module, frozen: bool) -> list[str]:
    """Freeze (or thaw) the model's item tables, ITEM_TABLES, in place -> the names of those it has.

    A frozen table gets no gradient: the optimizer skips it (Adam creates no state for it, weight decay does not
    touch it) and the CE's backward pass skips its table-sized gradient, so the table stays bit-for-bit as
    train.init_from left it; once thawed, Adam starts its moments from zero, as for a new parameter."""
    params = dict(model.named_parameters())
    names = [name for name in ITEM_TABLES if name in params]
    if not names:
        raise ValueError(f"train.freeze_items_epochs: {type(model).__name__} has none of {', '.join(ITEM_TABLES)}")
    for name in names:
        params[name].requires_grad_(not frozen)
    return names


def _train(config: Config, dataset: Any, device: torch.device, reporter: Optional[Reporter],
           resume_from: str | Path | None, out: Optional[Path], ckpt_root: Optional[Path],
           progress: bool, run_test: bool = True) -> TrainResult:
    t = config.train
    if device.type == "cpu":  # which matmul kernels this run gets (dpgdiff/mkl_amd.py)
        log.info("CPU run, %d threads; MKL AMD fix %s", torch.get_num_threads(), mkl_amd.STATUS)
    # The raw <-> internal item-id map travels with the weights: serving needs it without the data files.
    identity = {**DatasetRef.identity(dataset), "item_ids": ItemIdMap.from_dataset(dataset).to_dict()}

    # Model init draws from the global RNGs, so seed first; a resumed run overwrites all of it.
    seed_everything(t.seed)
    model = build_model(config, dataset).to(device)
    optimizer = make_optimizer(config, model)
    lr_schedule = LRSchedule(config, optimizer)
    shuffle_gen = torch.Generator().manual_seed(t.seed)  # CPU: the permutation is made on CPU
    noise_gen = torch.Generator(device=device).manual_seed(t.seed + 1)  # model.loss noise / augmentation
    run = LoopState()
    if t.init_from is not None and resume_from is None:  # a resumed run has its weights already
        copied = init_from_checkpoint(model, t.init_from, dataset)
        log.info("train.init_from=%s: copied %d tensors: %s", t.init_from, len(copied), ", ".join(copied))
        print(f"train.init_from: copied {len(copied)} tensors from {t.init_from}: {', '.join(copied)}",
              file=sys.stderr, flush=True)
    if resume_from is not None:
        run = restore_training_checkpoint(resume_from, config, dataset, model, optimizer, lr_schedule, shuffle_gen,
                                          noise_gen)

    examples = dataset.training_examples(t.mode)
    if len(examples) == 0:
        raise ValueError(f"dataset {dataset.name!r}: no training examples in mode {t.mode!r}")
    hist_all = torch.as_tensor(examples.history, dtype=torch.long)
    target_all = torch.as_tensor(examples.target, dtype=torch.long)
    domain_all = torch.as_tensor(examples.target_domain.astype(np.int64), dtype=torch.long)
    if device.type != "cpu":  # a few tens of MB: keep them on the device, index there
        hist_all, target_all, domain_all = (x.to(device) for x in (hist_all, target_all, domain_all))
    n = len(examples)
    val_evaluator = Evaluator(dataset, "valid", config.eval)

    progress_hook = getattr(reporter, "progress", None) if reporter is not None else None
    model.train()
    while run.epoch < t.epochs and not run.stopped_early:
        epoch = run.epoch + 1
        if t.freeze_items_epochs > 0:  # ADRec's stages b (frozen tables) and c (all trained), by epoch: resumable
            frozen = freeze_item_tables(model, epoch <= t.freeze_items_epochs)
            log.info("epoch %d: item tables %s (%s)", epoch,
                     "frozen" if epoch <= t.freeze_items_epochs else "trained", ", ".join(frozen))
        start = last_progress = time.perf_counter()
        sums: dict[str, float] = {}
        order = torch.randperm(n, generator=shuffle_gen).to(hist_all.device)
        steps = range(0, n, t.batch_size)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch}/{t.epochs}", unit="batch", leave=False,
                         total=math.ceil(n / t.batch_size))
        for step, lo in enumerate(steps, start=1):
            idx = order[lo:lo + t.batch_size]
            try:
                values = train_step(model, optimizer, hist_all[idx], target_all[idx], domain_all[idx],
                                    config, generator=noise_gen)
            except TrainingDivergedError as exc:
                where = (f"the last good checkpoint is {ckpt_root / CHECKPOINT_DIRNAME}" if ckpt_root
                         else "no checkpoint was being written")
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch}, step {step}: {exc}; {where}; "
                    "lower train.lr or set train.grad_clip") from None
            weight = len(idx)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * weight
            value = values["total"]
            if progress:
                steps.set_postfix(loss=f"{value:.4f}", refresh=False)
            if progress_hook is not None and time.perf_counter() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.perf_counter()
                progress_hook(epoch, min(lo + t.batch_size, n), n, last_progress - start)
        if progress:
            steps.close()
        LOGITS.clear()  # the CE's reused logits buffers are not held through validation
        run.epoch = epoch
        lr_schedule.epoch_end()
        if epoch % t.eval_every != 0 and epoch != t.epochs:
            continue

        train_seconds = time.perf_counter() - start
        val_sampler, val_steps = config.diffusion.val_procedure()
        val_start = time.perf_counter()
        val = evaluate_model(model, dataset, "valid", config, sampler=val_sampler, infer_steps=val_steps,
                             evaluator=val_evaluator)
        val_seconds = time.perf_counter() - val_start
        metrics: dict[str, float] = {"epoch": epoch, "train_loss": sums["total"] / n}
        metrics.update({f"train_{k}": v / n for k, v in sums.items() if k != "total"})
        metrics["train_seconds"] = train_seconds
        metrics["examples_per_second"] = n / train_seconds if train_seconds > 0 else 0.0
        metrics["infer_ms"] = 1e6 * val_seconds / max(1, len(val_evaluator))  # ms per 1,000 validation cases
        metrics.update(val.flat("val"))
        run.history.append(metrics)

        score = float(val.mrr_sum)
        lr_schedule.validation_end(score)
        metrics["lr"] = lr_schedule.lr  # the rate the next epoch trains with (after this pass's decay)
        if score > run.best_score:
            run.best_score, run.best_epoch, run.best_val = score, epoch, metrics
            run.best_state, run.bad_evals = cpu_state(model), 0
            if out is not None:
                save_best(out / "best.pt", run.best_state, config, identity, epoch, metrics)
        else:
            run.bad_evals += 1
            if t.patience > 0 and run.bad_evals >= t.patience:
                run.stopped_early = True
        log.info("epoch %d: train_loss %.4f, val mrr_sum %.4f (best %.4f at epoch %d)",
                 epoch, metrics["train_loss"], score, run.best_score, run.best_epoch)

        checkpoint_dir = None
        if ckpt_root is not None:
            checkpoint_dir = save_checkpoint(ckpt_root, model, optimizer, lr_schedule, config, identity, run,
                                             shuffle_gen, noise_gen)
        if reporter is not None:
            reporter(epoch, dict(metrics),
                     checkpoint_dir if getattr(reporter, "wants_checkpoint", False) else None)

    # Test the best state with the final sampler.
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    test_result = evaluate_model(model, dataset, "test", config) if run_test else None
    test = test_result.flat("test") if test_result is not None else {}
    result = TrainResult(best_epoch=run.best_epoch, best_val=run.best_val, test=test, history=run.history,
                         checkpoint_path=(out / "best.pt") if out else None, test_result=test_result)
    if out is not None:
        if test_result is not None:  # per-case ranks: paired significance tests across runs
            test_result.save_ranks(out / RANKS_FILE)
        atomic_write_text(out / "metrics.json", json.dumps(
            {"best_epoch": run.best_epoch, "stopped_early": run.stopped_early, "best_val": run.best_val,
             "test": test, "history": run.history,
             "dataset": {k: v for k, v in identity.items() if k != "item_ids"}}, indent=2) + "\n")
    return result
