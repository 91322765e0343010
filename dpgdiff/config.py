"""One typed configuration for model, diffusion, losses, augmentation, training and evaluation.

`Config` gathers every knob of the project: the sections of dpgdiff/config_sections.py (each field with its
default and why) and of dpgdiff/config_baselines.py; `Config.validate` is the one place that checks their
allowed values.

    cfg = Config.from_yaml("cfg.yaml").with_overrides(["model.dim=64", "train.epochs=2"])
    cfg.to_yaml("resolved.yaml")

Each model reads only its own fields (MODEL_FIELDS): a file or --set that sets a field the chosen model never
reads is refused, naming both, and `to_yaml` writes exactly what the model reads under the config's values (a
field switched off by another, INERT_WHEN, is left out). What earlier versions saved (checkpoints, a search's
state) listed every field and still loads (`Config.from_saved`). Levers tried and not kept are RETIRED.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dpgdiff.config_fields import (  # noqa: F401  (MODEL_FIELDS, MODEL_LABELS, model_reads re-exported)
    COMPONENT_SWITCHES, INERT_WHEN, MODEL_FIELDS, MODEL_LABELS, RETIRED, RETIRED_AT, RETIRED_VALUES, matches,
    model_reads,
)
from dpgdiff.config_baselines import ABXIConfig, C2DSRConfig
from dpgdiff.config_sections import AugmentConfig, DiffusionConfig, EvalConfig, LossConfig, ModelConfig, TrainConfig
from dpgdiff.files import atomic_write_text, parse_yaml, read_yaml  # noqa: F401  (read_yaml, parse_yaml re-exported)


# With diffusion.terminal_snr=as_is, a schedule must bring x_T this close to pure noise (issue 8 §2).
MAX_TERMINAL_ALPHA_BAR = 0.05


class ConfigError(ValueError):
    """A config field is unknown, mistyped or out of range; the message names the field."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    c2dsr: C2DSRConfig = field(default_factory=C2DSRConfig)
    abxi: ABXIConfig = field(default_factory=ABXIConfig)

    # ---------------------------------------------------------------- (de)serialisation

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every field, read or not (checkpoints and the search's own state); `to_yaml` writes `fields_read()`."""
        return dataclasses.asdict(self)

    def fields_read(self) -> list[str]:
        """Dotted names of the fields this config's model reads under its values (MODEL_FIELDS less INERT_WHEN)."""
        inert = {name for names, when in INERT_WHEN if when(self) for name in names}
        return [name for name in self.field_names() if self.declares(name) and not matches(name, inert)]

    def label(self) -> str:
        """What tables call this configuration: the model, and for DPG-Diff the components switched off, e.g.
        "DPG-Diff (−DE)", or "DPG-Diff (full)" with all of them ("−G" is not listed where "−DE" already removes it),
        then issue 40's training options when on: "DPG-Diff (full, +PreferDiff)", "DPG-Diff (−DE, +staged)"."""
        name = MODEL_LABELS[self.model.name]
        if self.model.name != "dpgdiff":
            return name
        off = [tag for dotted, tag in COMPONENT_SWITCHES if not _get(self, dotted)
               and not (tag == "−G" and not self.model.disentangled_encoder)]
        added = (["+PreferDiff"] if self.loss.lambda_prefer > 0 else []) + \
            (["+staged"] if self.train.init_from and self.train.freeze_items_epochs > 0 else [])
        return f"{name} ({', '.join((off or ['full']) + added)})"

    def to_file_dict(self) -> dict[str, dict[str, Any]]:
        """`to_dict` restricted to `fields_read()`: what a config file for this model lists."""
        data: dict[str, dict[str, Any]] = {}
        for dotted in self.fields_read():
            section, key = dotted.split(".")
            data.setdefault(section, {})[key] = getattr(getattr(self, section), key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "config", saved: bool = False) -> "Config":
        """Build and validate a config from nested dicts; unknown keys are errors.

        A field the chosen model never reads (MODEL_FIELDS) is refused, naming the field and the model. saved=True
        is for what an earlier version wrote (checkpoints, a search's state, its runs' config.yaml): those list
        every field, so the unread ones are dropped, as are retired fields that only shaped training (RETIRED)."""
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        sections = {f.name: f.default_factory() for f in dataclasses.fields(cls)}  # type: ignore[misc]
        for section_name, values in data.items():
            if section_name not in sections:
                raise ConfigError(
                    f"{source}: unknown section {section_name!r}; expected one of {sorted(sections)}"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
            for key, value in values.items():
                dotted = f"{section_name}.{key}"
                keep, value = check_retired(dotted, value, source, saved)
                if keep:
                    _set_field(sections[section_name], dotted, key, value, source)
        config = cls(**sections)
        if saved:  # fields the model never read had no effect: back to their defaults
            default = cls()
            for dotted in cls.field_names():
                if not config.declares(dotted):
                    section, key = dotted.split(".")
                    setattr(getattr(config, section), key, getattr(getattr(default, section), key))
        else:
            config.check_declared([f"{s}.{k}" for s, values in data.items() if values for k in values], source)
        config.validate(source)
        return config

    @classmethod
    def from_saved(cls, data: dict[str, Any] | None, source: str = "config") -> "Config":
        """`from_dict(saved=True)`: a config an earlier version wrote (every field listed)."""
        return cls.from_dict(data, source, saved=True)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, saved: bool = False) -> "Config":
        """A config file. One that lists most of the fields its model never reads is a run's config.yaml from an
        earlier version (it listed every field): it is read as saved (`from_dict`), the unread fields dropped."""
        data, _ = read_yaml(path, "config", ConfigError)
        return cls.from_dict(data, source=str(path), saved=saved or _is_full_dump(data))

    def to_yaml(self, path: str | os.PathLike, header: str = "") -> None:
        """Write the fields the model reads (`to_file_dict`) atomically, after `header` (comment lines)."""
        atomic_write_text(Path(path), header + yaml.safe_dump(self.to_file_dict(), sort_keys=False))

    def declares(self, dotted: str) -> bool:
        """Whether this config's model reads `dotted` under some values of the other fields (MODEL_FIELDS)."""
        return model_reads(self.model.name, dotted)

    def check_declared(self, names: list[str], source: str) -> None:
        """Refuse setting a field the model never reads: it would look like a setting and do nothing."""
        unread = [name for name in names if not self.declares(name)]
        if unread:
            raise ConfigError(
                f"{source}: model.name={self.model.name!r} does not read {', '.join(unread)}; remove "
                f"{'it' if len(unread) == 1 else 'them'} (config.MODEL_FIELDS lists what each model reads)"
            )

    def with_overrides(self, assignments: list[str] | dict[str, Any], source: str = "--set") -> "Config":
        """Return a copy with `section.key=value` assignments applied (values parsed as YAML)."""
        data = self.to_dict()
        items = list(assignments.items() if isinstance(assignments, dict) else [
            parse_assignment(a, source) for a in assignments
        ])
        for dotted, value in items:
            section, _, key = dotted.partition(".")
            check_retired(dotted, value, source, saved=False)  # raises: a retired lever cannot be set
            if not key or section not in data:
                raise ConfigError(
                    f"{source}: {dotted!r} is not a config field; expected section.key with "
                    f"section in {sorted(data)}"
                )
            if key not in data[section]:
                raise ConfigError(
                    f"{source}: unknown field {dotted!r}; {section} has {sorted(data[section])}"
                )
            data[section][key] = value
        config = Config.from_dict(data, source=source, saved=True)
        config.check_declared([dotted for dotted, _ in items], source)
        return config

    def with_inference_overrides(self, assignments: list[str] | dict[str, Any], source: str = "--set") -> "Config":
        """`with_overrides` restricted to INFERENCE_KEYS: what may change on a trained checkpoint."""
        items = list(assignments.items() if isinstance(assignments, dict) else [
            parse_assignment(a, source) for a in assignments
        ])
        for dotted, _ in items:
            if dotted not in INFERENCE_KEYS:
                raise ConfigError(
                    f"{source}: {dotted!r} cannot change on a trained model (it changes its weights or training); "
                    f"inference-only fields: {', '.join(INFERENCE_KEYS)}"
                )
        return self.with_overrides(dict(items), source)

    @staticmethod
    def field_names() -> dict[str, type]:
        """All dotted field names with their annotated types (for search-space validation)."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(Config):
            hints = _type_hints(section.default_factory)  # type: ignore[arg-type]
            for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
                out[f"{section.name}.{f.name}"] = hints[f.name]
        return out

    # ---------------------------------------------------------------- validation

    def validate(self, source: str = "config") -> None:
        """Range and consistency checks that types alone cannot express."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                value = _get(self, name)
                raise ConfigError(f"{source}: {name}={value!r} is out of range; allowed: {allowed}")

        m, d, lo, a, t, e = self.model, self.diffusion, self.loss, self.augment, self.train, self.eval
        need(m.dim >= 2, "model.dim", "an integer >= 2")
        need(m.n_heads >= 1 and m.dim % m.n_heads == 0, "model.n_heads", f"a divisor of model.dim={m.dim}")
        need(m.max_len >= 2, "model.max_len", ">= 2")
        for name in ("n_enc_layers", "n_c_layers", "n_dec_layers"):
            need(getattr(m, name) >= 1, f"model.{name}", ">= 1")
        for name in ("dropout", "emb_dropout"):
            need(0.0 <= getattr(m, name) < 1.0, f"model.{name}", "0 <= p < 1")
        need(m.lambda_u > 0, "model.lambda_u", "> 0")
        need(m.item_init_std > 0 and math.isfinite(m.item_init_std), "model.item_init_std", "a finite number > 0")
        need(d.steps >= 1, "diffusion.steps", ">= 1")
        need(d.beta_scale > 0, "diffusion.beta_scale", "> 0")
        need(d.infer_steps is None or 1 <= d.infer_steps <= d.steps, "diffusion.infer_steps",
             f"null or 1..diffusion.steps={d.steps}")
        need(d.val_infer_steps is None or 1 <= d.val_infer_steps <= d.steps, "diffusion.val_infer_steps",
             f"null or 1..diffusion.steps={d.steps}")
        if d.terminal_snr == "as_is":
            from dpgdiff.models.diffusion import terminal_alpha_bar  # numpy only; no cycle at import time

            end = terminal_alpha_bar(d.schedule, d.steps, d.beta_scale)
            if end > MAX_TERMINAL_ALPHA_BAR:
                raise ConfigError(
                    f"{source}: diffusion.schedule={d.schedule!r} with diffusion.steps={d.steps} and "
                    f"diffusion.beta_scale={d.beta_scale:g} ends at alpha_bar_T={end:.3g} > {MAX_TERMINAL_ALPHA_BAR} "
                    f"under diffusion.terminal_snr='as_is': x_T would be far from the N(0, I) noise that sampling "
                    f"starts from. Use diffusion.terminal_snr=zero, more steps, or a larger beta_scale"
                )
        need(d.sigma_data is None or (d.sigma_data > 0 and math.isfinite(d.sigma_data)), "diffusion.sigma_data",
             "null or a finite number > 0")
        need(0.0 <= d.cfg_p < 1.0, "diffusion.cfg_p", "0 <= p < 1")
        need(d.cfg_w >= 0.0, "diffusion.cfg_w", ">= 0")
        for name in ("lambda_diff", "lambda_rec", "lambda_s", "lambda_cl"):
            need(getattr(lo, name) >= 0.0 and math.isfinite(getattr(lo, name)), f"loss.{name}", "a finite number >= 0")
        need(lo.cl_tau > 0, "loss.cl_tau", "> 0")
        need(lo.ce_chunk_rows >= 1, "loss.ce_chunk_rows", ">= 1")
        need(lo.lambda_prefer >= 0.0 and math.isfinite(lo.lambda_prefer), "loss.lambda_prefer", "a finite number >= 0")
        need(lo.prefer_gamma > 0.0 and math.isfinite(lo.prefer_gamma), "loss.prefer_gamma", "a finite number > 0")
        need(0.0 <= lo.prefer_lambda <= 1.0, "loss.prefer_lambda", "0 <= lambda <= 1")
        need(0.0 < a.crop_eta <= 1.0, "augment.crop_eta", "0 < eta <= 1")
        for name in ("mask_gamma", "reorder_beta", "substitute_rho", "insert_rho"):
            need(0.0 <= getattr(a, name) <= 1.0, f"augment.{name}", "0 <= rate <= 1")
        need(t.epochs >= 1, "train.epochs", ">= 1")
        need(t.batch_size >= 1, "train.batch_size", ">= 1")
        need(t.lr > 0 and math.isfinite(t.lr), "train.lr", "a finite number > 0")
        need(t.weight_decay >= 0, "train.weight_decay", ">= 0")
        need(0.0 < t.adam_beta2 < 1.0, "train.adam_beta2", "0 < beta2 < 1")
        need(t.lr_step_epochs >= 1, "train.lr_step_epochs", ">= 1")
        need(0.0 < t.lr_step_gamma <= 1.0, "train.lr_step_gamma", "0 < gamma <= 1")
        need(0.0 < t.lr_plateau_factor < 1.0, "train.lr_plateau_factor", "0 < factor < 1")
        need(t.lr_plateau_patience >= 0, "train.lr_plateau_patience", ">= 0")
        need(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "null or > 0")
        need(t.eval_every >= 1, "train.eval_every", ">= 1")
        need(t.patience >= 0, "train.patience", ">= 0")
        need(t.freeze_items_epochs >= 0, "train.freeze_items_epochs", ">= 0")
        if t.freeze_items_epochs > 0 and t.init_from is None:
            raise ConfigError(
                f"{source}: train.freeze_items_epochs={t.freeze_items_epochs} freezes the item tables that "
                f"train.init_from copies, but train.init_from is null; set it to a trained checkpoint (stage a, "
                f"e.g. a SASRec's best.pt) or set train.freeze_items_epochs=0"
            )
        need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device",
             "auto, cpu, cuda or cuda:N")
        need(t.num_threads is None or t.num_threads >= 1, "train.num_threads", "null or >= 1")
        need(e.n_negatives >= 1, "eval.n_negatives", ">= 1")
        need(e.batch_size >= 1, "eval.batch_size", ">= 1")
        need(0.0 <= e.noise_rate <= 1.0, "eval.noise_rate", "0 <= rate <= 1")
        for ok, name, allowed in (*self.c2dsr.ranges(), *self.abxi.ranges()):
            need(ok, name, allowed)


