"""Training loop: shuffled epochs, validation, early stopping, atomic checkpoints, exact resume (spec §5.4).

    result = dpgdiff.train(config, dataset, out_dir="runs/x")   # -> TrainResult
    model, config, meta = load_model("runs/x/best.pt", dataset)  # what `python -m dpgdiff evaluate` uses

Per epoch the loop walks `dataset.training_examples(config.train.mode)` (spec §1.4) in an order drawn
from a seeded generator, in batches of `train.batch_size`. Every `train.eval_every` epochs (and after
the last one) it evaluates on the validation cases with the cheap sampler (`diffusion.val_sampler`,
`diffusion.val_infer_steps`, a freshly seeded noise generator so epochs are comparable), hands the
metrics (and, if asked, a checkpoint folder) to the reporter, and stops early when validation
MRR_X + MRR_Y (spec §5.4) has not improved for `train.patience` passes. The best state is evaluated
on the test cases at the end with the final sampler (`diffusion.sampler`, `diffusion.infer_steps`).

A checkpoint folder (`model.pt` + `config.yaml`) holds everything a resumed run needs to continue
exactly as an uninterrupted one: model and optimizer state, every RNG state (python, numpy, torch,
CUDA, the shuffling and loss-noise generators), the epoch, the best state so far and the
early-stopping counter. Everything in it is tensors or plain Python types, so it loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from dpgdiff.config import Config, ConfigError, atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dpgdiff-checkpoint/1"  # resumable training state (model.pt in a checkpoint folder)
MODEL_FORMAT = "dpgdiff-model/1"  # best.pt: weights + resolved config + dataset identity
CHECKPOINT_DIRNAME = "checkpoint"  # under out_dir: the latest resumable checkpoint folder

# Fields that may differ between a checkpoint's config and the config passed with `resume_from`:
# they change how long or where the run goes on, never what a step computes.
_RESUME_MAY_DIFFER = ("train.epochs", "train.patience", "train.device", "train.num_threads")


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of the wrong kind, or from different data; the message names it."""


@runtime_checkable
class Reporter(Protocol):
    """Receives validation metrics (e.g. Ray Tune's report, or a logger)."""

    wants_checkpoint: bool

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Optional[Path]) -> None:
        """Called after every validation pass.

        metrics = {"epoch", "train_loss" and "train_<component>" per loss term (means over the
        last epoch's examples), "train_seconds" and "examples_per_second" (that epoch),
        ...EvalResult.flat("val")}. `checkpoint_dir` (only when `wants_checkpoint`) is a folder
        holding model.pt + config.yaml that the callee may copy during the call; passing such a
        folder as `train(..., resume_from=)` continues the run exactly.
        """


@dataclass
class TrainResult:
    best_epoch: int
    best_val: dict[str, float]  # the reporter's metrics dict of the best validation pass
    test: dict[str, float]  # EvalResult.flat("test") of the best state, final sampler
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics dict per validation pass
    checkpoint_path: Optional[Path] = None  # out_dir/best.pt when out_dir was given
    test_result: Any = field(default=None, repr=False)  # the EvalResult behind `test` (for .table())


