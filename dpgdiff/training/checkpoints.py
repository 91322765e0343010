"""Checkpoints and model files: formats, atomic saves, loading, and the loop state they carry (spec §5.4).

Two kinds of file, both dicts of tensors and plain Python types (`torch.load(weights_only=True)`):

- a training checkpoint folder (`model.pt` + `config.yaml`, CHECKPOINT_FORMAT): model and
  optimizer state, every RNG state, the `LoopState` (epoch, best so far, early-stopping counter,
  history) and the best weights; `train(resume_from=...)` continues from it exactly;
- `best.pt` (MODEL_FORMAT): the best weights, the resolved config and the dataset identity
  (`DatasetRef.identity`); `load_model` rebuilds the model and refuses a dataset whose
  fingerprint differs.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from dpgdiff.config import RETIRED_AT, Config, ConfigError, retired_setting
from dpgdiff.files import atomic_write, replace_dir
from dpgdiff.models import build_model
from dpgdiff.training.reproducibility import capture_rng, restore_rng

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dpgdiff-checkpoint/1"  # resumable training state (model.pt in a checkpoint folder)
MODEL_FORMAT = "dpgdiff-model/1"  # best.pt: weights + resolved config + dataset identity
CHECKPOINT_DIRNAME = "checkpoint"  # under out_dir: the latest resumable checkpoint folder
# What the saved config means. 2: the −Diffusion control keeps the EDM output head (issue 38); a revision-1 control
# scored the raw head, which `upgrade_saved_config` keeps by switching its (then unread) diffusion.precond off.
CONFIG_REVISION = 2

# Fields that may differ between a checkpoint's config and the config passed with `resume_from`:
# they change how long or where the run goes on, never what a step computes.
_RESUME_MAY_DIFFER = ("train.epochs", "train.patience", "train.device", "train.num_threads")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of the wrong kind, or from different data; the message names it."""


@dataclass
class LoopState:
    """Mutable state of one training run; all of it goes into a checkpoint (`to_dict`: the "run" entry,
    best_state: the "best_model" entry)."""

    epoch: int = 0  # last completed epoch
    best_score: float = -math.inf  # best validation MRR_X + MRR_Y so far
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)  # the reporter's metrics of the best pass
    bad_evals: int = 0  # validation passes since the last improvement
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics dict per validation pass
    stopped_early: bool = False
    best_state: Optional[dict[str, torch.Tensor]] = field(default=None, repr=False)  # CPU copy of the best weights

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, as plain types."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best_state"}

    @classmethod
    def from_dict(cls, run: dict[str, Any], best_state: Optional[dict[str, torch.Tensor]]) -> "LoopState":
        return cls(**{f.name: run[f.name] for f in fields(cls) if f.name != "best_state"}, best_state=best_state)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Atomic files and folders