# Fields that only change how a trained model scores (no parameter depends on them): `evaluate`, `diagnose`
# and `load_model(..., overrides=...)` accept them on an existing checkpoint. train.seed seeds the reverse
# process's noise at evaluation (the scorer's generator).
INFERENCE_KEYS = (
    "diffusion.sampler", "diffusion.infer_steps", "diffusion.ddpm_variance", "diffusion.val_sampler",
    "diffusion.val_infer_steps", "diffusion.cfg_w", "model.score_alpha", "model.score_softmax", "model.lambda_infer", "train.seed",
    *(f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)),
)


def retired_setting(dotted: str, value: Any) -> bool:
    """`dotted: value` sets a retired lever (RETIRED, RETIRED_VALUES) to something other than today's behaviour."""
    if dotted in RETIRED:
        return RETIRED[dotted][0] != value
    return isinstance(value, str) and (dotted, value) in RETIRED_VALUES  # both retired values are strings


def check_retired(dotted: str, value: Any, source: str, saved: bool) -> tuple[bool, Any]:
    """(keep, value) for `dotted: value` read from `source`. What an earlier version saved (`saved`) drops a retired
    field at today's behaviour or one that only shaped training (keep False), and a retired value of a kept field
    loads as its replacement; any other retired setting, and every one not `saved`, is a ConfigError naming the
    field and the commit that still has it."""
    if dotted in RETIRED:
        today, train_only = RETIRED[dotted]
        if saved and (value == today or train_only):
            return False, value
        what = f"{value!r} is not today's behaviour ({today!r}). " if value != today else "remove it. "
    elif retired_setting(dotted, value):
        if saved:
            return True, RETIRED_VALUES[dotted, value]
        what, dotted = "choose another value. ", f"{dotted}={value!r}"
    else:
        return True, value
    raise ConfigError(f"{source}: {dotted} was retired (issue 37: tried and not kept; BENCHMARKS.md has its "
                      f"verdict); {what}Commit {RETIRED_AT} is the last that has it")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _get(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(config, section), key)