# --------------------------------------------------------------------------------------------
# Devices, precision, determinism
# --------------------------------------------------------------------------------------------


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as given (checked)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but CUDA is not available on this machine")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (meant for GPUs; works on CPU too), otherwise a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _runtime_settings(config: Config, device: torch.device) -> Iterator[None]:
    """Thread count and deterministic algorithms for the duration of a run, restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    if device.type == "cpu":
        # Costs nothing on CPU and turns silent nondeterminism into a warning. Not on CUDA:
        # there it would need CUBLAS_WORKSPACE_CONFIG and slower kernels.
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_det_warn)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# --------------------------------------------------------------------------------------------
# RNG state as tensors and plain types (torch.load(weights_only=True) accepts them)
# --------------------------------------------------------------------------------------------


def _capture_rng(shuffle_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, float | None)
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle_gen.get_state(),
        "noise": noise_gen.get_state(),
    }
    return state


def _restore_rng(state: dict[str, Any], shuffle_gen: torch.Generator, noise_gen: torch.Generator) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle_gen.set_state(state["shuffle"])
    noise_gen.set_state(state["noise"])


# --------------------------------------------------------------------------------------------
# Atomic files and folders
# --------------------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place; the previous one survives until the new one is in."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _checkpoint_file(path: str | Path) -> Path:
    """Accept a checkpoint folder or its model.pt; an interrupted swap leaves `.name.old` behind."""
    path = Path(path)
    if path.is_dir():
        return path / "model.pt"
    if not path.exists() and path.name == CHECKPOINT_DIRNAME:
        old = path.with_name(f".{path.name}.old")
        if (old / "model.pt").exists():
            return old / "model.pt"
    return path


def _torch_load(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what} file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a torch file, unsupported types
        raise CheckpointError(f"{path}: cannot load {what}: {exc}") from exc
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path}: not a dpgdiff {what} (no 'format' entry)")
    return obj


# --------------------------------------------------------------------------------------------
# Dataset identity (recorded in checkpoints; `evaluate` refuses a different dataset)
# --------------------------------------------------------------------------------------------


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """name, split, loader options and fingerprint: enough to reload the same dataset."""
    options = getattr(dataset, "options", None) or {}
    return {
        "name": str(dataset.name),
        "split": str(dataset.split),
        "options": {str(k): v for k, v in dict(options).items()},
        "fingerprint": str(dataset.fingerprint),
    }


def check_dataset(meta: dict[str, Any], dataset: Any, source: str) -> None:
    """Raise if `dataset` is not the one the checkpoint was trained on (by fingerprint)."""
    want = meta.get("fingerprint")
    if want != dataset.fingerprint:
        raise CheckpointError(
            f"{source}: trained on dataset {meta.get('name')!r} split {meta.get('split')!r} with "
            f"fingerprint {str(want)[:16]}..., but the loaded dataset {dataset.name!r} split "
            f"{dataset.split!r} has fingerprint {str(dataset.fingerprint)[:16]}...; refusing to "
            "evaluate on different data (check --dataset/--split/--data-dir)"
        )


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
    from dpgdiff.evaluation import Evaluator

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


def load_model(
    path: str | Path, dataset: Any = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """Load best.pt (or a checkpoint folder / model.pt) -> (model in eval mode, config, info).

    info has "dataset" (identity dict) and "epoch". With `dataset`, its fingerprint must match.
    """
    from dpgdiff.models import build_model

    file = _checkpoint_file(path)
    obj = _torch_load(file, "model checkpoint")
    if obj["format"] not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{file}: unknown checkpoint format {obj['format']!r}")
    config = Config.from_dict(obj["config"], source=f"{file} (config)")
    info = {"dataset": obj["dataset"], "epoch": obj.get("epoch"), "val": obj.get("val", {})}
    if dataset is None:
        return None, config, info  # type: ignore[return-value]  # caller only wanted the metadata
    check_dataset(obj["dataset"], dataset, str(file))
    model = build_model(config, dataset)
    model.load_state_dict(obj["model"])
    model.to(torch.device(device) if isinstance(device, str) else device)
    model.eval()
    return model, config, info


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def make_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = config.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel per parameter instead of ~10 element-wise ops (same update rule).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in model.parameters())
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)


def _check_resume_config(saved: dict[str, Any], config: Config, source: str) -> None:
    now = config.to_dict()
    diffs = [
        f"{section}.{key}: checkpoint {value!r} vs given {now[section].get(key)!r}"
        for section, values in saved.items()
        for key, value in values.items()
        if f"{section}.{key}" not in _RESUME_MAY_DIFFER and now.get(section, {}).get(key) != value
    ]
    if diffs:
        raise ConfigError(
            f"{source}: cannot resume with a different config (only {', '.join(_RESUME_MAY_DIFFER)} "
            f"may change): " + "; ".join(diffs)
        )


class _Run:
    """Mutable state of one training run; everything here goes into a checkpoint."""

    def __init__(self) -> None:
        self.epoch = 0  # last completed epoch
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_val: dict[str, float] = {}
        self.best_state: Optional[dict[str, torch.Tensor]] = None  # CPU copy of the best weights
        self.bad_evals = 0  # validation passes since the last improvement
        self.history: list[dict[str, float]] = []
        self.stopped_early = False


def train(
    config: Config,
    dataset: Any,
    reporter: Optional[Reporter] = None,
    resume_from: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
) -> TrainResult:
    """Train `config.model.name` on `dataset`, select by validation MRR sum, test the best state.

    reporter:    called after every validation pass (see `Reporter`).
    resume_from: a checkpoint folder (or its model.pt) written by an earlier run with this config.
    out_dir:     when given, receives best.pt, config.yaml, metrics.json and checkpoint/ (latest
                 resumable state, replaced atomically after every validation pass).
    progress:    show a tqdm bar per epoch (the CLI turns it on).
    Raises TrainingDivergedError on a NaN/inf loss (the last checkpoint stays intact).
    """
    from dpgdiff.evaluation import Evaluator
    from dpgdiff.models import build_model

    config.validate()
    device = resolve_device(config.train.device)
    out = Path(out_dir) if out_dir is not None else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_runtime_settings(config, device))
        wants_ckpt = bool(reporter is not None and getattr(reporter, "wants_checkpoint", False))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            config.to_yaml(out / "config.yaml")
            ckpt_root: Optional[Path] = out
        elif wants_ckpt:
            ckpt_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dpgdiff-ckpt-")))
        else:
            ckpt_root = None
        return _train(config, dataset, device, reporter, resume_from, out, ckpt_root, progress,
                      build_model, Evaluator)


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


def _train(config, dataset, device, reporter, resume_from, out, ckpt_root, progress,
           build_model, Evaluator) -> TrainResult:
    t = config.train
    identity = dataset_identity(dataset)

    # Model init draws from the global RNGs, so seed first; a resumed run overwrites all of it.
    seed_everything(t.seed)
    model = build_model(config, dataset).to(device)
    optimizer = make_optimizer(config, model)
    shuffle_gen = torch.Generator().manual_seed(t.seed)  # CPU: the permutation is made on CPU
    noise_gen = torch.Generator(device=device).manual_seed(t.seed + 1)  # model.loss noise / augmentation
    run = _Run()

    if resume_from is not None:
        file = _checkpoint_file(resume_from)
        state = _torch_load(file, "training checkpoint")
        if state["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{file}: format {state['format']!r} is not a resumable training checkpoint "
                             f"({CHECKPOINT_FORMAT}); best.pt holds weights only")
        _check_resume_config(state["config"], config, str(file))
        check_dataset(state["dataset"], dataset, str(file))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        r = state["run"]
        run.epoch, run.best_score, run.best_epoch = r["epoch"], r["best_score"], r["best_epoch"]
        run.best_val, run.bad_evals, run.history = r["best_val"], r["bad_evals"], r["history"]
        run.stopped_early = r["stopped_early"]
        # A checkpoint written at the best epoch stores the weights once (the best are the current).
        run.best_state = state["best_model"] if state["best_model"] is not None else _cpu_state(model)
        _restore_rng(state["rng"], shuffle_gen, noise_gen)
        log.info("resumed from %s after epoch %d", file, run.epoch)

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

    model.train()
    while run.epoch < t.epochs and not run.stopped_early:
        epoch = run.epoch + 1
        start = time.perf_counter()
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
        if progress:
            steps.close()
        run.epoch = epoch
        if epoch % t.eval_every != 0 and epoch != t.epochs:
            continue

        train_seconds = time.perf_counter() - start
        val = evaluate_model(model, dataset, "valid", config, sampler=config.diffusion.val_sampler,
                             infer_steps=config.diffusion.val_infer_steps, evaluator=val_evaluator)
        metrics: dict[str, float] = {"epoch": epoch, "train_loss": sums["total"] / n}
        metrics.update({f"train_{k}": v / n for k, v in sums.items() if k != "total"})
        metrics["train_seconds"] = train_seconds
        metrics["examples_per_second"] = n / train_seconds if train_seconds > 0 else 0.0
        metrics.update(val.flat("val"))
        run.history.append(metrics)

        score = float(val.mrr_sum)
        if score > run.best_score:
            run.best_score, run.best_epoch, run.best_val = score, epoch, metrics
            run.best_state, run.bad_evals = _cpu_state(model), 0
            if out is not None:
                _save_best(out / "best.pt", run.best_state, config, identity, epoch, metrics)
        else:
            run.bad_evals += 1
            if t.patience > 0 and run.bad_evals >= t.patience:
                run.stopped_early = True
        log.info("epoch %d: train_loss %.4f, val mrr_sum %.4f (best %.4f at epoch %d)",
                 epoch, metrics["train_loss"], score, run.best_score, run.best_epoch)

        checkpoint_dir = None
        if ckpt_root is not None:
            checkpoint_dir = _save_checkpoint(ckpt_root, model, optimizer, config, identity, run,
                                              shuffle_gen, noise_gen)
        if reporter is not None:
            reporter(epoch, dict(metrics),
                     checkpoint_dir if getattr(reporter, "wants_checkpoint", False) else None)

    # Test the best state with the final sampler.
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    test_result = evaluate_model(model, dataset, "test", config)
    test = test_result.flat("test")
    result = TrainResult(best_epoch=run.best_epoch, best_val=run.best_val, test=test, history=run.history,
                         checkpoint_path=(out / "best.pt") if out else None, test_result=test_result)
    if out is not None:
        atomic_write_text(out / "metrics.json", json.dumps(
            {"best_epoch": run.best_epoch, "stopped_early": run.stopped_early, "best_val": run.best_val,
             "test": test, "history": run.history, "dataset": identity}, indent=2) + "\n")
    return result


def _save_best(path: Path, weights: dict[str, torch.Tensor], config: Config, identity: dict[str, Any],
               epoch: int, val: dict[str, float]) -> None:
    """best.pt: what `load_model` and `python -m dpgdiff evaluate` need, nothing to resume from."""
    atomic_torch_save({"format": MODEL_FORMAT, "model": weights, "config": config.to_dict(),
                       "dataset": identity, "epoch": epoch, "val": dict(val)}, path)


def _save_checkpoint(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Config,
                     identity: dict[str, Any], run: _Run, shuffle_gen: torch.Generator,
                     noise_gen: torch.Generator) -> Path:
    """Write root/checkpoint/{model.pt, config.yaml} atomically (temp folder + rename) -> its path."""
    best_is_current = run.best_epoch == run.epoch
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_model": None if best_is_current else run.best_state,
        "config": config.to_dict(),
        "dataset": identity,
        "epoch": run.epoch,
        "run": {"epoch": run.epoch, "best_score": run.best_score, "best_epoch": run.best_epoch,
                "best_val": run.best_val, "bad_evals": run.bad_evals, "history": run.history,
                "stopped_early": run.stopped_early},
        "rng": _capture_rng(shuffle_gen, noise_gen),
    }
    final = root / CHECKPOINT_DIRNAME
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{CHECKPOINT_DIRNAME}.tmp-"))
    try:
        torch.save(state, tmp / "model.pt")
        config.to_yaml(tmp / "config.yaml")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