# --------------------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file in the same folder and an atomic rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def checkpoint_file(path: str | Path) -> Path:
    """Accept a checkpoint folder or its model.pt, or train's output folder (its best.pt); an interrupted swap
    leaves `.name.old` behind."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").exists() and (path / "best.pt").is_file():
            return path / "best.pt"
        return path / "model.pt"
    if not path.exists() and path.name == CHECKPOINT_DIRNAME:
        old = path.with_name(f".{path.name}.old")
        if (old / "model.pt").exists():
            return old / "model.pt"
    return path


def torch_load(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what} file")
    # torch.save writes a zip archive; anything else (a text file, a bare pickle) makes torch.load fail with
    # whatever its unpickler hit first ("pop from empty list", KeyError 101, ...): say what the file is not.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a dpgdiff {what} (not a file written by torch.save; expected "
                              "best.pt or a checkpoint folder written by train)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, unsupported types (weights_only refuses arbitrary objects)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a dpgdiff {what}, or a damaged one (torch.load failed: {first})") from exc
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path}: not a dpgdiff {what} (no 'format' entry)")
    return obj


# --------------------------------------------------------------------------------------------
# Dataset identity (recorded in checkpoints; `evaluate` refuses a different dataset)
# --------------------------------------------------------------------------------------------


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
# Loading
# --------------------------------------------------------------------------------------------


def load_model(
    path: str | Path, dataset: Any = None, device: str | torch.device = "cpu",
    overrides: Optional[list[str] | dict[str, Any]] = None,
) -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """Load best.pt (or a checkpoint folder / model.pt) -> (model in eval mode, config, info).

    info has "dataset" (identity dict) and "epoch". With `dataset`, its fingerprint must match.
    overrides: `section.key=value` assignments of inference-only fields (config.INFERENCE_KEYS, e.g.
    diffusion.infer_steps=4, diffusion.sampler=ddim) applied to the saved config before the model is built.
    """
    file = checkpoint_file(path)
    obj = torch_load(file, "model checkpoint")
    if obj["format"] not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{file}: unknown checkpoint format {obj['format']!r}")
    config = Config.from_saved(upgrade_saved_config(obj["config"], obj.get("config_revision", 1)),
                               source=f"{file} (config)")
    if overrides:
        config = config.with_inference_overrides(overrides)
    info = {"dataset": obj["dataset"], "epoch": obj.get("epoch"), "val": obj.get("val", {})}
    if dataset is None:
        return None, config, info  # type: ignore[return-value]  # caller only wanted the metadata
    check_dataset(obj["dataset"], dataset, str(file))
    model = build_model(config, dataset, from_checkpoint=True)
    model.load_state_dict(obj["model"])
    model.to(torch.device(device) if isinstance(device, str) else device)
    model.eval()
    return model, config, info


# train.init_from: where a donor's tensors go when the names differ (SASRec's one transformer reads the mixed
# sequence, as DPG-Diff's Encoder_c does; Encoder_x / Encoder_y get it too where the shapes match).
_INIT_FROM_RENAMES = (
    ("transformer.", ("denoiser.encoder_c.", "encoder.enc_x.transformer.", "encoder.enc_y.transformer.")),
)
_INIT_FROM_REQUIRED = ("embedding.item_x", "embedding.item_y")


def init_from_checkpoint(model: torch.nn.Module, path: str | Path, dataset: Any) -> list[str]:
    """train.init_from: copy a trained checkpoint's item tables (required) and every other tensor whose name
    (after _INIT_FROM_RENAMES) and shape match into `model`, in place -> the names copied into `model`.

    The donor (best.pt or a checkpoint folder, loaded with weights_only=True) must come from the same dataset
    (fingerprint) and have the same item tables' shapes (n_items × model.dim); otherwise CheckpointError."""
    file = checkpoint_file(path)
    obj = torch_load(file, "model checkpoint (train.init_from)")
    if obj["format"] not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{file}: unknown checkpoint format {obj['format']!r} (train.init_from)")
    check_dataset(obj["dataset"], dataset, f"{file} (train.init_from)")
    donor, target = obj["model"], model.state_dict()
    for name in _INIT_FROM_REQUIRED:
        if name not in donor or name not in target or donor[name].shape != target[name].shape:
            have = tuple(donor[name].shape) if name in donor else "missing"
            want = tuple(target[name].shape) if name in target else "missing"
            raise CheckpointError(f"{file} (train.init_from): {name} is {have} there but {want} in this model; "
                                  "the item tables must match (same data and model.dim)")
    pairs: dict[str, str] = {}
    for name in donor:
        pairs.setdefault(name, name)  # same name in both (item tables, positions, bias, or a same-model donor)
        for prefix, targets in _INIT_FROM_RENAMES:
            if name.startswith(prefix):
                for new in targets:
                    pairs.setdefault(new + name[len(prefix):], name)
    copied = []
    with torch.no_grad():
        for dst, src in sorted(pairs.items()):
            if dst in target and target[dst].shape == donor[src].shape and target[dst].dtype.is_floating_point:
                target[dst].copy_(donor[src].to(target[dst].device, target[dst].dtype))
                copied.append(dst if dst == src else f"{dst} <- {src}")
    return copied


def upgrade_saved_config(saved: dict[str, Any], revision: int = CONFIG_REVISION) -> dict[str, Any]:
    """A checkpoint's full config dict, written by an older version, in today's fields and meaning.

    Checkpoints store every field, so a missing one means the checkpoint predates it: it then gets the
    behaviour the model was trained with, not today's default (a schedule as named with DiffuRec's
    fixed-large DDPM variance, validation with DDIM-4). DiffuRec's `harness` variant (`model.diffurec_variant`,
    and every DiffuRec saved with `model.diffurec_faithful`) was DPG-Diff with the encoder, guidance and Tri-CL off and the
    additive x_t injection: it loads as that DPG-Diff (the same module names). `model.item_bias` was a bool:
    False is `none`, True a zero-initialised bias (`zero`). Before CONFIG_REVISION 2 the −Diffusion control had no
    output head: its diffusion.precond becomes `none`. Retired and unread fields: `Config.from_saved`."""
    data = {section: dict(values or {}) for section, values in saved.items()}
    model, diffusion = data.setdefault("model", {}), data.setdefault("diffusion", {})
    if "diffurec_faithful" in model:  # before the faithful DiffuRec, model.name=diffurec was the harness
        model.pop("diffurec_faithful")
        if model.get("name") == "diffurec":
            model.setdefault("diffurec_variant", "harness")
    if model.get("name") == "diffurec" and model.pop("diffurec_variant", "faithful") == "harness":
        model.update(name="dpgdiff", disentangled_encoder=False, guidance=False, tri_cl=False, xt_injection="add")
        diffusion.update(cfg_p=0.0, cfg_w=0.0)
    if isinstance(model.get("item_bias"), bool):
        model["item_bias"] = "zero" if model["item_bias"] else "none"
    if diffusion and "terminal_snr" not in diffusion:
        diffusion.update(terminal_snr="as_is", ddpm_variance="fixed_large")
    if revision < 2 and model.get("diffusion") is False:
        diffusion["precond"] = "none"
    return data