def parse_assignment(assignment: str, source: str, form: str = "section.key=value") -> tuple[str, Any]:
    """"name=value" -> (name, value parsed as YAML, or the raw text if it is not valid YAML).

    `source` (the flag or file) and `form` (what was expected) make the error message.
    """
    if "=" not in assignment:
        raise ConfigError(f"{source}: {assignment!r} must look like {form}")
    dotted, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return dotted.strip(), value


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """A config section's field annotations, resolved once per class: `typing.get_type_hints` evaluates the string
    annotations (`from __future__ import annotations`) anew on every call, and a search's driver resolves a config
    per trial (bench/scale_search.py: 0.3 s per trial on a loaded 2-core machine before this cache)."""
    return typing.get_type_hints(cls)


def _set_field(section: Any, dotted: str, key: str, value: Any, source: str) -> None:
    names = {f.name for f in dataclasses.fields(section)}
    if key not in names:
        raise ConfigError(f"{source}: unknown field {dotted!r}; allowed: {sorted(names)}")
    hint = _type_hints(type(section))[key]
    setattr(section, key, coerce_value(value, hint, dotted, source))


def coerce_value(value: Any, hint: Any, dotted: str, source: str) -> Any:
    """Check `value` against the annotation; ints and numeric strings pass for floats, nothing else is cast."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce_value(value, inner, dotted, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {dotted}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {dotted}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {dotted}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {dotted}={value!r} must be a string")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {dotted}")  # programming error


def _is_full_dump(data: Any) -> bool:
    """Whether a config file's mapping lists at least half (and 5 or more) of the fields its model never reads:
    what `to_dict` wrote for runs before config files listed a model's own fields. A hand-written file that sets
    an unread field by mistake names one or a few, and is refused by name."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return False
    name = data["model"].get("name", Config().model.name)
    if name not in MODEL_FIELDS:  # an unknown model: from_dict refuses it by name
        return False
    listed = {f"{s}.{k}" for s, values in data.items() if isinstance(values, dict) for k in values}
    unread = {dotted for dotted in Config.field_names() if not model_reads(name, dotted)}
    return len(listed & unread) >= max(5, len(unread) / 2)