def load_model_and_data(
    path: str | Path, data_dir: Optional[str] = None, split: Optional[str] = None,
    device: str | torch.device = "cpu", data: Optional[str] = None,
    overrides: Optional[list[str] | dict[str, Any]] = None,
) -> tuple[torch.nn.Module, Config, dict[str, Any], Any]:
    """(model, config, info, dataset): reload the dataset recorded in the checkpoint, then the model on it.

    data_dir says where the files are (default: DPGDIFF_DATA_DIR / the cache); split may override the saved one;
    data is an interaction log's path when it moved (the fingerprint must still match); overrides: inference-only
    fields (see `load_model`)."""
    from dpgdiff.data.ref import DatasetRef

    _, _, info = load_model(path, overrides=overrides)  # metadata only (and the overrides checked before the data loads)
    dataset = DatasetRef.from_identity(info["dataset"], data_dir=data_dir, split=split, data=data).load()
    model, config, info = load_model(path, dataset, device=device, overrides=overrides)
    return model, config, info, dataset


def check_resume_config(saved: dict[str, Any], config: Config, source: str, revision: int = CONFIG_REVISION) -> None:
    """Refuse to resume with a config that trains differently from the checkpoint's (_RESUME_MAY_DIFFER aside)."""
    retired = [f"{section}.{key}={value!r}" for section, values in saved.items() for key, value in (values or {}).items()
               if retired_setting(f"{section}.{key}", value)]
    if retired:
        raise ConfigError(f"{source}: cannot resume: the run trained with {', '.join(retired)}, retired since "
                          f"(commit {RETIRED_AT} is the last that has it); its best.pt still loads and evaluates")
    now = config.to_dict()
    saved = Config.from_saved(upgrade_saved_config(saved, revision), source).to_dict()
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



def restore_training_checkpoint(resume_from: str | Path, config: Config, dataset: Any, model: torch.nn.Module,
                                optimizer: torch.optim.Optimizer, lr_schedule: Any, shuffle_gen: torch.Generator,
                                noise_gen: torch.Generator) -> LoopState:
    """Load a training checkpoint into model, optimizer and generators (and every global RNG) -> its LoopState.

    Raises CheckpointError (wrong kind of file, other data) or ConfigError (a config that may not differ)."""
    file = checkpoint_file(resume_from)
    state = torch_load(file, "training checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file}: format {state['format']!r} is not a resumable training checkpoint "
                              f"({CHECKPOINT_FORMAT}); best.pt holds weights only")
    check_resume_config(state["config"], config, str(file), state.get("config_revision", 1))
    check_dataset(state["dataset"], dataset, str(file))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state.get("lr_schedule"))
    # A checkpoint written at the best epoch stores the weights once (the best are the current).
    best_state = state["best_model"] if state["best_model"] is not None else cpu_state(model)
    run = LoopState.from_dict(state["run"], best_state)
    restore_rng(state["rng"], shuffle_gen, noise_gen)
    log.info("resumed from %s after epoch %d", file, run.epoch)
    return run


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_best(path: Path, weights: dict[str, torch.Tensor], config: Config, identity: dict[str, Any],
              epoch: int, val: dict[str, float]) -> None:
    """best.pt: what `load_model` and `python -m dpgdiff evaluate` need, nothing to resume from."""
    atomic_torch_save({"format": MODEL_FORMAT, "model": weights, "config": config.to_dict(), "config_revision": CONFIG_REVISION,
                       "dataset": identity, "epoch": epoch, "val": dict(val)}, path)


def save_checkpoint(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: Any,
                    config: Config, identity: dict[str, Any], run: LoopState, shuffle_gen: torch.Generator,
                    noise_gen: torch.Generator) -> Path:
    """Write root/checkpoint/{model.pt, config.yaml} atomically (temp folder + rename) -> its path."""
    best_is_current = run.best_epoch == run.epoch
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "best_model": None if best_is_current else run.best_state,
        "config": config.to_dict(),
        "config_revision": CONFIG_REVISION,
        "dataset": identity,
        "epoch": run.epoch,
        "run": run.to_dict(),
        "rng": capture_rng(shuffle_gen, noise_gen),
    }
    final = root / CHECKPOINT_DIRNAME
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{CHECKPOINT_DIRNAME}.tmp-"))
    try:
        torch.save(state, tmp / "model.pt")
        config.to_yaml(tmp / "config.yaml")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
